"""packaging/removal-guard, which the .deb's prerm and the rpm's %preun run on removal, against
small system roots: silent with nothing behind the agent, refusing (exit 1) and naming every unit
with the agent's drop-in and every enabled rotation timer otherwise, and warning with the same list
when told to remove anyway. Installing and removing the real packages: test_container_install.py
(the .deb) and test_selfcontained_install.py (the rpm)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.packaging.conftest import REPO

GUARD = REPO / "packaging" / "removal-guard"
UNITS = "etc/systemd/system"
DROPIN_LINE = (
    "  {unit}: its drop-in /etc/systemd/system/{unit}.d/secrets-agent.conf would make it fail to start"
)
TIMER_LINE = (
    "  secrets-agent-refresh@{name}.timer: enabled (in /etc/systemd/system/timers.target.wants), "
    "it would fail every 15 minutes"
)


def guard(root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the guard on `root` with the environment's PATH and `env`."""
    return subprocess.run(
        ["sh", str(GUARD), str(root)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"PATH": os.environ["PATH"], **env},
    )


def behind_the_agent(root: Path, unit: str) -> None:
    """The drop-in `secrets-agent enable` writes for UNIT."""
    dropin = root / UNITS / f"{unit}.d" / "secrets-agent.conf"
    dropin.parent.mkdir(parents=True, exist_ok=True)
    dropin.write_text("[Unit]\nRequires=secrets-agent@x.service\n")


def timer_enabled(root: Path, name: str) -> None:
    """The symlink `systemctl enable secrets-agent-refresh@NAME.timer` makes."""
    wants = root / UNITS / "timers.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / f"secrets-agent-refresh@{name}.timer").symlink_to(
        "/usr/lib/systemd/system/secrets-agent-refresh@.timer"
    )


def test_nothing_behind_the_agent_lets_the_removal_go_silently(tmp_path: Path) -> None:
    """No drop-in and no timer of the agent (other drop-ins and timers aside): exit 0, nothing said."""
    other = tmp_path / UNITS / "web.service.d" / "limits.conf"
    other.parent.mkdir(parents=True)
    other.write_text("[Service]\nLimitNOFILE=4096\n")
    (tmp_path / UNITS / "timers.target.wants").mkdir()
    (tmp_path / UNITS / "timers.target.wants" / "apt-daily.timer").symlink_to("/dev/null")

    result = guard(tmp_path)

    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_units_behind_the_agent_refuse_the_removal_and_are_each_named(tmp_path: Path) -> None:
    """Every unit with the agent's drop-in (a service named by --unit too) and every enabled
    rotation timer is listed, with what would break and how to proceed; exit 1."""
    behind_the_agent(tmp_path, "app.service")
    behind_the_agent(tmp_path, "worker@blue.service")
    timer_enabled(tmp_path, "app")

    result = guard(tmp_path)

    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert (
        lines[0] == "secrets-agent: refusing to remove the package: these units are still behind the agent:"
    )
    assert lines[1:4] == [
        DROPIN_LINE.format(unit="app.service"),
        DROPIN_LINE.format(unit="worker@blue.service"),
        TIMER_LINE.format(name="app"),
    ]
    assert "secrets-agent disable NAME" in result.stderr
    assert "SECRETS_AGENT_REMOVE_ANYWAY=1" in result.stderr


@pytest.mark.parametrize("value", ["0", "yes", ""])
def test_only_remove_anyway_1_overrides_the_refusal(tmp_path: Path, value: str) -> None:
    """SECRETS_AGENT_REMOVE_ANYWAY other than 1 still refuses."""
    behind_the_agent(tmp_path, "app.service")
    assert guard(tmp_path, SECRETS_AGENT_REMOVE_ANYWAY=value).returncode == 1


def test_remove_anyway_warns_with_the_same_list(tmp_path: Path) -> None:
    """With SECRETS_AGENT_REMOVE_ANYWAY=1 the removal goes on (exit 0), warning with every unit."""
    behind_the_agent(tmp_path, "app.service")
    timer_enabled(tmp_path, "app")

    result = guard(tmp_path, SECRETS_AGENT_REMOVE_ANYWAY="1")

    assert result.returncode == 0
    assert result.stderr.startswith("secrets-agent: WARNING: removing the package although these units")
    lines = result.stderr.splitlines()
    assert DROPIN_LINE.format(unit="app.service") in lines
    assert TIMER_LINE.format(name="app") in lines
