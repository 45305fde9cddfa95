#!/usr/bin/env bash
# Installs the real Dubbo2 implementations that examples/tests/dubbo_interop.rs
# drives through the proxy: npm dubbo2.js, sofa-rpc-node + dubbo-remoting
# (node_modules/, from package-lock.json) and PyPI dubbo-py, dubbo-ssl-python
# (.venv/, from requirements.txt). Needs node 20 + npm and python3 3.11.
# Idempotent: a step whose lock file has not changed since it last ran is skipped.
#
#   bash examples/tests/interop/dubbo/setup.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

stamp_of() { sha256sum "$1" | cut -d' ' -f1; }

lock_stamp="$(stamp_of package-lock.json)"
if [[ "$(cat node_modules/.interop-stamp 2>/dev/null || true)" != "$lock_stamp" ]]; then
  npm ci --no-audit --no-fund --loglevel=error
  echo "$lock_stamp" > node_modules/.interop-stamp
fi

# shellcheck source=../venv.sh
source ../venv.sh
install_venv

node -e "require('dubbo2.js'); require('sofa-rpc-node'); require('dubbo-remoting')"
.venv/bin/python -c "import dubbo.client, dubbo.server, dubbo_ssl.client"
echo "dubbo interop tools ready in $(pwd)"
