# Sourced by the interop suites' setup.sh: `install_venv` (re)creates the suite's virtualenv
# (.venv, git-ignored) with the packages pinned in requirements.txt, unless requirements.txt has
# not changed since it last did.

install_venv() {
  local stamp
  stamp="$(sha256sum requirements.txt | cut -d' ' -f1)"
  if [[ "$(cat .venv/.interop-stamp 2>/dev/null || true)" == "$stamp" ]]; then
    return
  fi
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
}
