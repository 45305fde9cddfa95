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

req_stamp="$(stamp_of requirements.txt)"
if [[ "$(cat .venv/.interop-stamp 2>/dev/null || true)" != "$req_stamp" ]]; then
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
  echo "$req_stamp" > .venv/.interop-stamp
fi

node -e "require('dubbo2.js'); require('sofa-rpc-node'); require('dubbo-remoting')"
.venv/bin/python -c "import dubbo.client, dubbo.server, dubbo_ssl.client"
echo "dubbo interop tools ready in $(pwd)"
