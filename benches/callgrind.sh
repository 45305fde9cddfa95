#!/usr/bin/env bash
# Instructions per proxied call in each observability case, counted by callgrind: for each case,
# `call_cost` runs twice under valgrind, with a few and with many calls, and the difference of
# the instructions divided by the difference of the calls is one call's cost (start-up, warm-up
# and shutdown cancel out), by thread: the engine's (the request path, with the OTLP client's
# work on the same runtime), the access log writer's, the span exporter's, and the rest (client,
# echo server, collector). Instruction counts do not move with what else the machine runs, as
# the criterion bench's times do. Prints a markdown table; see benches/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: benches/callgrind.sh [options]

  --cases "..."   among metrics access_log tracing access_log_and_tracing (default: all four)
  --protocol P    dubbo, thrift or brpc (default dubbo)
  --payload N     payload bytes a call (default 32)
  --depth N       calls in flight (default 64)
  --calls "A B"   the two call counts (default "2000 12000")
  --queue N       the access log's and span exporter's queue sizes (default 200000: nothing
                  is dropped, every call pays for its line and spans)
  --scheduler S   where the engine serves the client connection: runtime (default: the
                  work-stealing runtime that starts it, as an embedder's) or worker (a worker
                  thread of its own, as `metaprotocol-proxy run` serves them)
  --out DIR       where callgrind's files go (default: target/callgrind)
EOF
}

cases="metrics access_log tracing access_log_and_tracing"
protocol=dubbo
payload=32
depth=64
calls="2000 12000"
queue=200000
scheduler=runtime
out_dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cases) cases=$2; shift ;;
    --protocol) protocol=$2; shift ;;
    --payload) payload=$2; shift ;;
    --depth) depth=$2; shift ;;
    --calls) calls=$2; shift ;;
    --queue) queue=$2; shift ;;
    --scheduler) scheduler=$2; shift ;;
    --out) out_dir=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
  shift
done
read -r few many <<<"$calls"

cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind is not installed" >&2; exit 1; }
target_dir=${CARGO_TARGET_DIR:-target}
out_dir=${out_dir:-$target_dir/callgrind}
mkdir -p "$out_dir"
cargo build --release -q -p metaprotocol-benches --bin call_cost
bin=$target_dir/release/call_cost

# The instructions of one run by thread kind, "engine writer exporter others" (others: the
# client and echo server, the collector), from callgrind's file per thread.
instructions() { # case calls [--direct]
  local stem=$out_dir/$protocol-$payload-$1-$depth-$scheduler-$2${3:-}
  rm -f "$stem".out*
  timeout 3600 valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$stem.out" \
    "$bin" --protocol "$protocol" --payload "$payload" --case "$1" --calls "$2" \
    --depth "$depth" --queue "$queue" --scheduler "$scheduler" ${3:-} >"$stem.log" 2>&1 ||
    { echo "callgrind.sh: call_cost failed, see $stem.log" >&2; exit 1; }
  local engine=0 writer=0 exporter=0 others=0 file count
  for file in "$stem".out*; do
    count=$(awk '/^(summary|totals):/ { print $2; exit }' "$file")
    # Thread 1 runs the client and the echo server; the others are told by what they ran.
    if [[ $file == *-01 ]] || grep -q 'collector::serve' "$file"; then others=$((others + count))
    elif grep -q 'access_log::sink::Writer::run' "$file"; then writer=$((writer + count))
    elif grep -q 'server::connection' "$file"; then engine=$((engine + count))
    elif grep -q 'BatchSpanProcessor' "$file"; then exporter=$((exporter + count))
    else others=$((others + count)); fi
  done
  echo "$engine $writer $exporter $others"
}

# Instructions per call between the two call counts, by thread kind.
per_call() { # case [--direct]
  local a b
  read -r -a a <<<"$(instructions "$1" "$few" "${2:-}")"
  read -r -a b <<<"$(instructions "$1" "$many" "${2:-}")"
  local i out=()
  for i in 0 1 2 3; do out+=($(( (b[i] - a[i]) / (many - few) ))); done
  echo "${out[*]}"
}

read -r -a direct <<<"$(per_call metrics --direct)"
echo "| case ($protocol, $payload B, $depth in flight, $scheduler) | engine threads (the request path) | access log writer | span exporter | engine total | client, echo server, collector |"
echo "|---|---|---|---|---|---|"
for case in $cases; do
  read -r -a cost <<<"$(per_call "$case")"
  echo "| $case | ${cost[0]} | ${cost[1]} | ${cost[2]} | $((cost[0] + cost[1] + cost[2])) | ${cost[3]} |"
done
echo "(direct calls, client and echo server alone: ${direct[3]} per call)"
