#!/bin/bash
# Builds a signed release into dist/release/ (or --outdir DIR), as any user (root not needed):
# every artefact of `make dist` (the rpm signed with rpmsign), SHA256SUMS and its detached
# signature SHA256SUMS.asc, the public key twice (secrets-agent-archive-keyring.gpg for apt's
# Signed-By=, secrets-agent.asc for rpm --import), a static apt repository in apt/ (suite stable,
# component main; InRelease, Release, Release.gpg, Packages(.gz), pool/) and a static yum
# repository in yum/ (createrepo_c, repomd.xml.asc), with the secrets-agent.sources and
# secrets-agent.repo files that point at them. `make release SIGNING_KEY=FILE` calls it.
#
# The key: --signing-key FILE, an armored OpenPGP private key (a passphrase, if it has one, in the
# file named by SIGNING_KEY_PASSPHRASE_FILE). Without one a throwaway key is made, and the output
# says loudly that the release is for testing only. The key lives in a private GnuPG home that is
# removed at the end: nothing is added to the caller's keyrings.
#
# Environment: RELEASE_URL (default https://releases.secrets-agent.dev), where the folder will be
# served: the .sources and .repo files point at RELEASE_URL/apt and RELEASE_URL/yum. PYTHON (default
# the venv's if it has `build`, else /usr/bin/python3) builds the wheel and tarball. Needs gpg, apt-ftparchive (apt-utils), createrepo_c (createrepo-c) and
# rpmsign (rpm): as root they are installed when missing, otherwise the error names them.
set -euo pipefail
umask 022

usage() {
    echo "usage: $0 [--signing-key FILE] [--outdir DIR]" >&2
    exit 2
}

repo=$(cd "$(dirname "$0")/.." && pwd)
outdir="$repo/dist/release"
signing_key=""
while [ $# -gt 0 ]; do
    case "$1" in
        --signing-key) [ $# -ge 2 ] || usage; signing_key=$2; shift 2 ;;
        --outdir) [ $# -ge 2 ] || usage; outdir=$2; shift 2 ;;
        -h | --help) usage ;;
        *) usage ;;
    esac
