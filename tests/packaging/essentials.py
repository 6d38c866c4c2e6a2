"""What every way of installing the agent must do under a real systemd, checked in one booted
machine whose agent talks to a ClosedWorld (tests/packaging/closed_network.py): an app's
environment byte for byte, credentials (or their clear refusal before systemd 251), a rotation by
the refresh timer's unit, and nothing left once the app stops. Shared by the tarball's and the
rpm's tests, so that each proves the same things as the .deb's system tests, in one boot.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from pathlib import Path

from tests.hard_values import hard_values, template_lines, tier_for
from tests.packaging.closed_network import ClosedWorld
from tests.packaging.machine import Machine, run

MARK = f"s3cr3t{secrets.token_hex(6)}"
HARD_VALUES = hard_values(MARK)
SLEEPING_APP = "[Service]\nExecStart=/bin/sleep infinity\n"
# A DynamicUser= app that prints the sha256 of each credential it can read, then idles.
CREDENTIALS_APP = """\
[Service]
DynamicUser=yes
ExecStart=/bin/sh -c 'cd "$CREDENTIALS_DIRECTORY" && sha256sum -- * && echo ready && exec sleep infinity'
"""
CREDENTIALS_MIN_SYSTEMD = 251
READY_TIMEOUT_SECONDS = 30.0


def write(root: Path, path: str, content: str, mode: int = 0o644) -> None:
    """Write a file into a machine's root from the host."""
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(content, encoding="utf-8")
    target.chmod(mode)


def put_all(world: ClosedWorld, prefix: str, values: dict[str, str]) -> None:
    """Put each value as a SecureString under `prefix`, as the administrator."""
    for key, value in values.items():
        world.iam.put(f"{prefix}/{key}", value, **tier_for(value))


def assert_app_gets_every_value_then_a_rotation_then_nothing_left(
    machine: Machine, world: ClosedWorld
) -> None:
    """`enable hard --refresh`, start: the app's environment holds every hard value byte for byte;
    a changed value and a run of the refresh unit restart it with the new value; stopping it
    removes the rendered folder."""
    prefix = f"/hard-{secrets.token_hex(4)}"
    put_all(world, prefix, HARD_VALUES)
    write(machine.root, "/etc/secrets-agent/hard.env.j2", template_lines(prefix, HARD_VALUES), 0o640)
    write(machine.root, "/etc/systemd/system/hard.service", SLEEPING_APP)
    run(machine, "secrets-agent", "enable", "hard", "--refresh")
    run(machine, "systemctl", "start", "hard.service")
    environment = machine.exec_environ("hard.service")
    assert {key: environment.get(key.encode(), b"").decode() for key in HARD_VALUES} == HARD_VALUES
    assert b"EVIL" not in environment
    assert b"EVIL_TOO" not in environment
    assert (
        run(machine, "systemctl", "is-active", "secrets-agent-refresh@hard.timer").stdout.strip() == "active"
    )

    rotated = f"rotated {MARK} $x 'q'"
    put_all(world, prefix, {"DOLLARS": rotated})
    before = machine.show("hard.service", "MainPID")
    cursor = machine.journal_cursor()
    run(machine, "systemctl", "start", "secrets-agent-refresh@hard.service")
    assert "refresh_changed" in machine.journal(after=cursor, unit="secrets-agent-refresh@hard.service")
    assert machine.show("hard.service", "MainPID") != before
    assert machine.exec_environ("hard.service")[b"DOLLARS"] == rotated.encode()

    stop_app(machine, "hard")
    assert machine.show("secrets-agent@hard.service", "ActiveState") == "inactive"
    assert run(machine, "test", "-e", "/run/secrets-agent/hard", check=False).returncode == 1
    journal = machine.journal(unit="secrets-agent@hard.service")
    assert MARK not in journal


