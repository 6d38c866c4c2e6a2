#!/bin/bash
# Builds the wheel, the sdist, the .deb, the self-contained tarball (+ .sha256) and the rpm into
# dist/ (or --outdir DIR); runs lintian on the .deb and rpmlint on the rpm and fails on any
# error, or on any warning the package does not explain. `make dist` calls it.
#
# Everything is built in a temporary copy of the tree, so the source tree gets nothing but
# the artefacts in the output folder. As root on Debian it installs the Debian packages the
# build needs when they are missing; otherwise it says which ones to install.
#
# --install-tools installs the Debian packages the build needs (as root) and builds nothing: the
# build itself then runs as any user.
#
# Environment: PYTHON (default .venv/bin/python, else python3) must have the `build`
# module; DEB_BUILD_OPTIONS is passed to the Debian build (nocheck skips its tests).
set -euo pipefail
# The modes in the wheel, the sdist and the .deb must not depend on the caller's umask.
umask 022

usage() {
    echo "usage: $0 [--outdir DIR] [--install-tools]" >&2
    exit 2
}

repo=$(cd "$(dirname "$0")/.." && pwd)
outdir="$repo/dist"
tools_only=""
while [ $# -gt 0 ]; do
    case "$1" in
        --outdir) [ $# -ge 2 ] || usage; outdir=$2; shift 2 ;;
        --install-tools) tools_only=yes; shift ;;
        -h | --help) usage ;;
        *) usage ;;
    esac
done
if [ -z "$tools_only" ]; then
    mkdir -p "$outdir"
    outdir=$(cd "$outdir" && pwd)
fi
cd "$repo"

if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

