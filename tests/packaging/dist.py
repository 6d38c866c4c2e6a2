"""The artefacts `make dist` makes, built once per test process by packaging/build-dist.sh.

Shared by the packaging tests and the system tests (which can boot the .deb instead of the
source tree), so that one session builds them once.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from agent import __version__

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "packaging" / "build-dist.sh"
# The Debian build, lintian, the wheel, the tarball's pip downloads and the rpm take about 2 min.
BUILD_TIMEOUT_SECONDS = 600
# While iterating: a folder `make dist` already filled, used as it is instead of a fresh build.
PREBUILT_ENV = "SECRETS_AGENT_TEST_DIST"


class BuildUnavailable(Exception):
    """The artefacts cannot be built on this host (the .deb build installs Debian tools as root)."""


@dataclass(frozen=True)
class Artefacts:
    """What packaging/build-dist.sh made: the folder and the files in it."""

    folder: Path
    version: str
    wheel: Path
    sdist: Path
    deb: Path
    tarball: Path
    tarball_sha256: Path
    rpm: Path
    build_log: str
    # When this process ran build-dist.sh (time.time() before and after); None when prebuilt.
    built_during: Optional[tuple[float, float]] = None


@functools.cache
def built_artefacts() -> Artefacts:
    """Build the wheel, sdist, .deb, tarball and rpm of this tree into a temporary dist/ (once
    per process)."""
    if os.environ.get(PREBUILT_ENV):
        return _artefacts_in(Path(os.environ[PREBUILT_ENV]), f"prebuilt in ${PREBUILT_ENV}")
    if os.geteuid() != 0:
        raise BuildUnavailable("building the .deb needs root (it installs missing Debian build tools)")
    outdir = Path(tempfile.mkdtemp(prefix="secrets-agent-dist-"))
    atexit.register(shutil.rmtree, outdir, ignore_errors=True)
    started = time.time()
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--outdir", str(outdir)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_SECONDS,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"build-dist.sh failed:\n{result.stdout}\n{result.stderr}")
    return _artefacts_in(outdir, result.stderr, built_during=(started, time.time()))


def _artefacts_in(
    outdir: Path, build_log: str, built_during: Optional[tuple[float, float]] = None
) -> Artefacts:
    return Artefacts(
        folder=outdir,
        version=__version__,
        # The wheel spec turns the name's "-" into "_"; setuptools does the same for the sdist.
        wheel=outdir / f"secrets_agent-{__version__}-py3-none-any.whl",
        sdist=outdir / f"secrets_agent-{__version__}.tar.gz",
        deb=outdir / f"secrets-agent_{__version__}_all.deb",
        tarball=outdir / f"secrets-agent-{__version__}-linux.tar.gz",
        tarball_sha256=outdir / f"secrets-agent-{__version__}-linux.tar.gz.sha256",
        rpm=outdir / f"secrets-agent-{__version__}-1.noarch.rpm",
        build_log=build_log,
        built_during=built_during,
    )
