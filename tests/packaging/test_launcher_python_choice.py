"""The self-contained launcher (the tarball's and the rpm's /usr/bin/secrets-agent) runs the agent on
the newest supported python3.X beside it, falls back to the python3 that started it, and obeys
SECRETS_AGENT_PYTHON."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

from tests.packaging.conftest import REPO

LAUNCHER = REPO / "packaging/selfcontained/secrets-agent"
# Stands in for the agent: says which interpreter imported it.
FAKE_MAIN = "import sys\n\ndef run():\n    print(sys.executable)\n    return 0\n"


def _root(tmp_path: Path, pythons: tuple[str, ...]) -> Path:
    """A usr/ tree with the launcher, a stand-in agent, and python3.X wrappers named `pythons`
    that record their use and run this test's own interpreter."""
    bin_dir = tmp_path / "usr/bin"
    agent = tmp_path / "usr/lib/secrets-agent/agent"
    bin_dir.mkdir(parents=True)
    agent.mkdir(parents=True)
    (agent / "__init__.py").write_text("")
    (agent / "__main__.py").write_text(FAKE_MAIN)
    shutil.copyfile(LAUNCHER, bin_dir / "secrets-agent")
    for version in pythons:
        wrapper = bin_dir / f"python{version}"
        wrapper.write_text(f'#!/bin/sh\necho "$0" >>"{tmp_path}/used"\nexec "{sys.executable}" "$@"\n')
        wrapper.chmod(0o755)
    return tmp_path


def _launch(root: Path, pinned: Optional[str] = None) -> tuple[str, list[str]]:
    """Run the launcher with this test's Python, as its #! line would; what ran it, and which
    wrappers were used."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if pinned is not None:
        env["SECRETS_AGENT_PYTHON"] = pinned
    result = subprocess.run(
        [sys.executable, "-IS", str(root / "usr/bin/secrets-agent"), "--version"],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    used = root / "used"
    return result.stdout.strip(), used.read_text().split() if used.exists() else []


@pytest.fixture(autouse=True)
def _this_python_is_older_than_3_12() -> None:
    if sys.version_info[:2] >= (3, 12):
        pytest.skip("the wrappers stand for newer Pythons than this one; this one is 3.12 or newer")


def test_newest_supported_python_beside_the_launcher_runs_the_agent(tmp_path: Path) -> None:
    """With python3.12 and python3.13 beside the launcher, the agent runs on python3.13 alone."""
    root = _root(tmp_path, ("3.12", "3.13"))
    _ran_on, used = _launch(root)
    assert used == [str(root / "usr/bin/python3.13")]


def test_an_older_or_no_other_python_keeps_the_one_that_started(tmp_path: Path) -> None:
    """A python3.10 beside the launcher (older than this one) is not used, nor is anything when no
    python3.X is there: the python3 that started the launcher runs the agent."""
    for pythons in (("3.10",), ()):
        root = _root(tmp_path / "-".join(pythons or ("none",)), pythons)
        ran_on, used = _launch(root)
        assert used == []
        assert ran_on == sys.executable


def test_secrets_agent_python_pins_the_interpreter(tmp_path: Path) -> None:
    """SECRETS_AGENT_PYTHON=current keeps the starting python3 though a newer one is there; a path
    runs that interpreter."""
    root = _root(tmp_path, ("3.13",))
    assert _launch(root, pinned="current")[1] == []
    assert _launch(root, pinned=str(root / "usr/bin/python3.13"))[1] == [str(root / "usr/bin/python3.13")]
