#!/usr/bin/env bash
# Installs the JSON-RPC 2.0 libraries (PyPI jsonrpcserver and jsonrpcclient, pinned in
# requirements.txt) that examples/tests/jsonrpc_e2e.rs drives through the proxy, in a virtualenv
# next to this script (.venv, git-ignored). Idempotent: skipped while requirements.txt is
# unchanged since it last ran.
#
#   bash examples/tests/interop/jsonrpc/setup.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

stamp="$(sha256sum requirements.txt | cut -d' ' -f1)"
if [[ "$(cat .venv/.interop-stamp 2>/dev/null || true)" != "$stamp" ]]; then
  rm -rf .venv
  if ! python3 -m venv .venv 2>/dev/null; then
    # Debian's python3 ships venv's pip bootstrap separately.
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
      apt-get install -y -qq python3-venv >/dev/null || { apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null; }
      rm -rf .venv
      python3 -m venv .venv
    else
      echo "setup.sh: python3 -m venv failed; install python3-venv" >&2
      exit 1
    fi
  fi
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-input -r requirements.txt
  echo "$stamp" > .venv/.interop-stamp
fi
.venv/bin/python -c "import jsonrpcserver, jsonrpcclient"
echo "jsonrpc interop tools ready in $(pwd)"
