#!/usr/bin/env bash
# Installs what the thrift end-to-end tests need: Apache Thrift's Python library, pinned, in a
# virtualenv next to this script (.venv, git-ignored). The generated code in gen_py/ is
# committed; regenerate it (after editing greeter.thrift) with REGENERATE=1, which needs
# Debian's thrift-compiler (apt-get install -y thrift-compiler).
set -euo pipefail
cd "$(dirname "$0")"
THRIFT_VERSION=0.22.0
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check "thrift==${THRIFT_VERSION}"
.venv/bin/python -c "import thrift, thrift.transport.THeaderTransport; print('thrift python library ready')"
if [[ "${REGENERATE:-0}" == 1 ]]; then
  rm -rf gen_py
  mkdir gen_py
  thrift --gen py -out gen_py greeter.thrift
fi
