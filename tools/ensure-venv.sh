#!/usr/bin/env bash
# Create the virtual environment given as $1 if it is absent. On a fresh Debian / Raspberry Pi OS the
# `venv` module lives in the python3-venv package: install it when running as root, else say so.
set -euo pipefail
venv=${1:-.venv}
[ -x "$venv/bin/python" ] && exit 0
if ! python3 -m venv "$venv" 2>/dev/null; then
  rm -rf "$venv"
  if [ "$(id -u)" = 0 ]; then
    echo "python3 -m venv failed; installing Debian's python3-venv" >&2
    apt-get -o DPkg::Lock::Timeout=900 update -qq && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -qq python3-venv python3-dev build-essential
    python3 -m venv "$venv"
  else
    echo "error: python3 -m venv failed. Install Debian's python3-venv (sudo apt-get install python3-venv python3-dev build-essential) and run again." >&2
    exit 1
  fi
fi
