#!/bin/bash
# Install, as root on Debian, every tool the test suite runs that a fresh Debian 12 machine lacks:
# `make test` (and so .ci/run) runs this before the tests. A test whose tool is still missing names
# it, and fails under CI (tests/prerequisites.py). Not root: print what is missing and go on.
set -euo pipefail
cd "$(dirname "$0")/.."

# command on PATH -> the Debian package that provides it.
prerequisites=(
    "node nodejs"                                     # tests/node: Node's dotenv; the README's Node snippet
    "npm npm"                                         # installs tests/node/package-lock.json
    "shellcheck shellcheck"                           # the user-data and packaging scripts
    "prometheus-node-exporter prometheus-node-exporter"  # status metrics against the real exporter
    "systemd-analyze systemd"                         # tests/system/test_unit_files.py
    "debootstrap debootstrap"                         # the system and packaging tests' Debian roots
    "systemd-nspawn systemd-container"                # ... booted as containers
    "chroot coreutils"                                # tests/unit/test_compat.py: Debian 11's Python 3.9
    "setpriv util-linux"                              # running the agent as nobody
)
missing=()
for entry in "${prerequisites[@]}"; do
    read -r command package <<<"$entry"
    command -v "$command" >/dev/null 2>&1 || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "test prerequisites missing: ${missing[*]} (as root on Debian, 'make test' installs them);" \
        "the tests that need them will say so" >&2
    exit 0
fi
echo "installing test prerequisites: ${missing[*]}" >&2
bash packaging/apt-install.sh "${missing[@]}"