log() { printf 'build-dist: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# One version: CHANGELOG.md's first heading, which agent/__init__.py, the Debian changelog
# (dpkg takes the package version from there) and the spec's Version: repeat.
version=$(python3 packaging/version.py --check) \
    || die "the version files disagree with CHANGELOG.md: run 'make version'"
spec=packaging/rpm/secrets-agent.spec

# Debian packages the build and its checks need. apt-get build-dep reads them from
# debian/control itself, so the list lives in one place.
stage=$(mktemp -d "${TMPDIR:-/tmp}/secrets-agent-dist.XXXXXX")
trap 'rm -rf "$stage"' EXIT
src="$stage/secrets-agent-$version"
mkdir "$src"

# The files a fresh clone has, plus new files not yet committed and not ignored, minus
# files deleted from the work tree; outside a git work tree, the folder less what the
# build makes or caches.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' path; do [ -f "$path" ] && printf '%s\0' "$path"; done \
        | tar --null --no-recursion -T - -cf - | tar -xf - -C "$src"
else
    tar --exclude-vcs --exclude=./.venv --exclude=./dist --exclude=./build \
        --exclude='*.egg-info' --exclude=__pycache__ --exclude='.*_cache' -cf - . \
        | tar -xf - -C "$src"
fi
cp -a packaging/debian "$src/debian"

apt_install() {
    if ! apt-get install -y --no-install-recommends "$@"; then
        apt-get update && apt-get install -y --no-install-recommends "$@"
    fi
}

missing_tools=()
for tool in lintian:lintian shellcheck:shellcheck dpkg-buildpackage:dpkg-dev rpmbuild:rpm rpmlint:rpmlint; do
    command -v "${tool%%:*}" >/dev/null || missing_tools+=("${tool#*:}")
done
if ! build_deps_report=$(cd "$src" && dpkg-checkbuilddeps 2>&1) || [ ${#missing_tools[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        die "missing Debian packages: ${missing_tools[*]} $build_deps_report (run as root to install them)"
    fi
    log "installing the Debian packages the build needs"
    export DEBIAN_FRONTEND=noninteractive
    [ ${#missing_tools[@]} -eq 0 ] || apt_install "${missing_tools[@]}" >&2
    if ! (cd "$src" && dpkg-checkbuilddeps) 2>/dev/null; then
        apt-get build-dep -y --no-install-recommends "$src" >&2 \
            || { apt-get update >&2 && apt-get build-dep -y --no-install-recommends "$src" >&2; }
    fi
fi

# --install-tools: as root, only what is above (so that a build can then run as any user).
if [ -n "$tools_only" ]; then
    log "the Debian packages the build needs are installed"
    exit 0
fi

"$PYTHON" -c 'import build' 2>/dev/null \
    || die "$PYTHON lacks the 'build' module: run 'make dist', or set PYTHON to one that has it"

log "wheel and sdist of $version"
"$PYTHON" -m build --outdir "$stage/python" "$src" >"$stage/python-build.log" 2>&1 \
    || { cat "$stage/python-build.log" >&2; die "the wheel or sdist build failed"; }

log "Debian package of $version"
# Debian's toolchain and Debian's python3 only: not a pyenv or venv python3 found first in PATH.
(cd "$src" && PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -b -us -uc) >"$stage/deb-build.log" 2>&1 \
    || { cat "$stage/deb-build.log" >&2; die "the Debian build failed"; }
deb="$stage/secrets-agent_${version}_all.deb"
[ -f "$deb" ] || die "dpkg-buildpackage did not make $(basename "$deb")"

log "lintian"
# Lintian warns against running as root, but unpacks the package into a private temporary
# folder either way; overrides come from the package itself (packaging/debian/*.lintian-overrides).
lintian --fail-on error,warning --display-info "$deb" >"$stage/lintian.log" 2>&1 \
    || { cat "$stage/lintian.log" >&2; die "lintian found errors or warnings"; }
cat "$stage/lintian.log" >&2

log "self-contained tarball of $version"
mkdir "$stage/selfcontained"
"$PYTHON" "$src/packaging/selfcontained/build.py" --outdir "$stage/selfcontained" >&2
tarball="$stage/selfcontained/secrets-agent-$version-linux.tar.gz"

log "rpm of $version"
# Debian's rpmbuild, its own folder tree; the spec unpacks the tarball into its buildroot.
mkdir -p "$stage/rpm/SOURCES"
cp "$tarball" "$stage/rpm/SOURCES/"
rpmbuild -bb --define "_topdir $stage/rpm" "$src/$spec" >"$stage/rpm-build.log" 2>&1 \
    || { cat "$stage/rpm-build.log" >&2; die "the rpm build failed"; }
rpm="$stage/rpm/RPMS/noarch/secrets-agent-$version-1.noarch.rpm"
[ -f "$rpm" ] || die "rpmbuild did not make $(basename "$rpm")"

log "rpmlint"
# No error; a warning only of a kind the spec's opening comment explains.
rpmlint_explained='only-non-binary-in-usr-lib|cross-directory-hard-link|no-manual-page-for-binary'
rpmlint -c "$src/packaging/rpm/rpmlint.toml" "$rpm" >"$stage/rpmlint.log" 2>&1 || true
if grep -q ': E: ' "$stage/rpmlint.log" || ! grep -q ' 0 errors' "$stage/rpmlint.log" \
    || grep ': W: ' "$stage/rpmlint.log" | grep -v -E ": W: ($rpmlint_explained)( |\$)" | grep -q .; then
    cat "$stage/rpmlint.log" >&2
    die "rpmlint found errors, or warnings $spec does not explain"
fi
grep -E ' (errors|warnings)' "$stage/rpmlint.log" >&2

# Replace the previous artefacts of this project, whatever their version, and nothing else.
rm -f "$outdir"/secrets_agent-*.whl "$outdir"/secrets_agent-*.tar.gz \
    "$outdir"/secrets-agent-*.tar.gz "$outdir"/secrets-agent-*.tar.gz.sha256 \
    "$outdir"/secrets-agent_*_all.deb "$outdir"/secrets-agent-*.noarch.rpm
mv "$stage"/python/* "$deb" "$tarball" "$tarball.sha256" "$rpm" "$outdir"/
log "built into $outdir:"
(cd "$outdir" && ls -1 secrets_agent-* secrets-agent_* secrets-agent-*) >&2
