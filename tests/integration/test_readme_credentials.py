"""The README's snippets that read a credential (Python and Node.js) run as printed and read the
value exactly from a folder laid out as systemd lays out $CREDENTIALS_DIRECTORY."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent.template.credentials import credential_id
from tests.prerequisites import require_command

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Credentials instead of an EnvironmentFile"
VALUE = 'pa$$ "w0rd"\nsecond line ü\n'


def _snippet(language: str) -> str:
    """The first fenced block in `language` of the README's credentials section."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index(SECTION) :]
    section = section[: section.index("\n## ", len(SECTION))]
    match = re.search(rf"```{language}\n(.*?)```", section, re.DOTALL)
    assert match is not None, f"no {language} block in the README's credentials section"
    return match.group(1)


@pytest.fixture
def credentials_directory(tmp_path: Path) -> Path:
    """A folder holding DB_PASSWORD under the id systemd gives it, as in the app's $CREDENTIALS_DIRECTORY."""
    folder = tmp_path / "credentials"
    folder.mkdir()
    (folder / credential_id("DB_PASSWORD")).write_bytes(VALUE.encode())
    return folder


def test_the_python_snippet_reads_the_value_exactly(credentials_directory: Path) -> None:
    """The README's Python lines read DB_PASSWORD byte for byte."""
    code = _snippet("python") + "\nsys.stdout.buffer.write(db_password.encode())\n"
    result = subprocess.run(
        [sys.executable, "-c", "import sys\n" + code],
        env={**os.environ, "CREDENTIALS_DIRECTORY": str(credentials_directory)},
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == VALUE.encode()


def test_the_node_snippet_reads_the_value_exactly(credentials_directory: Path) -> None:
    """The README's Node.js lines read DB_PASSWORD byte for byte."""
    require_command("node", "nodejs")
    code = _snippet("js") + "\nprocess.stdout.write(dbPassword);\n"
    result = subprocess.run(
        ["node", "-e", code],
        env={**os.environ, "CREDENTIALS_DIRECTORY": str(credentials_directory)},
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == VALUE.encode()
