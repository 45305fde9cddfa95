#!/usr/bin/env bash
# Builds the example WebAssembly filter (examples/wasm-filter) that the wasm filter's tests and
# bench load: installs the wasm32 target if missing (rustup is all it needs), then compiles.
#
#   bash scripts/build-wasm-filter.sh
#   -> examples/wasm-filter/target/wasm32-unknown-unknown/release/metaprotocol_wasm_filter_example.wasm
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi
cargo build --locked --release --target wasm32-unknown-unknown \
  --manifest-path examples/wasm-filter/Cargo.toml
echo "example wasm filter ready in examples/wasm-filter/target/wasm32-unknown-unknown/release"
