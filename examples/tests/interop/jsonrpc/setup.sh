#!/usr/bin/env bash
# Installs the JSON-RPC 2.0 libraries (PyPI jsonrpcserver and jsonrpcclient, pinned in
# requirements.txt) that examples/tests/jsonrpc_e2e.rs drives through the proxy, in a virtualenv
# next to this script (.venv, git-ignored). Idempotent: skipped while requirements.txt is
# unchanged since it last ran.
#
#   bash examples/tests/interop/jsonrpc/setup.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

# shellcheck source=../venv.sh
source ../venv.sh
install_venv
.venv/bin/python -c "import jsonrpcserver, jsonrpcclient"
echo "jsonrpc interop tools ready in $(pwd)"
