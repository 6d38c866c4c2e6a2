"""CHANGELOG.md holds the version: packaging/version.py reads it and every other file agrees."""

from __future__ import annotations

import datetime
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from agent import __version__

REPO = Path(__file__).resolve().parents[2]


def _version_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("release_version", REPO / "packaging/version.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


version = _version_module()


def test_the_tree_agrees_with_the_changelog() -> None:
    """`packaging/version.py --check` passes on this tree and prints agent/__init__.py's version."""
    result = subprocess.run(
        [sys.executable, str(REPO / "packaging/version.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == __version__


def test_a_stale_file_is_named_then_rewritten(tmp_path: Path) -> None:
    """In a copy of the tree, an agent/__init__.py with another version fails --check, which names
    it; `make version` (version.py without --check) rewrites it and --check then passes."""
    files = ("CHANGELOG.md", "README.md", "agent/__init__.py", "packaging/version.py",
             "packaging/debian/changelog", "packaging/rpm/secrets-agent.spec")  # fmt: skip
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes((REPO / name).read_bytes())
    init = tmp_path / "agent/__init__.py"
    init.write_text(init.read_text().replace(f'"{__version__}"', '"9.9.9"'))
    script = [sys.executable, str(tmp_path / "packaging/version.py")]

    stale = subprocess.run([*script, "--check"], capture_output=True, text=True, check=False)
    assert stale.returncode == 1
    assert "agent/__init__.py disagree with CHANGELOG.md" in stale.stderr
    assert "run 'make version'" in stale.stderr
    subprocess.run(script, capture_output=True, check=True)
    assert init.read_bytes() == (REPO / "agent/__init__.py").read_bytes()
    assert subprocess.run([*script, "--check"], capture_output=True, check=False).returncode == 0


def test_entries_parse_with_joined_bullets_newest_first() -> None:
    """Each `## X.Y.Z - DATE` heading is a release; a bullet's wrapped lines join into one change."""
    text = (
        "# Changelog\n\nintro\n\n## 1.1.0 - 2026-12-01\n\n- one\n  two\n- three\n\n"
        "## 1.0.0 - 2026-11-01\n\n- first\n"
    )
    releases = version.read_changelog(text)
    assert [(r.version, r.date, r.changes) for r in releases] == [
        ("1.1.0", datetime.date(2026, 12, 1), ("one two", "three")),
        ("1.0.0", datetime.date(2026, 11, 1), ("first",)),
    ]
    debian = version.debian_changelog(releases)
    assert debian.startswith("secrets-agent (1.1.0) unstable; urgency=medium\n\n  * one two\n  * three\n")
    assert (
        " -- secrets-agent developers <maintainers@secrets-agent.dev>  Tue, 01 Dec 2026 12:00:00 +0000\n"
        in debian
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("## next\n- x\n", "is not a '## X.Y.Z - YYYY-MM-DD' heading"),
        ("## 1.0.0 - 2026-11-01\n", "lists no change"),
        ("# Changelog\n", "no '## X.Y.Z - YYYY-MM-DD' heading"),
    ],
)
def test_a_malformed_changelog_is_refused_with_the_reason(text: str, message: str) -> None:
    """A heading that is not a version and date, an entry without a change, or no entry at all."""
    with pytest.raises(SystemExit, match=message):
        version.read_changelog(text)
