#!/usr/bin/env bash
# Sourced by the scripts that need Debian packages on a fresh machine (the test set-up scripts
# examples/tests/interop/*/setup.sh and benches/tests/setup.sh, and benches/compare.sh):
#
#   source scripts/apt-install.sh
#   apt_install COMMAND PACKAGE
#
# installs PACKAGE (without its recommended packages) unless COMMAND is already on the PATH.
# Where it cannot (not root, or no apt-get) it says what to install and fails.

apt_install() {
  local command=$1 package=$2
  if command -v "$command" >/dev/null; then
    return 0
  fi
  if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
    echo "$command is missing; install it (as root: apt-get install $package)" >&2
    return 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  # A machine whose package lists were never fetched has nothing to install from: fetch them
  # only then, since fetching takes longer than most installs.
  apt-get install -y -qq --no-install-recommends "$package" >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "$package" >/dev/null; }
}
