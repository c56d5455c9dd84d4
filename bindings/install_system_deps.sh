#!/usr/bin/env bash
# Install the Debian packages the bindings' tests need, only those missing.
#   bindings/install_system_deps.sh [PACKAGE...]
# Default set: octave octave-zeromq libzmq3-dev pkg-config gcc make.
# Needs root and a working apt; CI runs as root with Debian's repositories reachable.
set -euo pipefail
pkgs=("$@")
if [ ${#pkgs[@]} -eq 0 ]; then pkgs=(octave octave-zeromq libzmq3-dev pkg-config gcc make); fi
missing=()
for p in "${pkgs[@]}"; do
  if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]; then missing+=("$p"); fi
done
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then echo "need root to install: ${missing[*]}" >&2; exit 1; fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "installed: ${missing[*]}"
