"""The consolidation's rules, kept: one formats table, one systemctl runner, one atomic writer."""

from __future__ import annotations

import re
from pathlib import Path

AGENT = Path(__file__).resolve().parents[2] / "agent"


def _sources() -> dict[str, str]:
    return {path.name: path.read_text(encoding="utf-8") for path in sorted(AGENT.glob("*.py"))}


def test_no_module_asks_which_format_outside_the_table() -> None:
    """Only agent/formats.py compares a format's name; everything else looks its entry up."""
    asking = [name for name, text in _sources().items() if re.search(r"\bformat\s*[!=]=", text)]
    assert asking == []


def test_only_systemd_py_runs_a_process() -> None:
    """systemctl (the only program the agent runs) is run by agent/systemd.py alone."""
    running = [name for name, text in _sources().items() if "subprocess" in text and name != "systemd.py"]
    assert running == []


def test_only_output_py_renames_a_written_file_into_place() -> None:
    """The atomic write (a temporary file renamed over the target) is defined once, in agent/output.py."""
    renaming = [
        name
        for name, text in _sources().items()
        if re.search(r"\bos\.(rename|replace)\(", text) and name not in ("output.py", "secret_folder.py")
    ]
    assert renaming == []
