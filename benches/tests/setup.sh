#!/usr/bin/env bash
# Installs what the instruments' tests (benches/tests/tools.rs) use beyond the Rust toolchain:
# `perf`, from Debian's `linux-perf`, for the load generator's `--syscalls`. Whether the kernel
# lets it open the tracepoint is the machine's business: where it does not, the test says so and
# skips.
#
#   bash benches/tests/setup.sh
set -euo pipefail
source "$(dirname "$0")/../../scripts/apt-install.sh"

apt_install perf linux-perf
perf --version
