#!/usr/bin/env bash
# Runs every test of the project on a fresh machine that has only the Rust toolchain (plus the
# python3/pip and node/npm this machine kind ships): installs what the interop tests need,
# checks formatting and lints, and runs all tests with the interop tests required (not skipped).
set -euo pipefail
cd "$(dirname "$0")/.."

for setup in examples/tests/interop/*/setup.sh; do
  echo "== $setup"
  bash "$setup"
done

export METAPROTOCOL_REQUIRE_INTEROP=1
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
