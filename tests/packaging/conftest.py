"""Fixtures for the packaging tests: the artefacts `make dist` makes, built once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent import __version__
from tests.integration.moto_server import moto_server

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "packaging" / "build-dist.sh"
# The Debian build, lintian and the wheel build with its own setuptools take about 20 s.
BUILD_TIMEOUT_SECONDS = 600


def skip_unless_root(what: str) -> None:
    """Skip the calling test when not root, with a one-line reason; in CI (CI=true) fail instead."""
    if os.geteuid() == 0:
        return
    reason = f"{what} needs root"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}, and CI must run it")
    pytest.skip(reason)


@dataclass(frozen=True)
class Artefacts:
    """What packaging/build-dist.sh made: the folder and the three files in it."""

    folder: Path
    version: str
    wheel: Path
    sdist: Path
    deb: Path
    build_log: str


@pytest.fixture(scope="session")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> Artefacts:
    """The wheel, sdist and .deb of this tree, built by packaging/build-dist.sh into a temporary dist/."""
    skip_unless_root("building the .deb (it installs missing Debian build tools)")
    outdir = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--outdir", str(outdir)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, f"build-dist.sh failed:\n{result.stdout}\n{result.stderr}"
    version = __version__
    return Artefacts(
        folder=outdir,
        version=version,
        # The wheel spec turns the name's "-" into "_"; setuptools does the same for the sdist.
        wheel=outdir / f"secrets_agent-{version}-py3-none-any.whl",
        sdist=outdir / f"secrets_agent-{version}.tar.gz",
        deb=outdir / f"secrets-agent_{version}_all.deb",
        build_log=result.stderr,
    )


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """moto's server on 127.0.0.1, started once for the packaging tests."""
    with moto_server() as url:
        yield url
