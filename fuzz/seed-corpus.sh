#!/usr/bin/env bash
# Seeds every fuzz target's corpus (fuzz/corpus/<target>/) from the golden captures in
# testdata/golden/{dubbo,thrift,brpc}/*.hex (one connection's byte stream per file, one hex
# line; see testdata/golden/README.md), and from fuzz/seeds/<target>/ for targets without
# captures.
#
# A decode target gets each stream as it is. A round-trip target gets it behind its two-byte
# big-endian length (the RoundTrip input format, see src/edit.rs), leaving the edit to the
# fuzzer. Existing corpus files are kept; seeds are named after their capture.
set -euo pipefail
cd "$(dirname "$0")"

golden=../testdata/golden
if [[ ! -d "$golden" ]]; then
  echo "no golden captures at $golden" >&2
  exit 1
fi

# Writes the bytes that the hex text in file $1 spells.
unhex() {
  printf '%b' "$(tr -d ' \n' < "$1" | sed 's/../\\x&/g')"
}

for protocol in dubbo thrift brpc; do
  decode="corpus/${protocol}_decode"
  round_trip="corpus/${protocol}_round_trip"
  mkdir -p "$decode" "$round_trip"
  count=0
  for capture in "$golden/$protocol"/*.hex; do
    name="golden-$(basename "$capture" .hex)"
    unhex "$capture" > "$decode/$name"
    size=$(wc -c < "$decode/$name")
    if (( size > 0xffff )); then
      echo "skipping $capture for $round_trip: $size bytes is over the 64 KiB a seed holds" >&2
    else
      { printf '%b' "$(printf '\\x%02x\\x%02x' $((size >> 8)) $((size & 0xff)))"; cat "$decode/$name"; } \
        > "$round_trip/$name"
    fi
    count=$((count + 1))
  done
  echo "seeded ${protocol}_decode and ${protocol}_round_trip with $count captures"
done

# Targets without golden captures (JSON-RPC), and frames no capture holds (Dubbo calls in
# fastjson2), get the seeds committed in seeds/<target>/.
for dir in seeds/*/; do
  target=$(basename "$dir")
  mkdir -p "corpus/$target"
  cp "$dir"* "corpus/$target/"
  echo "seeded $target with $(find "$dir" -type f | wc -l) committed seeds"
done

# The config target gets every YAML example of the config reference and the README.
config="corpus/config_parse"
mkdir -p "$config"
count=0
for doc in ../docs/config.md ../README.md; do
  count=$((count + $(awk -v dir="$config" -v name="$(basename "$doc" .md)" '
    /^```yaml/ { n++; file = sprintf("%s/doc-%s-%d.yaml", dir, name, n); inside = 1; next }
    /^```/ && inside { inside = 0; close(file); next }
    inside { print > file }
    END { print n + 0 }' "$doc")))
done
echo "seeded config_parse with $count documented configs"
