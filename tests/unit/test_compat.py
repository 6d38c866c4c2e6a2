"""The agent's code stays within Python 3.9 (Amazon Linux 2023 ships it)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest

AGENT_DIR = Path(__file__).resolve().parents[2] / "agent"


def _python39() -> str | None:
    # pyenv's versions first: its shim named python3.9 exists but refuses to run unless selected.
    pyenv = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9.*/bin/python3.9")))
    if pyenv:
        return pyenv[-1]
    return shutil.which("python3.9")


def test_agent_compiles_under_python39() -> None:
    """Every module of agent/ parses and compiles with a real Python 3.9 interpreter."""
    python = _python39()
    if python is None:
        pytest.skip("no Python 3.9 interpreter on this machine")
    sources = sorted(str(p) for p in AGENT_DIR.rglob("*.py"))
    script = "import sys\nfor f in sys.argv[1:]:\n    compile(open(f, encoding='utf-8').read(), f, 'exec')\n"
    result = subprocess.run([python, "-c", script, *sources], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert len(sources) >= 10
