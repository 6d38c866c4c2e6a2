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
#       Only the last step, on the system mounted at DIR (default /); it also runs
#       `secrets-agent validate SERVICE` for every template there (offline: no AWS call).
#
# Nothing here starts a service or contacts SSM: the image must hold no secret. A bake removes
# what binds an image to the builder (on_outage = "sealed"): sealed copies in /var/lib/secrets-agent
# and systemd-creds' host key, /var/lib/systemd/credential.secret (every instance must make its
# own); as its last change it empties /etc/machine-id, so that each instance makes its own at first
# boot (see MACHINE_ID below). The last step checks the image and exits 1, naming the files (never
# their contents), when it holds a rendered secret file, a cached AWS credential, a sealed copy or
# the host key, when a template or settings file in /etc/secrets-agent (or a folder above it) could
# be changed by someone other than root, so that the agent would refuse it at boot (a Packer upload
# owned by the SSH user, say), or when its machine-id is set.
set -euo pipefail

RUNTIME_DIR=run/secrets-agent
# Sealed copies of rendered sets (ciphertext, bound to the machine that sealed them) and the host
# key they were sealed with: an image holding the key lets every clone open every copy.
SEALED_DIR=var/lib/secrets-agent
HOST_KEY=var/lib/systemd/credential.secret
CONFIG_DIR=etc/secrets-agent
# An image's machine-id must be empty: every instance launched from an image that holds one
# shares it, and with it each refresh timer's FixedRandomDelay= (a hash of the machine-id), so a
# fleet would check SSM in the same second and, with on_change = "restart", restart together.
# Empty (not missing) is systemd's "first boot": it makes a new id at the instance's boot.
# dbus's copy is a symlink to it on current distributions; an old regular copy is checked too.
MACHINE_ID_FILES=(etc/machine-id var/lib/dbus/machine-id)
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
    sed -n '5,15p' "$0" | sed 's/^# \{0,1\}//' >&2
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

# Empties the image's machine-id (and removes an old regular dbus copy), as the last change to
# the image: the builder itself keeps running on the id systemd already holds in memory.
reset_machine_id() {
    : >/etc/machine-id
    if [ -f /var/lib/dbus/machine-id ] && [ ! -L /var/lib/dbus/machine-id ]; then
        rm -f /var/lib/dbus/machine-id
    fi
    log "emptied /etc/machine-id: each instance launched from the image makes its own at first boot"
}

# Prints each machine-id file under ROOT that holds an id, with the id (not a secret).
find_machine_ids() {
    local root=$1 relative path id
    for relative in "${MACHINE_ID_FILES[@]}"; do
        path="$root/$relative"
        if [ ! -f "$path" ] || [ -L "$path" ]; then continue; fi
        id=$(head -c 64 -- "$path" | tr -d '[:space:]')
        case $id in '' | uninitialized) continue ;; esac
        # shellcheck disable=SC2016 # the backquotes are literal: they set off the command
        printf '%s holds %s; fix: `truncate -s 0 %q`\n' "$path" "$id" "$path"
    done
}

# Removes the sealed copies and the host key from the system being baked (see the header).
remove_machine_bound() {
    local root=$1
    if [ -d "$root/$SEALED_DIR" ]; then
        find "$root/$SEALED_DIR" -mindepth 1 -delete
    fi
    rm -f -- "$root/$HOST_KEY"
    log "removed sealed copies ($root/$SEALED_DIR) and the host key ($root/$HOST_KEY): each instance makes its own"
}

