#!/usr/bin/env bash
# The example WebAssembly filter (examples/wasm-filter) that the wasm filter's tests and bench
# load is committed, built, at examples/wasm-filter/metaprotocol_wasm_filter_example.wasm, so
# that machines without the wasm32 target (CI has no network for rustup) still run them. This
# script keeps that file and its Rust source together.
#
#   bash scripts/build-wasm-filter.sh          rebuild the module from Rust and copy it over the
#                                              committed one (saying so loudly if they differ),
#                                              then record the sources it was built from
#   bash scripts/build-wasm-filter.sh --check  change nothing; fail if the committed module is
#                                              not the build of the committed sources (test-all)
#
# Rebuilding needs the wasm32-unknown-unknown target; it is installed with rustup when missing.
# Where it cannot be (no rustup, no network), the script says it uses the committed build and
# exits 0: the check of the sources' hashes below still runs.
#
# Two checks keep the committed module from drifting from its source:
# - always: examples/wasm-filter/committed-build.sha256 holds the hashes of the sources (and of
#   the module) the module was built from; an edited source without a rebuild fails --check;
# - where the target is there: a fresh build must equal the committed module byte for byte. The
#   bytes depend on the compiler, so when the committed module was built by another rustc (its
#   `producers` section names it) a difference is reported, not failed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

check=false
case "${1:-}" in
  "") ;;
  --check) check=true ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

dir=examples/wasm-filter
module=metaprotocol_wasm_filter_example.wasm
committed="$dir/$module"
stamp=committed-build.sha256
# What the module is built from, relative to $dir, and the module itself.
sources=(Cargo.toml Cargo.lock src/host.rs src/lib.rs)
target_dir="$dir/target"
fresh="$target_dir/wasm32-unknown-unknown/release/$module"

loud() {
  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
  printf '!!! %s\n' "$@" >&2
  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
}

# The sources' hashes against those the committed module was built from.
if ! (cd "$dir" && sha256sum --check --strict --quiet "$stamp" >/dev/null 2>&1); then
  changed=$(cd "$dir" && sha256sum --check --strict "$stamp" 2>&1 | grep -v -e ': OK$' -e '^sha256sum:' || true)
  if $check; then
    loud "$committed is not the build of the sources in $dir:" "$changed" \
      "run scripts/build-wasm-filter.sh (it needs the wasm32-unknown-unknown target) and" \
      "commit $committed and $dir/$stamp with the sources."
    exit 1
  fi
  loud "the sources of $committed changed since it was built:" "$changed"
fi

target_ready() {
  if rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
    return 0
  fi
  command -v rustup >/dev/null || return 1
  echo "installing the wasm32-unknown-unknown target with rustup"
  timeout 300 rustup target add wasm32-unknown-unknown
}

if ! target_ready; then
  if $check; then
    echo "wasm32-unknown-unknown is not installed and cannot be: the fresh-build comparison is"
    echo "skipped; the committed $committed matches its sources' recorded hashes"
  else
    echo "wasm32-unknown-unknown is not installed and cannot be (no rustup, or no network):"
    echo "the tests and the bench use the committed build, $committed"
  fi
  exit 0
fi

cargo build --locked --release --target wasm32-unknown-unknown \
  --manifest-path "$dir/Cargo.toml" --target-dir "$target_dir"

if cmp -s "$fresh" "$committed"; then
  echo "$committed is up to date with its source"
  if ! $check; then
    (cd "$dir" && sha256sum "${sources[@]}" "$module" >"$stamp")
  fi
  exit 0
fi

rustc_version=$(rustc -V | sed 's/^rustc //')
if grep -a -F -q "$rustc_version" "$committed"; then
  same_compiler=true
else
  same_compiler=false
fi

if $check; then
  if $same_compiler; then
    loud "$committed differs from a fresh build of its source by the same compiler" \
      "($rustc_version): run scripts/build-wasm-filter.sh and commit the module and $dir/$stamp."
    exit 1
  fi
  loud "$committed differs from a fresh build, but it was built by another rustc than this" \
    "one ($rustc_version), and the bytes depend on the compiler: not counted as drift (its" \
    "sources match their recorded hashes)."
  exit 0
fi

cp "$fresh" "$committed"
(cd "$dir" && sha256sum "${sources[@]}" "$module" >"$stamp")
if $same_compiler; then
  why="it was not the build of its current source: a source edited without a rebuild"
else
  why="this compiler ($rustc_version) is not the one that built it, or its source changed"
fi
loud "$committed DIFFERED from the fresh build of its source ($why)." \
  "It has been replaced, and $dir/$stamp updated: commit both."
