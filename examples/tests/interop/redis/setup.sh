#!/usr/bin/env bash
# Installs what the global rate limit tests (examples/tests/policy_filters.rs) need: a real
# redis-server, from Debian's package. The tests start their own server on a free loopback port
# and stop it; the package's own service is not used.
#
#   bash examples/tests/interop/redis/setup.sh
set -euo pipefail

if ! command -v redis-server >/dev/null; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq redis-server >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
  else
    echo "setup.sh: redis-server is missing; install it (apt-get install redis-server)" >&2
    exit 1
  fi
fi
# Debian starts the packaged service on install: the tests never use it.
if command -v service >/dev/null; then
  service redis-server stop >/dev/null 2>&1 || true
fi
redis-server --version