# The agent unit stops after its app once `systemctl stop APP` has returned, then
# secrets-agent-clean@APP runs `secrets-agent clean`: this long at most for both.
AGENT_STOP_SECONDS = 10.0


def stop_app(machine: Machine, name: str) -> None:
    """`systemctl stop NAME.service`, then wait for secrets-agent@NAME to have stopped too and its
    clean-up (queued in the same step) to have run."""
    run(machine, "systemctl", "stop", f"{name}.service")
    deadline = time.monotonic() + AGENT_STOP_SECONDS
    clean = f"secrets-agent-clean@{name}.service"
    while (
        machine.show(f"secrets-agent@{name}.service", "ActiveState") not in ("inactive", "failed")
        or run(machine, "systemctl", "list-jobs", "--no-legend", clean).stdout.strip()
    ):
        if time.monotonic() > deadline:
            raise AssertionError(f"secrets-agent@{name}.service did not stop within {AGENT_STOP_SECONDS} s")
        time.sleep(0.05)


def assert_credentials_reach_a_dynamic_user_app(machine: Machine, world: ClosedWorld) -> None:
    """`enable creds --credentials`: a DynamicUser= app reads each value exactly from
    $CREDENTIALS_DIRECTORY and both copies are gone when it stops. Before systemd 251 the agent
    refuses `--credentials` with its clear message and writes nothing."""
    write(machine.root, "/etc/systemd/system/creds.service", CREDENTIALS_APP)
    if machine.release.systemd < CREDENTIALS_MIN_SYSTEMD:
        refused = run(machine, "secrets-agent", "enable", "creds", "--credentials", check=False)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert f"--credentials needs {CREDENTIALS_MIN_SYSTEMD} or newer" in refused.stderr
        assert not (machine.root / "etc/systemd/system/creds.service.d").exists()
        assert not (machine.root / "etc/secrets-agent/creds.env.j2").exists()
        return
    prefix = f"/creds-{secrets.token_hex(4)}"
    values = {key: HARD_VALUES[key] for key in ("NEWLINES", "NON_ASCII", "EIGHT_KB", "INJECTION")}
    put_all(world, prefix, values)
    run(machine, "secrets-agent", "enable", "creds", "--credentials")
    write(machine.root, "/etc/secrets-agent/creds.env.j2", template_lines(prefix, values), 0o640)
    cursor = machine.journal_cursor()
    run(machine, "systemctl", "start", "creds.service")
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while "ready" not in (lines := machine.journal(after=cursor, unit="creds.service").splitlines()):
        assert time.monotonic() < deadline, lines
        time.sleep(0.2)
    # sha256sum's lines among systemd's own about the unit.
    read = {match[2]: match[1] for line in lines if (match := re.fullmatch(r"([0-9a-f]{64})  (\S+)", line))}
    expected = {f"secrets_{key}": hashlib.sha256(value.encode()).hexdigest() for key, value in values.items()}
    assert read == expected, lines
    stop_app(machine, "creds")
    assert run(machine, "test", "-e", "/run/secrets-agent/creds", check=False).returncode == 1
    assert run(machine, "test", "-e", "/run/credentials/creds.service", check=False).returncode == 1


def assert_no_network_for_apt_or_pip(machine: Machine) -> None:
    """The machine has no pip, and neither Debian's archive nor PyPI nor AWS answer from it."""
    assert run(machine, "python3", "-m", "pip", "--version", check=False).returncode != 0
    probe = (
        "import socket, sys\n"
        "for host in sys.argv[1:]:\n"
        "    try:\n"
        "        socket.create_connection((host, 443), timeout=5).close()\n"
        "    except OSError:\n"
        "        continue\n"
        "    sys.exit(host + ' answered')\n"
    )
    hosts = ("deb.debian.org", "pypi.org", "ssm.eu-west-1.amazonaws.com", "151.101.0.223")
    result = run(machine, "python3", "-c", probe, *hosts, check=False)
    assert result.returncode == 0, result.stderr
