#!/usr/bin/env bash
# Direct vs haproxy (TCP mode, one thread) vs metaprotocol-proxy (one worker), interleaved
# round by round, in two CPU layouts, for each protocol and load case; prints one markdown table
# of medians. Everything stays on 127.0.0.1; every process it starts is stopped on exit.
# See benches/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: benches/compare.sh [--quick] [options]

  --quick            one case (8x64:32), 1 s rounds after 0.5 s warm-up (~2 minutes)
  --rounds N         rounds per target and case (default 3)
  --duration S       measured seconds per run (default 2)
  --warmup S         warm-up seconds per run (default 1)
  --protocols "..."  among dubbo thrift brpc (default: all three)
  --cases "..."      CONNECTIONSxOUTSTANDING:PAYLOAD_BYTES (default: 8x64:32 8x64:1024 1x1:32 1x1:1024)
  --layouts "..."    a: everything on core 0; b: load and echo on core 0, the proxy on core 1;
                     c: nothing pinned, every process may use both cores (default: a b)
  --workers "..."    the proxy's worker threads, one target per count: metaprotocol (1 worker),
                     metaprotocol-Nw (N workers); pair with layout c to see how the proxy scales
                     (default: 1)
  --lingers "..."    the proxy's linger (`metaprotocol-proxy run --linger`), one target per
                     value: metaprotocol at the first, metaprotocol-lD at each other D, in
                     the same interleaved rounds (default: "200us", the proxy's own default)
  --pgo              also measure the proxy built with profile-guided optimisation and laid out
                     by BOLT (scripts/build-pgo.sh; about 17 minutes of builds): targets
                     metaprotocol-pgo, metaprotocol-pgo-Nw
  --baseline REV     also measure the proxy built at git revision REV (its source taken with
                     `git archive`, built in the target directory): target metaprotocol-base,
                     interleaved with this checkout's, an A/B of two builds in one run (the
                     config is this checkout's: REV's proxy must accept it)
  --relays           also measure the floor relay (src/relay.rs), sleeping and spinning: the
                     cheapest third process a call can pass through on this machine
  --syscalls         also count each proxy's (and the echo server's) system calls per call
                     with `perf stat` (installed from Debian if missing): a column of the table;
                     the count costs every system call, so CPU per call is not comparable
                     with runs without it
  --calls-per-write N  the load generator writes after every N calls, as clients that flush
                     each call do (default: every call that may go in one write)
  --idle-poll NS     set the kernel's idle poll, the longest it polls for work before it halts
                     an idle core (the haltpoll cpuidle governor's guest_halt_poll_ns; 0: halt at
                     once), to NS for the run, and put it back on exit: how the proxies compare
                     where an idle core wakes quickly (root, on a virtual machine with that
                     governor; the table's header says which the run had either way)
  --port N           first of the loopback ports used: four, two more per extra proxy (worker
                     count, build or linger) and two for the relays (default 27300)
  --out DIR          where results go (default: target/compare)
EOF
}

rounds=3 duration=2 warmup=1
protocols="dubbo thrift brpc"
cases="8x64:32 8x64:1024 1x1:32 1x1:1024"
layouts="a b"
workers="1"
lingers="200us"
relays=""
builds="release"
baseline=""
port=27300
out_dir=""
per_write=()
syscalls=()
idle_poll=""
# --quick sets defaults that the other options may then override, wherever it stands.
for arg in "$@"; do
  if [ "$arg" = --quick ]; then cases="8x64:32" duration=1 warmup=0.5; fi
done
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) ;;
    --rounds) rounds=$2; shift ;;
    --duration) duration=$2; shift ;;
    --warmup) warmup=$2; shift ;;
    --protocols) protocols=$2; shift ;;
    --cases) cases=$2; shift ;;
    --layouts) layouts=$2; shift ;;
    --workers) workers=$2; shift ;;
    --lingers) lingers=$2; shift ;;
    --relays) relays="sleep spin" ;;
    --pgo) builds="release pgo" ;;
    --baseline) baseline=$2; shift ;;
    --calls-per-write) per_write=(--calls-per-write "$2"); shift ;;
    --syscalls) syscalls=(--syscalls) ;;
    --idle-poll) idle_poll=$2; shift ;;
    --port) port=$2; shift ;;
    --out) out_dir=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
  shift
