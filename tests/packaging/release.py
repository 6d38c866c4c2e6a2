"""The release `make release` makes, built once per test process as an unprivileged user, and the
0.1.0 packages upgrades start from.

`make release` must not need root: the tools are installed first as root (the project's own
build-dist.sh --install-tools and apt-install.sh), then a copy of the tree owned by `nobody` runs
`make release` as `nobody` (setpriv), with a throwaway key.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agent import __version__
from tests.packaging.dist import REPO, BuildUnavailable
from tests.system import nspawn

# The build (wheel, .deb, lintian, tarball with its pip downloads, rpm) plus signing and two
# repositories: about 3 min on a quiet machine, far more on a shared one.
RELEASE_TIMEOUT_SECONDS = 1500
UNPRIVILEGED = "nobody"
RELEASE_TOOLS = ("gpg", "apt-utils", "createrepo-c", "rpm", "python3-build", "python3-pip", "python3-venv")
# The first release, as tagged by the commit that filed the release issue: upgrades start there.
FIRST_RELEASE_COMMIT = "8e377b7"
FIRST_RELEASE_VERSION = "0.1.0"
CACHE_FIRST_RELEASE = nspawn.CACHE_ROOT / f"dist-{FIRST_RELEASE_VERSION}-{FIRST_RELEASE_COMMIT}"
# While iterating: a dist/release folder `make release` already made, used as it is.
PREBUILT_RELEASE_ENV = "SECRETS_AGENT_TEST_RELEASE"


@dataclass(frozen=True)
class Release:
    """What `make release` made: the folder, the version and what it printed."""

    folder: Path
    version: str
    log: str

    @property
    def deb(self) -> Path:
        """The .deb at the top of the release."""
        return self.folder / f"secrets-agent_{self.version}_all.deb"

    @property
    def rpm(self) -> Path:
        """The signed rpm at the top of the release."""
        return self.folder / f"secrets-agent-{self.version}-1.noarch.rpm"


def _as_unprivileged(
    argv: list[str], home: Path, cwd: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    env = {
        "HOME": str(home),
        "TMPDIR": str(home),
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "LANG": "C.UTF-8",
        # Debian's: the tests' own Python may live where `nobody` cannot read (a pyenv under /root).
        "PYTHON": "/usr/bin/python3",
    }
    return subprocess.run(
        ["setpriv", f"--reuid={UNPRIVILEGED}", f"--regid={_group_of(UNPRIVILEGED)}", "--clear-groups",
         "--", "env", "-i", *(f"{key}={value}" for key, value in env.items()), *argv],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def _group_of(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_gid


@functools.cache
def built_release() -> Release:
    """`make release` of this tree, run as `nobody` in a copy of it, with a throwaway key."""
    if os.environ.get(PREBUILT_RELEASE_ENV):
        return Release(Path(os.environ[PREBUILT_RELEASE_ENV]), __version__, "prebuilt")
    if os.geteuid() != 0:
        raise BuildUnavailable("the release test installs the release tools and switches user: it needs root")
    for argv in (
        ["bash", str(REPO / "packaging/build-dist.sh"), "--install-tools"],
        ["bash", str(REPO / "packaging/apt-install.sh"), *RELEASE_TOOLS],
    ):
        subprocess.run(argv, capture_output=True, text=True, check=True, timeout=900)
    work = Path(tempfile.mkdtemp(prefix="secrets-agent-release-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    work.chmod(0o755)
    source, home = work / "src", work / "home"
    home.mkdir()
    _copy_tree(source)
    subprocess.run(
        ["chown", "-R", f"{UNPRIVILEGED}:{_group_of(UNPRIVILEGED)}", str(source), str(home)], check=True
    )
    result = _as_unprivileged(["make", "release"], home, source, RELEASE_TIMEOUT_SECONDS)
    if result.returncode != 0:
        raise AssertionError(f"make release failed as {UNPRIVILEGED}:\n{result.stdout}\n{result.stderr}")
    return Release(source / "dist/release", __version__, result.stdout + result.stderr)


def _copy_tree(destination: Path) -> None:
    """The files a clone of this tree would have, plus files not yet committed (as build-dist.sh)."""
    destination.mkdir()
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    )  # fmt: skip
    for name in listing.stdout.decode().split("\0"):
        if name and (REPO / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, destination / name)


@functools.cache
def first_release() -> Path:
    """The folder holding 0.1.0's .deb and rpm, built from its commit's files once and
    cached beside the system tests' roots (it never changes)."""
    deb = CACHE_FIRST_RELEASE / f"secrets-agent_{FIRST_RELEASE_VERSION}_all.deb"
    if deb.exists():
        return CACHE_FIRST_RELEASE
    nspawn.CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with open(nspawn.CACHE_ROOT / f".lock-dist-{FIRST_RELEASE_VERSION}", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if deb.exists():
            return CACHE_FIRST_RELEASE
        building = Path(tempfile.mkdtemp(prefix=".build-dist-", dir=nspawn.CACHE_ROOT))
        source = building / "src"
        source.mkdir()
        try:
            # The commit's files alone (git archive): the source tree's .git is left as it is.
            archive = subprocess.run(
                ["git", "-C", str(REPO), "archive", FIRST_RELEASE_COMMIT], capture_output=True, check=True
            )
            subprocess.run(["tar", "-x", "-C", str(source)], input=archive.stdout, check=True)
            result = subprocess.run(
                ["bash", str(source / "packaging/build-dist.sh"), "--outdir", str(building / "dist")],
                env={**os.environ, "PYTHON": sys.executable, "DEB_BUILD_OPTIONS": "nocheck"},
                capture_output=True, text=True, timeout=RELEASE_TIMEOUT_SECONDS, check=False,
            )  # fmt: skip
            if result.returncode != 0:
                raise AssertionError(f"building {FIRST_RELEASE_VERSION} failed:\n{result.stderr}")
            (building / "dist").rename(CACHE_FIRST_RELEASE)
        finally:
            shutil.rmtree(building, ignore_errors=True)
    return CACHE_FIRST_RELEASE


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output clean."""


@contextlib.contextmanager
def served(folder: Path) -> Iterator[str]:
    """`folder` served read-only over HTTP on 127.0.0.1, as any static web server would: its URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
