"""`make demo`'s program, run as the Makefile runs it: from devtools/, outside the installed package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from devtools.demo import EXAMPLE_PARAMETERS

REPO = Path(__file__).resolve().parents[2]
DEMO_TIMEOUT_SECONDS = 120


def test_demo_renders_checks_and_cleans_without_showing_a_value() -> None:
    """`python -m devtools.demo` renders the example file, cleans it up, exits 0 and prints no value."""
    result = subprocess.run(
        [sys.executable, "-m", "devtools.demo"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_SECONDS,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "values masked:" in result.stdout
    assert "exists: False" in result.stdout
    for _type, value in EXAMPLE_PARAMETERS.values():
        if len(value) > 4:  # "info" is no secret and may appear in a log line
            assert value not in result.stdout + result.stderr
