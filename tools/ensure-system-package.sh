#!/usr/bin/env bash
# ensure-system-package.sh BINARY DEBIAN_PACKAGE: make sure BINARY is on PATH (or in /usr/sbin, where
# Debian puts mosquitto). As root it is installed with apt-get; otherwise a clear message names the package.
set -euo pipefail
bin=$1; pkg=$2
if command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || [ -x "/usr/bin/$bin" ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ]; then
  echo "installing Debian package '$pkg' (provides $bin)" >&2
  export DEBIAN_FRONTEND=noninteractive
  # wait for the package database if another apt (unattended upgrades after boot, another install) holds it
  lock=(-o DPkg::Lock::Timeout=900)
  apt-get "${lock[@]}" update -qq
  apt-get "${lock[@]}" install -y -qq "$pkg"
else
  echo "error: '$bin' not found. Install the Debian package '$pkg' (sudo apt-get install $pkg) and run again." >&2
  exit 1
fi