# Prints the sealed copies and the host key the image holds.
find_machine_bound() {
    local root=$1
    if [ -d "$root/$SEALED_DIR" ]; then
        find "$root/$SEALED_DIR" -mindepth 1 ! -type d
    fi
    if [ -e "$root/$HOST_KEY" ]; then
        printf '%s\n' "$root/$HOST_KEY"
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

# The command that makes one step on the way to a template trustworthy, or nothing: the rule
# agent/host/trust.py applies at boot. Owned by root (a symlink too: `chown -h`); a file or folder
# not writable by group or others, except a folder with the sticky bit (as /tmp).
fix_for() {
    local path=$1 type=$2 uid=$3 mode=$4 writers="" fix="" link_flag=""
    ((type != 8#120000)) || link_flag="-h "
    if [ "$uid" -ne 0 ]; then
        fix="chown ${link_flag}root:root $(printf '%q' "$path")"
    fi
    if [ -z "$link_flag" ]; then
        ((mode & 8#020)) && writers+=g
        ((mode & 8#002)) && writers+=o
        if [ -n "$writers" ] && ! ((type == 8#040000 && mode & 8#1000)); then
            fix+="${fix:+ && }chmod $writers-w $(printf '%q' "$path")"
        fi
    fi
    printf '%s' "$fix"
}

# Walks ROOT/RELATIVE one step at a time from the image's / as the agent will at boot (a symlink
# is judged, then followed inside the image) and prints the first step the agent would refuse:
# "STEP is owned by OWNER with mode MODE; fix: `COMMAND`". Prints nothing when root alone can
# change every step, or when a step is missing (nothing to read there).
refused_step() {
    local root=$1 links=0 part path st uid raw mode type fix target joined
    local -a todo=() walked=() more=()
    IFS=/ read -r -a todo <<<"$2"
    path=${root:-/}
    while :; do
        st=$(stat -c '%u %f' -- "$path" 2>/dev/null) || return 0
        uid=${st% *} raw=$((16#${st#* }))
        mode=$((raw & 8#7777)) type=$((raw & 8#170000))
        fix=$(fix_for "$path" "$type" "$uid" "$mode")
        if [ -n "$fix" ]; then
            # shellcheck disable=SC2016 # the backquotes are literal: they set off the command
            printf '%s is owned by %s with mode %04o; fix: `%s`\n' \
                "$path" "$(stat -c '%U' -- "$path")" "$mode" "$fix"
            return 0
        fi
        if ((type == 8#120000)); then
            links=$((links + 1))
            if ((links > 40)); then
                printf '%s: more than 40 symlinks on the way; fix: point it at the file itself\n' "$path"
                return 0
            fi
            target=$(readlink -- "$path")
            [[ $target == /* ]] && walked=()
            IFS=/ read -r -a more <<<"$target"
            todo=("${more[@]}" "${todo[@]}")
        elif ((type == 8#040000)) && [ "$path" != "${root:-/}" ]; then
            walked+=("$part")
        fi
        while :; do
            [ ${#todo[@]} -gt 0 ] || return 0
            part=${todo[0]}
            todo=("${todo[@]:1}")
            case $part in
                '' | .) ;;
                ..) [ ${#walked[@]} -eq 0 ] || unset 'walked[-1]' ;;
                *) break ;;
            esac
        done
        joined=$(IFS=/ && printf '%s' "${walked[*]}")
        path="$root/${joined:+$joined/}$part"
    done
}

# Prints one line per template or settings file (and the folder holding them) that the agent
# would refuse at boot because someone other than root could change it or a folder above it.
find_untrusted() {
    local root=$1 file refused
    local -a files=("$root/$CONFIG_DIR")
    shopt -s nullglob
    files+=("$root/$CONFIG_DIR"/*.env.j2 "$root/$CONFIG_DIR"/*.toml)
    shopt -u nullglob
    for file in "${files[@]}"; do
        refused=$(refused_step "$root" "${file#"$root"/}")
        [ -n "$refused" ] || continue
        printf '%s: %s\n' "$file" "$refused"
        # The folder's own way is every file's way: one line says it.
        [ "$file" != "$root/$CONFIG_DIR" ] || return 0
    done
}

# `secrets-agent validate` for every service whose template the image holds: settings, template
# syntax and parameter names, offline (no AWS call, no credentials), by the image's own agent on its
# own files (chroot for --root); its own lines say what to fix.
validate_services() {
    local root=$1 template name failed=0
    local -a agent=(secrets-agent)
    if [ -n "$root" ]; then
        [ -x "$root/usr/bin/secrets-agent" ] || { log "no secrets-agent in $root: services not validated"; return 0; }
        agent=(chroot "$root" /usr/bin/secrets-agent)
    fi
    shopt -s nullglob
    for template in "$root/$CONFIG_DIR"/*.env.j2; do
        name=${template##*/}
        name=${name%.env.j2}
        if ! "${agent[@]}" validate "$name" --log-format console >&2; then
            log "error: $name would not render at boot: fix what the line above names"
            failed=1
        fi
    done
    shopt -u nullglob
    return "$failed"
}

# Prints one line per template that asks for no parameter (no param(), params() or secret()
# outside a Jinja {# comment #}): the agent refuses it at render (exit 3), since the app would start
# without its secrets. The starter `secrets-agent enable` writes is such a file until the real lines are written.
find_empty_templates() {
    local root=$1 template name
    shopt -s nullglob
    local file target
    for template in "$root/$CONFIG_DIR"/*.env.j2; do
        file=$template
        if [ -L "$file" ]; then
            # Followed inside the image, as the agent will at boot (one link deep is enough here:
            # refused_step judges every link on the way).
            target=$(readlink -- "$file")
            [[ $target == /* ]] && file="$root$target" || file="$(dirname -- "$file")/$target"
        fi
        [ -f "$file" ] || continue
        if ! tr '\n' '\r' <"$file" | sed -E 's/\{#([^#]|#[^}])*#\}//g' \
            | grep -q -E '(^|[^A-Za-z0-9_])(params?|secret)[[:space:]]*\('; then
            name=$(basename -- "$template" .env.j2)
            printf '%s asks for no parameter; write the lines %s needs, the first such as: ' \
                "$template" "$name"
            printf 'DATABASE_URL={{ param("/%s/DATABASE_URL") }}\n' "$name"
        fi
    done
    shopt -u nullglob
}

verify_image() {
    local root=$1 leftovers untrusted empty machine_ids bound failed=0
    bound=$(find_machine_bound "$root")
    if [ -n "$bound" ]; then
        log "error: the image holds a sealed copy of secrets or systemd-creds' host key, which bind it" \
            "to the builder (a clone holding the key opens every copy); remove them (ami-bake.sh" \
            "does, when it bakes):"
        printf '%s\n' "$bound" | sed 's/^/  /' >&2
        failed=1
    fi
    leftovers=$(find_leftovers "$root" | sort -u)
    if [ -n "$leftovers" ]; then
        log "error: the image holds a rendered secret or a cached AWS credential; remove these files" \
            "(and rotate whatever they held) before creating the image:"
        printf '%s\n' "$leftovers" | sed 's/^/  /' >&2
        failed=1
    fi
    untrusted=$(find_untrusted "$root")
    if [ -n "$untrusted" ]; then
        log "error: secrets-agent would refuse these at boot (exit 2): someone other than root could" \
            "change them, and with them which parameters the instance role fetches; run each fix:"
        printf '%s\n' "$untrusted" | sed 's/^/  /' >&2
        failed=1
    fi
    empty=$(find_empty_templates "$root")
    if [ -n "$empty" ]; then
        log "error: secrets-agent would refuse these templates at boot (exit 3) and their apps would" \
            "not start: each asks for no parameter, so the app would run without its secrets:"
        printf '%s\n' "$empty" | sed 's/^/  /' >&2
        failed=1
    fi
    machine_ids=$(find_machine_ids "$root")
    if [ -n "$machine_ids" ]; then
        log "error: the image's machine-id is set: every instance launched from it would share it, and" \
            "with it the refresh timers' random delay (the fleet would check SSM, and restart, in" \
            "lockstep); empty it (ami-bake.sh does when it installs):"
        printf '%s\n' "$machine_ids" | sed 's/^/  /' >&2
        failed=1
    fi
    [ -n "$untrusted$empty" ] || validate_services "$root" || failed=1
    [ "$failed" -eq 0 ] || exit 1
    log "verified: no rendered secret, no cached AWS credential, no sealed copy or host key, every" \
        "template asks for parameters, an empty machine-id, and $root/$CONFIG_DIR can be changed by" \
        "root only"
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
    remove_machine_bound ""
    reset_machine_id
    verify_image ""
}

main "$@"
