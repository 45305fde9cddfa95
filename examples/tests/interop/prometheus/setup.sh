#!/usr/bin/env bash
# Installs promtool (Debian's `prometheus` package), with which the metrics tests check that
# /metrics is valid Prometheus text. Idempotent: nothing happens when promtool is on the PATH.
#
#   bash examples/tests/interop/prometheus/setup.sh
set -euo pipefail
source "$(dirname "$0")/../../../../scripts/apt-install.sh"

apt_install promtool prometheus
echo "promtool ready: $(promtool --version 2>&1 | head -1)"
