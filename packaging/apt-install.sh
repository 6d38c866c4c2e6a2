#!/bin/bash
# Install the named Debian packages that are missing, as root; say what to do otherwise.
# Used by the Makefile and the test harnesses so a fresh Debian 12 machine needs no set-up.
set -euo pipefail
missing=()
for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${missing[*]}: run 'sudo apt-get install ${missing[*]}'" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# An apt list older than a day may point at files the mirror no longer has.
if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -1)" ]; then
    apt-get update -q >&2
fi
apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
