#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60) on stable Rust, without a sanitizer,
# after seeding the corpora from the golden captures. Needs cargo-fuzz
# (`cargo install cargo-fuzz --locked`); see README.md for AddressSanitizer runs and for the
# cheaper corpus replay (`cargo test --no-default-features`).
#
#   fuzz/run-all.sh [SECONDS]
#
# Crashes are saved under fuzz/artifacts/<target>/; the script runs every target and exits
# non-zero if any of them failed. Extra libFuzzer flags can be passed in FUZZ_FLAGS.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-60}"
if ! cargo fuzz --version > /dev/null 2>&1; then
  echo "cargo-fuzz is not installed: cargo install cargo-fuzz --locked" >&2
  exit 1
fi

./seed-corpus.sh
cargo fuzz build --sanitizer none

failed=()
for target in $(cargo fuzz list); do
  echo "== $target: ${seconds}s"
  dict=()
  if [[ -f "dicts/$target.dict" ]]; then
    dict=(-dict="dicts/$target.dict")
  fi
  # shellcheck disable=SC2086 # FUZZ_FLAGS holds several flags
  if ! cargo fuzz run --sanitizer none "$target" -- \
      -max_total_time="$seconds" -timeout=10 "${dict[@]}" ${FUZZ_FLAGS:-}; then
    failed+=("$target")
  fi
done

if (( ${#failed[@]} > 0 )); then
  echo "failed: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
  exit 1
fi
echo "every target ran ${seconds}s without a failure"
