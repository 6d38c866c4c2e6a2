"""Copy systemd/'s units and generator into cloud-init/user-data-wheel.yaml (which installs the wheel and
so writes them itself), ExecStart= running the venv's command: `python -m devtools.sync_user_data`.
tests/packaging/test_cloud_init_files.py fails until the copies match."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
USER_DATA = REPO / "cloud-init" / "user-data-wheel.yaml"
VENV_COMMAND = "/opt/secrets-agent/bin/secrets-agent"
UNITS = (
    "secrets-agent@.service",
    "secrets-agent-refresh@.service",
    "secrets-agent-refresh@.timer",
    "secrets-agent-clean@.service",
    "secrets-agent-stale@.timer",
)
GENERATOR = "secrets-agent-generator"
# Each file of systemd/ the user-data writes, and where: the units, and the generator in the
# folder systemd reads an administrator's generators from.
FILES = {
    **{unit: f"/etc/systemd/system/{unit}" for unit in UNITS},
    GENERATOR: f"/etc/systemd/system-generators/{GENERATOR}",
}
INDENT = " " * 6


def venv_commands(unit_text: str) -> str:
    """The unit with ExecStart= running the venv's command."""
    return unit_text.replace("ExecStart=/usr/bin/secrets-agent ", f"ExecStart={VENV_COMMAND} ")


def synced(text: str) -> str:
    """The user-data text with each unit's (and the generator's) `content: |` block replaced by
    systemd/'s file."""
    lines = text.splitlines(keepends=True)
    for unit, installed in FILES.items():
        start = lines.index(f"  - path: {installed}\n")
        content = next(i for i in range(start, len(lines)) if lines[i].strip() == "content: |")
        end = content + 1
        while end < len(lines) and (lines[end].startswith(INDENT) or lines[end].strip() == ""):
            end += 1
        while lines[end - 1].strip() == "":  # keep the blank lines that separate entries
            end -= 1
        body = (REPO / "systemd" / unit).read_text(encoding="utf-8")
        body = venv_commands(body)
        block = [INDENT + line if line.strip() else "\n" for line in body.splitlines(keepends=True)]
        lines[content + 1 : end] = block
    return "".join(lines)


if __name__ == "__main__":
    USER_DATA.write_text(synced(USER_DATA.read_text(encoding="utf-8")), encoding="utf-8")
