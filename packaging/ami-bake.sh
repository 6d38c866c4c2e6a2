#!/bin/bash
# Bakes secrets-agent into a machine image: for a Packer shell provisioner or an EC2 Image
# Builder component, run as root on the build instance (or in the chroot) of the image.
#
#   ami-bake.sh PACKAGE [SERVICE...]
#       PACKAGE is the .deb (Debian, Ubuntu), the rpm (Amazon Linux 2023, RHEL family) or the
#       self-contained tarball (any systemd Linux with python3), by its name: a path, an
#       http(s):// URL or s3://BUCKET/KEY.
#       For each SERVICE: `secrets-agent enable SERVICE` (the drop-in that puts SERVICE.service
#       behind the agent) and `systemctl enable SERVICE.service` when that unit exists, so
#       that instances launched from the image fetch the secrets at their boot. Put each
#       service's template in /etc/secrets-agent/SERVICE.env.j2 before or after this step.
#   ami-bake.sh --verify-only [--root DIR]
#       Only the last step, on the system mounted at DIR (default /).
#
# Nothing here starts a service or contacts SSM: the image must hold no secret. The last
# step checks it and exits 1, naming the files (never their contents), when the image holds
# a rendered secret file or a cached AWS credential.
set -euo pipefail

RUNTIME_DIR=run/secrets-agent
# Where credentials or rendered files could persist in an image; /usr is the packages'.
PERSISTENT_DIRS=(etc root home var/lib var/cache var/log var/tmp tmp opt srv usr/local)
# Files bigger than this are images and archives, not credential caches: not scanned.
SCAN_MAX_FILE_SIZE=50M
# An access key id, a secret access key assigned, or one in IMDS's credential JSON.
CREDENTIAL_RE='(AKIA|ASIA)[A-Z0-9]{16}'
CREDENTIAL_RE+='|(aws_secret_access_key|AWS_SECRET_ACCESS_KEY)[[:space:]]*[=:][[:space:]]*["'"'"']?[A-Za-z0-9/+]{40}'
CREDENTIAL_RE+='|"SecretAccessKey"[[:space:]]*:[[:space:]]*"[A-Za-z0-9/+]{40}"'

log() { printf 'ami-bake: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage() {
    sed -n '5,14p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

install_package() {
    local location=$1 workdir kind package
    case "${location%%\?*}" in
        *.deb) kind=deb ;;
        *.rpm) kind=rpm ;;
        *-linux.tar.gz) kind=tarball ;;
        *) die "$location: expected a .deb, a .rpm or a -linux.tar.gz (the name make dist gave it)" ;;
    esac
    workdir=$(mktemp -d)
    # shellcheck disable=SC2064 # expand now: workdir is local
    trap "rm -rf '$workdir'" EXIT
    package="$workdir/secrets-agent.$kind"
    case "$location" in
        s3://*)
            # The .deb's dependencies include boto3 anyway; the rpm and the tarball need no
            # library: the AWS CLI, which Amazon Linux 2023 images have, fetches them.
            if [ "$kind" = deb ]; then
                apt_get update
                apt_get install python3-boto3
                python3 -c 'import sys, boto3
bucket, _, key = sys.argv[1][len("s3://"):].partition("/")
boto3.client("s3").download_file(bucket, key, sys.argv[2])' "$location" "$package"
            else
                command -v aws >/dev/null || die "fetching $location needs the AWS CLI: install it, or copy the file to the builder and pass its path"
                aws s3 cp --only-show-errors "$location" "$package"
            fi
            ;;
        http://* | https://*)
            python3 -c 'import shutil, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=60) as response, open(sys.argv[2], "wb") as out:
    shutil.copyfileobj(response, out)' "$location" "$package"
            ;;
        *)
            [ -f "$location" ] || die "no such package file: $location"
            cp "$location" "$package"
            ;;
    esac
    case "$kind" in
        deb)
            # apt-get resolves the dependencies (python3-boto3 and the rest) from the archive; the
            # package's maintainer scripts only reload systemd.
            apt_get update
            apt_get install "$package"
            ;;
        rpm)
            # Its libraries are inside; it requires only python3 and systemd. Its scriptlets only
            # byte-compile it and reload systemd.
            rpm -U --replacepkgs "$package"
            ;;
        tarball)
            # Its libraries are inside: extracted into /, then byte-compiled for this python3 (the
            # agent unit's file system is read-only, so the agent could not do it at boot).
            tar -xzf "$package" -C /
            python3 -m compileall -q /usr/lib/secrets-agent >/dev/null
            if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
            ;;
    esac
    rm -rf "$workdir"
    trap - EXIT
    log "installed $(secrets-agent --version)"
}

