#!/usr/bin/env bash
# Builds metaprotocol-proxy with profile-guided optimisation and prints the binary's path.
#
# An instrumented build of the proxy first runs the demo and the load benchmark's traffic (Dubbo,
# Thrift and bRPC through the proxy to the benchmark's echo servers: one call at a time and 8
# connections x 64 calls in flight, 32-byte and 1 KiB payloads); the release build is then laid
# out and inlined by what ran: hot paths together, code that never ran out of their way. On a
# core shared with its client and server, this is what lets the proxy keep up with haproxy one
# call at a time (benches/README.md has the measurements).
#
# Then BOLT (LLVM's post-link optimiser) lays out the linked binary by the same traffic, run
# through a copy of it that BOLT instrumented: the functions that ran side by side, each split
# from its cold blocks. The compiler orders code within a crate's functions; BOLT orders the
# whole program, the standard library and the dependencies included, so that a call's code
# takes fewer cache lines. It takes llvm-bolt (Debian's bolt-N package, installed here when apt
# offers one); without it, or if it fails, the PGO build is the result, and the script says so.
#
# Merging the profiles takes an llvm-profdata that reads this rustc's format: rustup's
# llvm-tools component if installed (or installable), otherwise the newest llvm-profdata-N on
# PATH, otherwise the newest llvm-N package apt offers (Debian 12: llvm-19), installed here.
# Both builds take their own target directory (other compiler flags), so the ordinary release
# build stays as it is. Everything runs on 127.0.0.1 and stops itself.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/build-pgo.sh [--port N] [--seconds S]

  --port N      first of three loopback ports the training traffic uses (default 27500)
  --seconds S   seconds of traffic per protocol and load shape (default 2)

Prints the path of the optimised binary: $CARGO_TARGET_DIR/pgo/release/metaprotocol-proxy
(target/ by default).
EOF
}

port=27500 seconds=2
while [ $# -gt 0 ]; do
  case "$1" in
    --port) port=$2; shift ;;
    --seconds) seconds=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
  shift
done

cd "$(dirname "$0")/.."
target_dir=${CARGO_TARGET_DIR:-target}
profiles=$(realpath -m "$target_dir/pgo-profiles")
raw=$profiles/raw merged=$profiles/merged.profdata
bin=$target_dir/release
trained=$target_dir/pgo-train/release/metaprotocol-proxy
echo_port=$port proxy_port=$((port + 1)) admin_port=$((port + 2))

say() { echo "build-pgo: $*" >&2; }

say "building the load generator, the echo servers and an instrumented proxy"
cargo build --release -q -p metaprotocol-benches --bin loadgen --bin echo --bin compare
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$raw" CARGO_TARGET_DIR=$target_dir/pgo-train \
  cargo build --release -q -p metaprotocol-examples --bin metaprotocol-proxy
# The instrumented build's own build scripts and procedural macros wrote profiles too.
rm -rf "$raw"
mkdir -p "$raw"

# shellcheck source=scripts/loopback.sh
source scripts/loopback.sh

logs=$profiles/logs
mkdir -p "$logs"
limit=$((seconds * 4 + 30))

# train PROXY: runs the training traffic through PROXY (an instrumented build), which writes
# its profile as it exits.
train() {
  local proxy=$1 protocol shape connections outstanding payload echo_pid proxy_pid
  for protocol in dubbo thrift brpc; do
    say "training on $protocol"
    timeout "$limit" "$bin/echo" --protocol "$protocol" --listen "127.0.0.1:$echo_port" \
      --duration "${limit}s" >"$logs/$protocol-echo.log" 2>&1 &
    echo_pid=$!
    "$bin/compare" proxy-config --protocol "$protocol" --listen "127.0.0.1:$proxy_port" \
      --upstream "127.0.0.1:$echo_port" --admin "127.0.0.1:$admin_port" >"$logs/$protocol.yaml"
    timeout "$limit" "$proxy" run --config "$logs/$protocol.yaml" --workers 1 \
      >"$logs/$protocol-proxy.log" 2>&1 &
    proxy_pid=$!
    wait_port "$echo_port"
    wait_port "$proxy_port"
    for shape in "1 1" "8 64"; do
      read -r connections outstanding <<<"$shape"
      for payload in 32 1024; do
        "$bin/loadgen" --protocol "$protocol" --target "127.0.0.1:$proxy_port" \
          --connections "$connections" --outstanding "$outstanding" --payload "$payload" \
          --warmup 0ms --duration "${seconds}s" >>"$logs/loadgen.jsonl"
      done
    done
    # A clean exit writes the profile: the proxy drains on SIGINT.
    kill -INT "$proxy_pid"
    wait "$proxy_pid"
    kill "$echo_pid" 2>/dev/null || true
    wait "$echo_pid" 2>/dev/null || true
  done
  say "training on the demo"
  timeout 120 "$proxy" demo >"$logs/demo.log" 2>&1
}

