#!/usr/bin/env bash
# Installs promtool (Debian's `prometheus` package), with which the metrics tests check that
# /metrics is valid Prometheus text. Idempotent: nothing happens when promtool is on the PATH.
#
#   bash examples/tests/interop/prometheus/setup.sh
set -euo pipefail
if command -v promtool >/dev/null; then
  echo "promtool ready: $(promtool --version 2>&1 | head -1)"
  exit 0
fi
if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
  echo "setup.sh: promtool is missing; install Debian's prometheus package (as root: apt-get install prometheus)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
  || { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
echo "promtool ready: $(promtool --version 2>&1 | head -1)"
