#!/usr/bin/env bash
# Installs what the instruments' tests (benches/tests/tools.rs) use beyond the Rust toolchain:
# `perf`, from Debian's `linux-perf`, for the load generator's `--syscalls`. Whether the kernel
# lets it open the tracepoint is the machine's business: where it does not, the test says so and
# skips.
#
#   bash benches/tests/setup.sh
set -euo pipefail

if ! command -v perf >/dev/null; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq linux-perf >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq linux-perf >/dev/null; }
  else
    echo "setup.sh: perf is missing; install it (apt-get install linux-perf)" >&2
    exit 1
  fi
fi
perf --version