train "$trained"

# merge TOOL: true if TOOL read the profiles (a tool of another LLVM refuses their version).
merge() { "$1" merge -o "$merged" "$raw" >/dev/null 2>&1; }
candidates() {
  ls "$(rustc --print sysroot)"/lib/rustlib/*/bin/llvm-profdata 2>/dev/null || true
  compgen -c llvm-profdata- | sort -t- -k3 -rn | uniq
  command -v llvm-profdata || true
}
merged_with() {
  local tool
  for tool in $(candidates); do
    if merge "$tool"; then echo "$tool"; return 0; fi
  done
  return 1
}
if ! tool=$(merged_with); then
  if command -v rustup >/dev/null; then rustup component add llvm-tools >/dev/null 2>&1 || true; fi
  if ! tool=$(merged_with); then
    package=$(apt-cache search --names-only '^llvm-[0-9]+$' 2>/dev/null | cut -d' ' -f1 | sort -V | tail -n 1)
    [ -n "$package" ] || { say "no llvm-profdata reads these profiles, and apt offers no llvm"; exit 1; }
    say "installing $package for llvm-profdata"
    apt-get update -qq
    apt-get install -y -qq "$package" >/dev/null
    tool=$(merged_with) || { say "no llvm-profdata reads these profiles"; exit 1; }
  fi
fi
say "profiles merged by $tool"

say "building the optimised proxy"
# Relocations kept in the binary let BOLT move its functions.
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$merged -Clink-arg=-Wl,--emit-relocs" \
  CARGO_TARGET_DIR=$target_dir/pgo \
  cargo build --release -q -p metaprotocol-examples --bin metaprotocol-proxy
pgo=$target_dir/pgo/release/metaprotocol-proxy
bolted=$target_dir/pgo/metaprotocol-proxy

newest_bolt_package() {
  apt-cache search --names-only '^bolt-[0-9]+$' 2>/dev/null | cut -d' ' -f1 | sort -V | tail -n 1
}

# The newest llvm-bolt installed (by its real path: it finds its runtime library beside it),
# else the newest bolt-N package apt offers, installed here.
bolt_tool() {
  local tool
  tool=$(compgen -c llvm-bolt- | grep -E '^llvm-bolt-[0-9]+$' | sort -t- -k3 -rn | head -n 1 || true)
  [ -n "$tool" ] || tool=$(command -v llvm-bolt || true)
  if [ -z "$tool" ]; then
    local package
    package=$(newest_bolt_package)
    if [ -z "$package" ]; then
      # A machine whose package lists were never fetched offers nothing yet.
      apt-get update -qq >/dev/null 2>&1 || true
      package=$(newest_bolt_package)
    fi
    [ -n "$package" ] || return 1
    say "installing $package for llvm-bolt"
    apt-get install -y -qq "$package" >/dev/null 2>&1 || return 1
    tool=llvm-bolt-${package#bolt-}
  fi
  readlink -f "$(command -v "$tool")"
}

# bolt TOOL: instruments the PGO build, trains the copy, and lays the build out by its profile
# into $bolted. Lua's interpreter loop jumps through tables BOLT cannot follow: it stays as it is.
bolt() {
  local tool=$1 dir=$profiles/bolt
  rm -rf "$dir"
  mkdir -p "$dir"
  # Called as a condition, where `set -e` does not apply: each step runs only if the last
  # succeeded.
  "$tool" "$pgo" -o "$dir/instrumented" -instrument -instrumentation-file="$dir/profile" \
    -instrumentation-file-append-pid -skip-funcs='luaV_execute.*' \
    >"$logs/bolt-instrument.log" 2>&1 &&
    "$dir/instrumented" --help >/dev/null &&
    train "$dir/instrumented" &&
    "$(dirname "$tool")/merge-fdata" "$dir"/profile.*.fdata >"$dir/merged.fdata" \
      2>"$logs/bolt-merge.log" &&
    "$tool" "$pgo" -o "$bolted" -data="$dir/merged.fdata" -reorder-blocks=ext-tsp \
      -reorder-functions=cdsort -split-functions -split-all-cold -split-eh -use-gnu-stack \
      -skip-funcs='luaV_execute.*' >"$logs/bolt-optimise.log" 2>&1
}

if tool=$(bolt_tool) && say "laying the binary out with $tool" && bolt "$tool"; then
  echo "$bolted"
else
  say "no BOLT layout (see $logs/bolt-*.log when llvm-bolt ran): the PGO build it is"
  echo "$pgo"
fi
