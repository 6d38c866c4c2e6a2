"""The README's quick start as the tests run it: the install block of each package kind and the
block that puts an app behind the agent, read from the README itself, so that what a new operator
types is what the container tests prove.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Quick start on EC2"
# The bold label that opens each install block, by package kind.
INSTALL_LABELS = {
    "deb": "**Debian 12 and 13, Ubuntu: the .deb**",
    "rpm": "**Amazon Linux 2023, RHEL 9, Fedora: the rpm**",
    "tarball": "**Any systemd Linux with a `python3` (3.9 or newer): the tarball**",
}
APP_HEADING = "### 2. Put your app behind it"


def quick_start() -> str:
    """The README's quick start section, up to the next heading of its level."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n{SECTION}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end]


def _block_after(marker: str, language: str = "sh") -> str:
    section = quick_start()
    start = section.index(marker)
    match = re.compile(rf"```{language}\n(.*?)```", re.DOTALL).search(section, start)
    assert match is not None, f"no {language} block after {marker!r} in the README's quick start"
    return match.group(1)


def install_block(kind: str) -> str:
    """The README's install commands for `kind` (deb, rpm, tarball), as printed."""
    return _block_after(INSTALL_LABELS[kind])


def app_block() -> str:
    """The README's commands that put app.service behind the agent and show its journal line."""
    return _block_after(APP_HEADING)


def rendered_line() -> dict[str, object]:
    """The `rendered` journal line the README shows after the app block, parsed."""
    parsed = json.loads(_block_after(APP_HEADING, "json"))
    assert isinstance(parsed, dict)
    return parsed


def as_root_script(block: str) -> str:
    """A block as root runs it in a test container (no sudo there): `sudo ` dropped, `set -e` first."""
    return "set -e\n" + re.sub(r"(^|\| )sudo ", r"\1", block, flags=re.MULTILINE)
