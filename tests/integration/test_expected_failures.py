"""Conditions an operator causes or fixes never exit 1 ("a bug"): each has its exit code and a fix.

A missing or unusable state.json on `refresh`, a failing `systemctl` (a real executable stand-in on
PATH), an unreadable template, a full disk (a real 16 KiB tmpfs mounted for the test) and a read-only
SSM inventory folder (a real read-only bind mount).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest
from structlog.testing import capture_logs

from agent.commands.refresh import Systemd
from agent.config import load_agent_settings
from agent.errors import ConfigError, OutputError, StateError, SystemdError
from agent.observe.inventory import INVENTORY_FILE_NAME
from agent.observe.observed import publish_inventory
from tests.integration.cli_harness import Stack
from tests.integration.test_refresh import FakeSystemd

FAILING_SYSTEMCTL = """#!/bin/sh
echo "System has not been booted with systemd as init system (PID 1). Can't operate." >&2
exit 1
"""


def _refresh(host: Stack, systemd: Optional[Systemd] = None) -> tuple[int, str]:
    code, _out, err = host.run("refresh", "app", systemd=systemd)
    return code, err


@pytest.fixture
def host(stack: Stack) -> Stack:
    """The integration stack (config dir, tmpfs runtime dir, moto, fake IMDS) with app's template."""
    stack.template('DB={{ param("/app/db", default="x") }}\n')
    return stack


@pytest.fixture
def failing_systemctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `systemctl` first on PATH that prints systemd's own complaint and exits 1."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "systemctl"
    script.write_text(FAILING_SYSTEMCTL)
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    return script


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 16 KiB tmpfs mounted for the test (tests run as root), unmounted afterwards."""
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k,mode=0755", "tmpfs", str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def test_refresh_without_a_state_file_exits_10_and_says_to_start_the_app(host: Stack) -> None:
    """refresh of a running app the agent never rendered exits 10 saying to (re)start the app."""
    code, err = _refresh(host, FakeSystemd())
    assert code == StateError.exit_code == 10
    assert "not rendered by this agent yet" in err
    assert "`systemctl restart app.service`" in err


@pytest.mark.parametrize("kind", ["folder", "symlink"])
def test_refresh_with_an_unreadable_state_file_exits_10_with_the_fix(host: Stack, kind: str) -> None:
    """A state.json that is a folder or a symlink is refused with exit 10, saying to restart the app."""
    state = host.runtime.with_name(host.runtime.name + "-state") / "app" / "state.json"
    state.parent.mkdir(mode=0o700, parents=True)
    if kind == "folder":
        state.mkdir()
    else:
        state.symlink_to(host.runtime / "elsewhere.json")
        (host.runtime / "elsewhere.json").write_text("{}")
    code, err = _refresh(host, FakeSystemd())
    assert code == 10
    assert str(state) in err
    assert "restart the app once (`systemctl restart app.service`)" in err


def test_a_failing_systemctl_on_refresh_exits_9_naming_the_command(
    host: Stack, failing_systemctl: Path
) -> None:
    """refresh through a systemctl that fails exits 9 naming the systemctl command and what to do."""
    code, err = _refresh(host)
    assert code == SystemdError.exit_code == 9
    assert "`systemctl show --property=RequiredBy --value secrets-agent@app.service` failed" in err
    assert "has not been booted with systemd" in err
    assert "journalctl" in err


def test_a_failing_systemctl_on_enable_refresh_exits_9_saying_to_run_it(
    host: Stack, failing_systemctl: Path, tmp_path: Path
) -> None:
    """`enable --refresh --root IMAGE` whose `systemctl --root` fails exits 9 with the files in place."""
    root = tmp_path / "image"
    (root / "etc/systemd/system").mkdir(parents=True)
    code, _out, err = host.run("enable", "app", "--root", str(root), "--refresh", "5min")
    assert code == 9
    assert f"`systemctl --root={root} enable secrets-agent-refresh@app.timer` failed" in err
    assert "the files are in place; run it yourself" in err
    assert (root / "etc/systemd/system/secrets-agent-refresh@app.timer.d/interval.conf").is_file()


def test_an_unreadable_template_exits_2_naming_the_file_and_the_fix(host: Stack) -> None:
    """A template path that cannot be read (a folder) is exit 2 naming the file and how to fix it."""
    (host.config / "app.env.j2").unlink()
    (host.config / "app.env.j2").mkdir()
    code, _out, err = host.run("render", "app")
    assert code == ConfigError.exit_code == 2
    assert f"cannot read {host.config / 'app.env.j2'}" in err
    assert "make it a regular file the agent can read" in err
    assert not (host.runtime / "app" / "env").exists()


@pytest.mark.parametrize("fmt", ["env", "credentials"])
def test_a_full_tmpfs_exits_8_saying_it_is_full_and_leaves_nothing(
    host: Stack, tiny_tmpfs: Path, fmt: str
) -> None:
    """Rendering 32 KiB of values into a 16 KiB tmpfs is exit 8 saying it is full; no file is left."""
    lines = []
    for index in range(8):
        host.put(f"/app/big{index}", chr(ord("a") + index) * 4000, kind="String")
        lines.append(f'BIG{index}={{{{ param("/app/big{index}") }}}}\n')
    host.template("".join(lines))
    if fmt == "credentials":
        (host.config / "app.toml").write_text('format = "credentials"\n')
    code, _out, err = host.run("--runtime-dir", str(tiny_tmpfs), "render", "app")
    assert code == OutputError.exit_code == 8, err
    assert "No space left on device" in err
    assert f"the filesystem holding {tiny_tmpfs / 'app'} is full: free space on it" in err
    leftovers = [p.name for p in (tiny_tmpfs / "app").iterdir()] if (tiny_tmpfs / "app").exists() else []
    assert leftovers == []


def test_a_read_only_inventory_folder_is_one_warning_saying_to_reload_systemd(tmp_path: Path) -> None:
    """An SSM Agent inventory folder that is read-only (as one the units' sandbox does not grant yet,
    here a real read-only bind mount) is one inventory_not_written warning naming the fix,
    `systemctl daemon-reload`; a writable folder beside it is written (the control)."""
    ssm_dir = tmp_path / "ssm"
    granted, new = (
        ssm_dir / name / "inventory" / "custom" for name in ("i-0123456789abcdef0", "i-0fedcba987654321")
    )
    for folder in (granted, new):
        folder.mkdir(parents=True)
    subprocess.run(["mount", "--bind", "-o", "ro", str(new), str(new)], check=True)
    try:
        settings = load_agent_settings(
            {}, config_dir=str(tmp_path / "etc"), runtime_dir=str(tmp_path / "run")
        )
        with capture_logs() as logs:
            publish_inventory(settings, ssm_agent_dir=ssm_dir)
    finally:
        subprocess.run(["umount", str(new)], check=True)
    assert (granted / INVENTORY_FILE_NAME).is_file()
    assert not (new / INVENTORY_FILE_NAME).exists()
    (warning,) = logs
    assert (warning["event"], warning["log_level"]) == ("inventory_not_written", "warning")
    assert warning["path"] == str(new / INVENTORY_FILE_NAME)
    assert "read-only" in warning["error"]
    assert "run `systemctl daemon-reload`" in warning["error"]