done

# The haltpoll governor's longest poll in idle, in ns: read for the table, set by --idle-poll.
halt_poll=/sys/module/haltpoll/parameters/guest_halt_poll_ns
governor=/sys/devices/system/cpu/cpuidle/current_governor_ro
if [ -n "$idle_poll" ]; then
  if ! [[ "$idle_poll" =~ ^[0-9]+$ ]]; then
    echo "--idle-poll takes nanoseconds, not $idle_poll" >&2; exit 2
  fi
  if [ "$(cat "$governor" 2>/dev/null)" != haltpoll ] || [ ! -w "$halt_poll" ]; then
    echo "--idle-poll: the kernel has no haltpoll governor, or $halt_poll is not writable" >&2
    exit 2
  fi
fi

cd "$(dirname "$0")/.."
target_dir=${CARGO_TARGET_DIR:-target}
out_dir=${out_dir:-$target_dir/compare}
bin=$target_dir/release
echo_port=$port haproxy_port=$((port + 1)) proxy_port=$((port + 2)) admin_port=$((port + 3))

source scripts/apt-install.sh
apt_install haproxy haproxy
if [ ${#syscalls[@]} -gt 0 ]; then
  apt_install perf linux-perf
fi
cargo build --release -q -p metaprotocol-benches --bin loadgen --bin echo --bin compare --bin relay
cargo build --release -q -p metaprotocol-examples --bin metaprotocol-proxy
declare -A proxy_bins=([release]=$bin/metaprotocol-proxy)
if [[ " $builds " == *" pgo "* ]]; then
  proxy_bins[pgo]=$(scripts/build-pgo.sh --port "$port")
fi
if [ -n "$baseline" ]; then
  base_src=$target_dir/baseline-src
  rm -rf "$base_src"
  mkdir -p "$base_src"
  git archive "$baseline" | tar -x -C "$base_src"
  CARGO_TARGET_DIR=$target_dir/baseline cargo build --release -q \
    --manifest-path "$base_src/Cargo.toml" -p metaprotocol-examples --bin metaprotocol-proxy
  proxy_bins[base]=$target_dir/baseline/release/metaprotocol-proxy
  builds+=" base"
fi

# The servers this script started, and their `timeout` wrappers.
servers=() children=()
stop_all() {
  # SIGKILL: the measurements are taken, and a proxy's graceful drain would only add seconds.
  for pid in "${servers[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "${children[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${children[@]}"; do wait "$pid" 2>/dev/null || true; done
  servers=() children=()
}
idle_poll_was=""
restore_idle_poll() {
  if [ -n "$idle_poll_was" ]; then echo "$idle_poll_was" >"$halt_poll"; fi
}
trap 'stop_all; restore_idle_poll' EXIT
trap 'exit 130' INT TERM

# start VAR CPU LOG COMMAND...: runs COMMAND pinned to CPU, bounded in time even if this script
# is killed outright, and sets VAR to the server's own pid (whose CPU and memory are read).
group_limit=0
start() {
  local var=$1 cpu=$2 log=$3 wrapper server=""
  shift 3
  timeout --kill-after=5 "$group_limit" taskset -c "$cpu" "$@" >"$log" 2>&1 &
  wrapper=$!
  children+=("$wrapper")
  for _ in $(seq 100); do
    server=$(pgrep -P "$wrapper" || true)
    [ -n "$server" ] && break
    sleep 0.02
  done
  [ -n "$server" ] || { echo "cannot start $*; see $log" >&2; exit 1; }
  servers+=("$server")
  printf -v "$var" %s "$server"
}

# shellcheck source=scripts/loopback.sh
source scripts/loopback.sh

mkdir -p "$out_dir"
stamp=$(date +%Y%m%d-%H%M%S)
results=$out_dir/results-$stamp.jsonl
logs=$out_dir/logs-$stamp
mkdir -p "$logs"
# One proxy under test per worker count, build and linger, each on its own pair of ports
# (listener, admin).
# proxy_target WORKERS BUILD LINGER: the target's name.
first_linger=${lingers%% *}
proxy_target() {
  local name=metaprotocol
  if [ "$2" != release ]; then name+=-$2; fi
  if [ "$1" != 1 ]; then name+="-${1}w"; fi
  if [ "$3" != "$first_linger" ]; then name+="-l$3"; fi
  echo "$name"
}
targets="direct haproxy"
for waiting in $relays; do targets+=" relay-$waiting"; done
for n in $workers; do
  for build in $builds; do
    for linger in $lingers; do targets+=" $(proxy_target "$n" "$build" "$linger")"; done
  done
done
per_round=$(wc -w <<<"$targets")
runs=$(( $(wc -w <<<"$layouts") * $(wc -w <<<"$protocols") * $(wc -w <<<"$cases") * rounds * per_round ))
group_limit=$(awk -v r="$rounds" -v n="$per_round" -v d="$duration" -v w="$warmup" 'BEGIN { print int(r * n * (d + w + 2) + 60) }')
# The tools take durations like 500ms; the options are seconds, fractions allowed.
warmup_ms=$(awk -v s="$warmup" 'BEGIN { print int(s * 1000) }')
duration_ms=$(awk -v s="$duration" 'BEGIN { print int(s * 1000) }')
if [ -n "$idle_poll" ]; then
  idle_poll_was=$(cat "$halt_poll")
  echo "$idle_poll" >"$halt_poll"
fi
started=$SECONDS
run=0

for layout in $layouts; do
  case $layout in
    a) proxy_cpu=0 load_cpu=0 cores_probe=() ;;
    b) proxy_cpu=1 load_cpu=0 cores_probe=(--cores-probe 0,1) ;;
    c) proxy_cpu=0,1 load_cpu=0,1 cores_probe=(--cores-probe 0,1) ;;
    *) echo "unknown layout $layout" >&2; exit 2 ;;
  esac
  for protocol in $protocols; do
    for case in $cases; do
      connections=${case%%x*} rest=${case#*x}
      outstanding=${rest%%:*} payload=${case##*:}
      name=$layout-$protocol-$connections-$outstanding-$payload

      start echo_pid "$load_cpu" "$logs/$name-echo.log" "$bin/echo" --protocol "$protocol" \
        --listen "127.0.0.1:$echo_port" --duration "${group_limit}s"
      cat >"$logs/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode tcp
    timeout connect 1s
    timeout client 1m
    timeout server 1m
listen bench
    bind 127.0.0.1:$haproxy_port
    server echo 127.0.0.1:$echo_port
EOF
      start haproxy_pid "$proxy_cpu" "$logs/$name-haproxy.log" haproxy -db -f "$logs/haproxy.cfg"
      ports=("$echo_port" "$haproxy_port")
      declare -A proxy_pids=() proxy_ports=()
      offset=0
      for n in $workers; do
        for build in $builds; do
          for linger in $lingers; do
            target=$(proxy_target "$n" "$build" "$linger")
            listen=$((proxy_port + offset)) admin=$((admin_port + offset))
            offset=$((offset + 2))
            "$bin/compare" proxy-config --protocol "$protocol" --listen "127.0.0.1:$listen" \
              --upstream "127.0.0.1:$echo_port" --admin "127.0.0.1:$admin" >"$logs/$target.yaml"
            start proxy_pid "$proxy_cpu" "$logs/$name-$target.log" "${proxy_bins[$build]}" run \
              --config "$logs/$target.yaml" --workers "$n" --linger "$linger"
            proxy_pids[$target]=$proxy_pid proxy_ports[$target]=$listen
            ports+=("$listen" "$admin")
          done
        done
      done
      declare -A relay_pids=() relay_ports=()
      for waiting in $relays; do
        listen=$((proxy_port + offset))
        offset=$((offset + 1))
        start relay_pid "$proxy_cpu" "$logs/$name-relay-$waiting.log" "$bin/relay" \
          --listen "127.0.0.1:$listen" --upstream "127.0.0.1:$echo_port" --waiting "$waiting" \
          --duration "${group_limit}s"
        relay_pids[relay-$waiting]=$relay_pid relay_ports[relay-$waiting]=$listen
        ports+=("$listen")
      done
      for p in "${ports[@]}"; do wait_port "$p"; done

      for round in $(seq "$rounds"); do
        for target in $targets; do
          case $target in
            direct) target_port=$echo_port watch=() ;;
            haproxy) target_port=$haproxy_port watch=(--watch "proxy=$haproxy_pid") ;;
            relay-*) target_port=${relay_ports[$target]} watch=(--watch "proxy=${relay_pids[$target]}") ;;
            *) target_port=${proxy_ports[$target]} watch=(--watch "proxy=${proxy_pids[$target]}") ;;
          esac
          run=$((run + 1))
          echo "[$run/$runs] layout $layout, $protocol, $connections x $outstanding, ${payload} B, round $round: $target" >&2
          taskset -c "$load_cpu" "$bin/loadgen" --protocol "$protocol" --target "127.0.0.1:$target_port" \
            --connections "$connections" --outstanding "$outstanding" --payload "$payload" \
            --warmup "$warmup_ms"ms --duration "$duration_ms"ms \
            --watch "echo=$echo_pid" "${watch[@]}" "${per_write[@]}" "${syscalls[@]}" "${cores_probe[@]}" \
            --label "layout=$layout" --label "target=$target" --label "round=$round" >>"$results"
        done
      done
      stop_all
    done
  done
