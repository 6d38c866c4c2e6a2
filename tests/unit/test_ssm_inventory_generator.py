"""systemd/secrets-agent-generator, run on folders of a test root (its ROOT argument): which SSM Agent
inventory folders it grants the agent's units, and that no folder name reaches a unit but an
instance id. Under real systemd: tests/system/test_status_under_systemd.py."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Optional

import pytest

from agent.observe.inventory import custom_inventory_folders

REPO = Path(__file__).resolve().parents[2]
GENERATOR = REPO / "systemd" / "secrets-agent-generator"
UNITS = ("secrets-agent@.service", "secrets-agent-refresh@.service", "secrets-agent-clean@.service")
DROPIN = "secrets-agent-ssm-inventory.conf"
SSM_DIR = "var/lib/amazon/ssm"
ASSET_TAG = "sys/devices/virtual/dmi/id/board_asset_tag"
GRANT = re.compile(r"ReadWritePaths=-/var/lib/amazon/ssm/([^/]+)/inventory/custom")
# Folder names in /var/lib/amazon/ssm: True where the name is an instance id.
FOLDER_NAMES = {
    "i-0123456789abcdef0": True,
    "mi-0123456789abcdef0": True,
    "i-01234567": True,
    "i-" + "f" * 32: True,
    "i-0123456": False,
    "i-" + "f" * 33: False,
    "i-0123456789ABCDEF0": False,
    "I-0123456789abcdef0": False,
    "xi-0123456789abcdef0": False,
    "mmi-0123456789abcdef0": False,
    "i-0123456789abcdeg0": False,
    "i-0123456789abcdef0\n": False,
    "i-0123456789abcdef0 -%etc": False,
    "i-0123456789abcdef0\nReadWritePaths=-%etc": False,
    "i-0123456789abcdef0.bak": False,
    "i-*": False,
    "ipc": False,
    "registration": False,
}


def _generate(root: Path, tmp_path: Path) -> Optional[dict[str, str]]:
    """Run the generator with `root` as the machine's root; each unit's drop-in text (None: none)."""
    out = tmp_path / "normal"
    result = subprocess.run(
        ["sh", str(GENERATOR), str(out), str(tmp_path / "early"), str(tmp_path / "late"), str(root)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    if not out.exists():
        return None
    written = {path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file()}
    assert written == {f"{unit}.d/{DROPIN}" for unit in UNITS}
    return {unit: (out / f"{unit}.d" / DROPIN).read_text(encoding="utf-8") for unit in UNITS}


def _granted(dropins: Optional[dict[str, str]]) -> list[str]:
    """The instance ids the drop-ins grant, the same in all three units; every line is a comment,
    [Service] or a grant."""
    if dropins is None:
        return []
    texts = set(dropins.values())
    assert len(texts) == 1
    lines = texts.pop().splitlines()
    assert lines[2] == "[Service]"
    assert all(line.startswith("#") for line in lines[:2])
    granted = [GRANT.fullmatch(line) for line in lines[3:]]
    assert all(granted), lines
    return [match.group(1) for match in granted if match]


def test_the_generator_grants_exactly_the_folders_the_agent_writes(tmp_path: Path) -> None:
    """Of every folder in /var/lib/amazon/ssm, the generator grants exactly those named like an
    instance id, the ones the agent writes inventory into: no other name, however spelled, is
    written into a unit."""
    root = tmp_path / "root"
    for name in FOLDER_NAMES:
        (root / SSM_DIR / name / "inventory" / "custom").mkdir(parents=True)
    granted = _granted(_generate(root, tmp_path))
    assert sorted(granted) == sorted(name for name, is_id in FOLDER_NAMES.items() if is_id)
    agent_writes = [p.parent.parent.name for p in custom_inventory_folders(root / SSM_DIR)]
    assert sorted(granted) == agent_writes


def test_the_generator_skips_links_and_files_and_writes_nothing_without_an_id(tmp_path: Path) -> None:
    """A symlink or a plain file named like an instance id is not granted; with no id found (no SSM
    Agent folder, no board asset tag) no drop-in is written at all."""
    root = tmp_path / "root"
    assert _generate(root, tmp_path) is None
    (root / SSM_DIR).mkdir(parents=True)
    (root / "elsewhere").mkdir()
    (root / SSM_DIR / "i-0123456789abcdef0").symlink_to(root / "elsewhere")
    (root / SSM_DIR / "i-0123456789abcdef1").write_text("")
    assert _generate(root, tmp_path) is None
    (root / SSM_DIR / "i-0123456789abcdef2").mkdir()  # the control: a real folder is granted
    assert _granted(_generate(root, tmp_path)) == ["i-0123456789abcdef2"]


@pytest.mark.parametrize(
    ("tag", "granted"),
    [
        ("i-0aaaaaaaaaaaaaaaa\n", ["i-0aaaaaaaaaaaaaaaa"]),
        ("  i-0aaaaaaaaaaaaaaaa  \n", ["i-0aaaaaaaaaaaaaaaa"]),
        ("i-0aaaaaaaaaaaaaaaa", ["i-0aaaaaaaaaaaaaaaa"]),
        ("i-0123456789abcdef0\n", ["i-0123456789abcdef0"]),  # also a folder: granted once
        ("mi-0aaaaaaaaaaaaaaaa\n", []),  # never an EC2 instance's tag
        ("Not Specified\n", []),
        ("i-0AAAAAAAAAAAAAAAA\n", []),
        ("i-0aaaaaaaaaaaaaaaa -/etc\n", []),
        ("\n", []),
        ("", []),
        (None, []),
    ],
)
def test_the_generator_grants_the_instance_id_of_the_board_asset_tag(
    tmp_path: Path, tag: Optional[str], granted: list[str]
) -> None:
    """A Nitro instance's id in the board asset tag is granted before the SSM Agent makes its
    folder, beside the folders there are; anything else there is ignored."""
    root = tmp_path / "root"
    (root / SSM_DIR / "i-0123456789abcdef0").mkdir(parents=True)
    if tag is not None:
        (root / ASSET_TAG).parent.mkdir(parents=True)
        (root / ASSET_TAG).write_text(tag)
    found = _granted(_generate(root, tmp_path))
    assert found == ["i-0123456789abcdef0", *[i for i in granted if i != "i-0123456789abcdef0"]]