apt_get() {
    if [ "$1" = update ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q
    else
        shift
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
    fi
}

enable_service() {
    local name=$1
    secrets-agent enable "$name"
    # Enabled, not started: starting it here would fetch the secrets onto the builder.
    # systemctl cat needs a running systemd; a chroot build has the files only.
    if systemctl cat "$name.service" >/dev/null 2>&1 \
        || [ -f "/etc/systemd/system/$name.service" ] || [ -f "/lib/systemd/system/$name.service" ]; then
        systemctl enable "$name.service"
    else
        log "$name.service is not installed yet: install it and run 'systemctl enable $name.service'"
    fi
}

# Prints the files under ROOT that hold a rendered secret file or a cached AWS credential.
find_leftovers() {
    local root=$1 dir
    local -a dirs=()
    # A rendered file or the agent's temporary file, in the runtime folder or anywhere an
    # override (--runtime-dir, allow_persistent) could have put it.
    if [ -d "$root/$RUNTIME_DIR" ]; then
        find "$root/$RUNTIME_DIR" -mindepth 1 ! -type d
    fi
    for dir in "${PERSISTENT_DIRS[@]}"; do
        [ -d "$root/$dir" ] && dirs+=("$root/$dir")
    done
    [ ${#dirs[@]} -gt 0 ] || return 0
    find "${dirs[@]}" -xdev -type f \
        \( -path '*/secrets-agent/*/env' -o -name '.secrets-agent.tmp-*' \) -print
    # The AWS CLI's and boto's credential files and caches.
    find "${dirs[@]}" -xdev -type f \( -path '*/.aws/credentials' -o -path '*/.aws/cli/cache/*' \
        -o -path '*/.aws/boto/cache/*' -o -path '*/.aws/sso/cache/*' -o -name '.boto' \
        -o -path '*/etc/boto.cfg' \) -print
    # Credentials by their shape, in any file: an access key id, a 40-character secret key
    # assigned in a credentials or env file, or the JSON IMDS returns for a role, as a pickled
    # or logged copy of it would hold. Installed Python and Node libraries are skipped, and
    # AWS's documentation keys (ending in EXAMPLE...) are not credentials.
    find "${dirs[@]}" -xdev \( -path '*/var/lib/apt/lists' -o -path '*/var/cache/apt' \
        -o -name site-packages -o -name dist-packages -o -name node_modules \) -prune \
        -o -type f -size -"$SCAN_MAX_FILE_SIZE" -print0 \
        | { xargs -0 --no-run-if-empty grep -l -a -E -e "$CREDENTIAL_RE" 2>/dev/null || true; } \
        | while IFS= read -r path; do
            if grep -a -o -E -e "$CREDENTIAL_RE" "$path" | grep -q -v EXAMPLE; then
                printf '%s\n' "$path"
            fi
        done
}

verify_image() {
    local root=$1 leftovers
    leftovers=$(find_leftovers "$root" | sort -u)
    if [ -n "$leftovers" ]; then
        log "error: the image holds a rendered secret or a cached AWS credential; remove these files" \
            "(and rotate whatever they held) before creating the image:"
        printf '%s\n' "$leftovers" | sed 's/^/  /' >&2
        exit 1
    fi
    log "verified: no rendered secret and no cached AWS credential under $root"
}

main() {
    [ $# -gt 0 ] || usage
    if [ "$1" = --verify-only ]; then
        local root=/
        shift
        if [ $# -eq 2 ] && [ "$1" = --root ]; then
            root=$2
        elif [ $# -ne 0 ]; then
            usage
        fi
        [ -d "$root" ] || die "no such folder: $root"
        verify_image "${root%/}"
        return
    fi
    case "$1" in -*) usage ;; esac
    [ "$(id -u)" -eq 0 ] || die "run as root: it installs a package (try sudo)"
    local package=$1 name
    shift
    install_package "$package"
    for name in "$@"; do
        enable_service "$name"
    done
    verify_image ""
}

main "$@"
