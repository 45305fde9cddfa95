#!/usr/bin/env bash
# Checks the declared minimum Rust version (`rust-version` in Cargo.toml) against what the
# project depends on: no locked dependency of the workspace may declare a newer one. (What the
# crates themselves use of the standard library is checked by clippy's `incompatible_msrv`
# lint, which reads the same field; the machine has only the newest toolchain, so the MSRV is
# not built here.)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo metadata --format-version 1 --locked | python3 -c '
import json, sys

def version(text):
    return tuple(int(part) for part in (text or "0").split("."))

meta = json.load(sys.stdin)
members = set(meta["workspace_members"])
declared = {p["name"]: p.get("rust_version") for p in meta["packages"] if p["id"] in members}
msrv = max(version(v) for v in declared.values())
newer = sorted(
    (p["name"], p["rust_version"])
    for p in meta["packages"]
    if p["id"] not in members and version(p.get("rust_version")) > msrv
)
if newer:
    sys.exit(f"dependencies need a newer Rust than the declared {msrv}: {newer}")
print("msrv", ".".join(map(str, msrv)), "covers every dependency")
'
