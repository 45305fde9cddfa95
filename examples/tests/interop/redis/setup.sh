#!/usr/bin/env bash
# Installs what the global rate limit tests (examples/tests/policy_filters.rs) need: a real
# redis-server, from Debian's package. The tests start their own server on a free loopback port
# and stop it; the package's own service is not used.
#
#   bash examples/tests/interop/redis/setup.sh
set -euo pipefail
source "$(dirname "$0")/../../../../scripts/apt-install.sh"

apt_install redis-server redis-server
# Debian starts the packaged service on install: the tests never use it.
if command -v service >/dev/null; then
  service redis-server stop >/dev/null 2>&1 || true
fi
redis-server --version