done
release_url=${RELEASE_URL:-https://releases.secrets-agent.dev}
release_url=${release_url%/}

log() { printf 'release: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

if [ -n "$signing_key" ]; then
    [ -f "$signing_key" ] || die "SIGNING_KEY=$signing_key: no such file (an armored OpenPGP private key)"
    signing_key=$(cd "$(dirname "$signing_key")" && pwd)/$(basename "$signing_key")
fi
# The Python that builds the wheel and the tarball needs build, pip and venv: the venv's (make
# dist's), else Debian's python3 with python3-build, python3-pip and python3-venv.
if [ -z "${PYTHON:-}" ]; then
    if "$repo/.venv/bin/python" -c 'import build' 2>/dev/null; then PYTHON=$repo/.venv/bin/python; else PYTHON=/usr/bin/python3; fi
fi
export PYTHON
tools=(gpg apt-utils createrepo-c rpm)
[ "$PYTHON" != /usr/bin/python3 ] || tools+=(python3-build python3-pip python3-venv)
bash "$repo/packaging/apt-install.sh" "${tools[@]}" || die "install the Debian packages above to build a release"

mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
# A short path: gpg-agent's socket lives in the home, and socket paths are limited to 107 bytes.
GNUPGHOME=$(mktemp -d /tmp/sa-gpg.XXXXXX)
export GNUPGHOME
cleanup() {
    gpgconf --kill gpg-agent >/dev/null 2>&1 || true
    rm -rf "$GNUPGHOME"
}
trap cleanup EXIT

gpg_sign=(gpg --batch --yes --quiet)
if [ -n "${SIGNING_KEY_PASSPHRASE_FILE:-}" ]; then
    gpg_sign+=(--pinentry-mode loopback --passphrase-file "$SIGNING_KEY_PASSPHRASE_FILE")
fi

throwaway=""
if [ -n "$signing_key" ]; then
    gpg --batch --quiet --import "$signing_key" 2>/dev/null \
        || die "SIGNING_KEY=$signing_key: gpg cannot import it as an OpenPGP private key"
else
    throwaway=yes
    gpg --batch --quiet --passphrase '' --quick-gen-key \
        "secrets-agent THROWAWAY test key, not for publishing <maintainers@secrets-agent.dev>" \
        rsa3072 sign 7d
fi
fingerprint=$(gpg --batch --with-colons --list-secret-keys | awk -F: '$1 == "fpr" { print $10; exit }')
[ -n "$fingerprint" ] || die "SIGNING_KEY=$signing_key holds no private key"
loud() {
    log "****************************************************************************"
    log "THROWAWAY KEY: this release is signed with a key made for this build alone,"
    log "for testing. Do not publish it: nobody can verify a later release against it."
    log "Build a real release with: make release SIGNING_KEY=FILE"
    log "****************************************************************************"
}
[ -z "$throwaway" ] || loud
log "signing with $fingerprint"

# Every artefact of `make dist`, built afresh into the release folder (emptied first: a release
# holds one version only).
rm -rf "$outdir"
mkdir -p "$outdir"
bash "$repo/packaging/build-dist.sh" --outdir "$outdir"
version=$(python3 "$repo/packaging/version.py" --check)
deb="$outdir/secrets-agent_${version}_all.deb"
rpm="$outdir/secrets-agent-${version}-1.noarch.rpm"
{ [ -f "$deb" ] && [ -f "$rpm" ]; } || die "make dist did not leave the .deb and the rpm of $version"

log "rpm signature"
rpmsign_args=(--define "_gpg_name $fingerprint" --define "_gpg_path $GNUPGHOME" --define "__gpg $(command -v gpg)")
if [ -n "${SIGNING_KEY_PASSPHRASE_FILE:-}" ]; then
    rpmsign_args+=(--define "_gpg_sign_cmd_extra_args --pinentry-mode loopback --passphrase-file $SIGNING_KEY_PASSPHRASE_FILE")
fi
rpmsign --addsign "${rpmsign_args[@]}" "$rpm" >/dev/null

log "public key"
gpg --batch --export "$fingerprint" >"$outdir/secrets-agent-archive-keyring.gpg"
gpg --batch --export --armor "$fingerprint" >"$outdir/secrets-agent.asc"

log "apt repository"
apt="$outdir/apt"
mkdir -p "$apt/pool/main/s/secrets-agent" "$apt/dists/stable/main/binary-all"
cp "$deb" "$apt/pool/main/s/secrets-agent/"
(cd "$apt" && apt-ftparchive packages pool/main >dists/stable/main/binary-all/Packages)
gzip -9nk "$apt/dists/stable/main/binary-all/Packages"
(cd "$apt" && apt-ftparchive \
    -o APT::FTPArchive::Release::Origin=secrets-agent \
    -o APT::FTPArchive::Release::Label=secrets-agent \
    -o APT::FTPArchive::Release::Suite=stable \
    -o APT::FTPArchive::Release::Codename=stable \
    -o APT::FTPArchive::Release::Architectures=all \
    -o APT::FTPArchive::Release::Components=main \
    -o "APT::FTPArchive::Release::Description=secrets-agent releases" \
    release dists/stable) >"$GNUPGHOME/Release"
mv "$GNUPGHOME/Release" "$apt/dists/stable/Release"
"${gpg_sign[@]}" --local-user "$fingerprint" --clearsign \
    --output "$apt/dists/stable/InRelease" "$apt/dists/stable/Release"
"${gpg_sign[@]}" --local-user "$fingerprint" --armor --detach-sign \
    --output "$apt/dists/stable/Release.gpg" "$apt/dists/stable/Release"
cat >"$outdir/secrets-agent.sources" <<EOF
Types: deb
URIs: $release_url/apt
Suites: stable
Components: main
Signed-By: /usr/share/keyrings/secrets-agent-archive-keyring.gpg
EOF

log "yum repository"
yum="$outdir/yum"
mkdir -p "$yum"
cp "$rpm" "$yum/"
createrepo_c --quiet "$yum"
"${gpg_sign[@]}" --local-user "$fingerprint" --armor --detach-sign \
    --output "$yum/repodata/repomd.xml.asc" "$yum/repodata/repomd.xml"
cat >"$outdir/secrets-agent.repo" <<EOF
[secrets-agent]
name=secrets-agent
baseurl=$release_url/yum
enabled=1
gpgcheck=1
repo_gpgcheck=1
gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-secrets-agent
EOF

log "SHA256SUMS"
(cd "$outdir" && find . -maxdepth 1 -type f ! -name 'SHA256SUMS*' -printf '%f\n' | LC_ALL=C sort \
    | xargs sha256sum >SHA256SUMS)
"${gpg_sign[@]}" --local-user "$fingerprint" --armor --detach-sign \
    --output "$outdir/SHA256SUMS.asc" "$outdir/SHA256SUMS"

log "release $version in $outdir, signed by $fingerprint:"
(cd "$outdir" && ls -1) >&2
[ -z "$throwaway" ] || loud
