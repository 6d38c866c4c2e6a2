"""The agent's code stays within Python 3.9 (Amazon Linux 2023 ships it)."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.prerequisites import skip_or_fail
from tests.system import nspawn
from tests.timing import MACHINE_TIMEOUT_SECONDS

AGENT_DIR = Path(__file__).resolve().parents[2] / "agent"
# The packaging tests' Debian 11 root (tests/packaging/test_selfcontained_install.py boots the same
# one): the same packages give the same cache, so CI builds it once. Its python3 is 3.9.
BULLSEYE_PYTHON_PACKAGES = ("systemd", "systemd-sysv", "dbus", "ca-certificates", "python3", "rpm")
COMPILE_ALL = (
    "import json, sys\n"
    "sources = json.load(sys.stdin)\n"
    "for name, text in sources.items():\n"
    "    compile(text, name, 'exec')\n"
    "print(sys.version_info[:2], len(sources))\n"
)


def _python39() -> list[str]:
    """A command that runs Python 3.9: as root, Debian 11's python3.9 in its cached root (the project
    builds it with debootstrap); otherwise a python3.9 on this machine."""
    if os.geteuid() == 0:
        try:
            root = nspawn.build_rootfs(
                BULLSEYE_PYTHON_PACKAGES, log=lambda _line: None, release=nspawn.BULLSEYE
            )
        except nspawn.HostNotSuitable as exc:
            skip_or_fail(f"Debian 11's Python 3.9 root: {exc}")
        return ["chroot", str(root), "/usr/bin/python3.9"]
    # pyenv's versions first: its shim named python3.9 exists but refuses to run unless selected.
    pyenv = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9.*/bin/python3.9")))
    found = pyenv[-1] if pyenv else shutil.which("python3.9")
    if found is None:
        skip_or_fail("a Python 3.9 (as root the test builds Debian 11's; else put python3.9 on PATH)")
    return [found]


@pytest.mark.timeout(MACHINE_TIMEOUT_SECONDS)  # may debootstrap Debian 11's root first
def test_agent_compiles_under_python39() -> None:
    """Every module of agent/ parses and compiles with a real Python 3.9 interpreter."""
    python = _python39()
    sources = {
        str(p.relative_to(AGENT_DIR.parent)): p.read_text(encoding="utf-8") for p in AGENT_DIR.rglob("*.py")
    }
    result = subprocess.run(
        [*python, "-c", COMPILE_ALL],
        input=json.dumps(sources),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"(3, 9) {len(sources)}"
    assert len(sources) >= 10


@pytest.mark.timeout(MACHINE_TIMEOUT_SECONDS)  # may debootstrap Debian 11's root first
def test_a_python310_only_construct_fails_the_check() -> None:
    """The check can fail: a `match` statement (3.10) does not compile under the same interpreter."""
    python = _python39()
    source = {"agent/new.py": "match 1:\n    case 1:\n        pass\n"}
    result = subprocess.run(
        [*python, "-c", COMPILE_ALL],
        input=json.dumps(source),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "SyntaxError" in result.stderr
