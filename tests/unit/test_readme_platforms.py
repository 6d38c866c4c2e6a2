"""The README's platform table names the tests that back each row, and they exist."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def platforms_section() -> str:
    """The README's "## Platforms" section, up to the next heading of its level."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("\n## Platforms\n")
    end = text.find("\n## ", start + 1)
    return text[start:end]


def defined_tests() -> set[str]:
    """The names of every test function under tests/."""
    names: set[str] = set()
    for path in (REPO / "tests").rglob("test_*.py"):
        names.update(re.findall(r"^def (test_\w+)\(", path.read_text(encoding="utf-8"), re.MULTILINE))
    return names


def test_every_test_the_platform_table_names_exists() -> None:
    """Each `test_...` the Platforms section cites is a test function of the suite, and each row
    of its table cites at least one test."""
    section = platforms_section()
    cited = set(re.findall(r"`(?:[\w/.]+::)?(test_\w+)(?:\[\w+\])?`", section))
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line][1:]

    assert cited
    assert sorted(cited - defined_tests()) == []
    assert len(rows) >= 3
    for row in rows:
        assert re.search(r"`[^`]*test_\w+", row), row