done

table=$out_dir/table-$stamp.md
{
  echo "Medians of $rounds rounds of ${duration} s (after ${warmup} s warm-up) per target, interleaved;"
  echo "layout a: everything on core 0; b: load generator and echo server on core 0, the proxy alone on core 1;"
  echo "c: nothing pinned. metaprotocol-Nw: the proxy with N worker threads (metaprotocol: one)."
  if [[ " $builds " == *" pgo "* ]]; then
    echo "metaprotocol-pgo: the same proxy built with profile-guided optimisation and laid out by BOLT (scripts/build-pgo.sh)."
  fi
  if [ -n "$baseline" ]; then
    echo "metaprotocol-base: the proxy built at $baseline (--baseline), interleaved with this checkout's."
  fi
  if [ "$lingers" != "$first_linger" ]; then
    echo "metaprotocol-lD: the same proxy lingering D (--linger D) rather than $first_linger."
  fi
  if [ -n "$relays" ]; then
    echo "relay-sleep, relay-spin: the floor relay (bytes copied, nothing parsed) blocking in read, or spinning."
  fi
  if [[ " $layouts " == *" b "* || " $layouts " == *" c "* ]]; then
    echo "cores (layouts b and c): where the host had put the two cores, from a cache line's round trip between them before and after each run (loadgen --cores-probe); near: both under 2.5 times the smallest of the run, far: both over, moved: one of each. Each gets its own rows, read against haproxy's runs on cores as far apart."
  fi
  if [ "$(cat "$governor" 2>/dev/null)" = haltpoll ] && [ -r "$halt_poll" ]; then
    echo "kernel idle poll: up to $(cat "$halt_poll") ns before an idle core halts (haltpoll governor, guest_halt_poll_ns${idle_poll:+, set by --idle-poll}); where it is 50 us or more, the proxy busy polls only on a crowded core."
  fi
  if [ ${#syscalls[@]} -gt 0 ]; then
    echo "proxy syscalls/call: counted by \`perf stat\` (raw_syscalls:sys_enter) over each window (--syscalls), which costs every system call: CPU per call here is not comparable with runs without it."
  fi
  echo
  "$bin/compare" table "$results"
} | tee "$table"
echo >&2
echo "$runs runs in $((SECONDS - started)) s; reports: $results; table: $table" >&2
