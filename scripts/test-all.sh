#!/usr/bin/env bash
# Runs every test of the project on a fresh machine that has only the Rust toolchain (plus the
# python3/pip and node/npm this machine kind ships): installs what the interop tests need,
# checks formatting and lints, and runs all tests with the interop tests required (not skipped).
set -euo pipefail
cd "$(dirname "$0")/.."

# CI machines have little disk to spare: one build of everything with full debug info, plus the
# fuzz crate's and the fresh clone's builds, once filled one. This run builds each thing once, so
# incremental caches are waste; line tables keep test backtraces readable at a fraction of the
# size. The fuzz crate and the fresh clone share the one target directory, so what they have in
# common with the workspace is built once.
export CARGO_INCREMENTAL=0
export CARGO_PROFILE_DEV_DEBUG=line-tables-only
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
disk_report() {
  echo "-- disk: $(du -sh "$target_dir" 2>/dev/null | cut -f1) in $target_dir;" \
    "$(df -h --output=avail "$target_dir" 2>/dev/null | tail -1 | tr -d ' ') free"
}

for setup in examples/tests/interop/*/setup.sh benches/tests/setup.sh; do
  echo "== $setup"
  bash "$setup"
done
# The example WebAssembly filter the tests load is committed built; this checks it is the build
# of its committed source (rebuilding it where the wasm32 target can be installed).
echo "== scripts/build-wasm-filter.sh --check"
bash scripts/build-wasm-filter.sh --check

export METAPROTOCOL_REQUIRE_INTEROP=1
echo "== cargo fmt --check"
cargo fmt --all -- --check
(cd fuzz && cargo fmt -- --check)
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== scripts/check-msrv.sh"
bash scripts/check-msrv.sh
echo "== cargo test"
cargo test --workspace --locked --lib --bins --tests --examples
echo "== cargo test --doc"
cargo test --workspace --locked --doc
echo "== cargo doc (warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

# The fuzz targets' checks, run on every golden capture (fuzz/ is a crate of its own, outside the
# workspace; fuzz/run-all.sh fuzzes for real).
echo "== fuzz target checks"
disk_report
(cd fuzz && CARGO_TARGET_DIR="$target_dir" cargo test --locked --no-default-features)
disk_report

# The repository must stand alone: a fresh clone, with nothing beside it, passes the codec tests
# (they read their golden captures from testdata/). This checks what is committed (HEAD), not
# uncommitted edits. The clone builds into this checkout's target directory (only the workspace's
# own crates are compiled again) from a fixed temporary place in it, so that its artifacts keep
# their names from one run to the next and replace, rather than pile up beside, the last run's.
echo "== codec tests (and packaging) in a fresh clone"
clone_parent="$target_dir/standalone-clone"
rm -rf "$clone_parent"
mkdir -p "$clone_parent"
trap 'rm -rf "$clone_parent"' EXIT
git clone --quiet "$PWD" "$clone_parent/metaprotocol-rs"
(
  cd "$clone_parent/metaprotocol-rs"
  CARGO_TARGET_DIR="$target_dir" cargo test --locked \
    -p metaprotocol-dubbo -p metaprotocol-thrift -p metaprotocol-brpc -p metaprotocol-jsonrpc
  # Every library crate as it would be published: complete metadata, its README and license
  # packaged, and the packaged sources building on their own.
  echo "== cargo package / cargo publish --dry-run, in the fresh clone"
  # The dry run builds the packaged crates as registry crates, and cargo never rechecks a
  # registry crate's sources: an earlier run's build of the same version (older sources) would
  # be used. Our crates are rebuilt from scratch here, from sources extracted anew: cargo also
  # keeps the sources it extracted from an earlier run's packages (in the cargo home, under the
  # local overlay's `-<hash>` folder) and does not extract the same version again.
  rm -rf "$target_dir/package" "$target_dir"/debug/.fingerprint/metaprotocol-*
  rm -rf "${CARGO_HOME:-$HOME/.cargo}"/registry/src/-*/metaprotocol-*
  CARGO_TARGET_DIR="$target_dir" cargo package --workspace --locked --no-verify
  CARGO_TARGET_DIR="$target_dir" cargo publish --workspace --locked --dry-run
)
disk_report
