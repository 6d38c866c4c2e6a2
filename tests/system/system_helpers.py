"""What the system tests share besides fixtures: the fakes' settings, the secret mark and the
test apps installed into the machine.
"""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass
from typing import Any, Optional

from nspawn import Machine

from agent.host.units import render_dropin

# The suite's one skip-or-fail rule (tests/prerequisites.py), importable from here as before.
from tests.prerequisites import skip_or_fail  # noqa: F401 - re-exported

REGION = "eu-west-1"
ROLE = "app-role"
# The machine shares the host's network, so the host's loopback is the machine's too.
LOOPBACK = "127.0.0.1"
# Every secret of the session (SSM values, IMDS credentials) carries this mark, so that one
# search of the machine's disk and journal finds a leak of any of them.
MARK = f"s3cr3t{secrets.token_hex(6)}"
APP_UNIT_TEMPLATE = """\
[Unit]
Description=Test app {name} that only holds its environment

[Service]
ExecStart=/bin/sleep infinity
"""
# The same app, which also records each reload in /run/NAME-reloads (App.reloads).
RELOADABLE_APP_UNIT_TEMPLATE = """\
[Unit]
Description=Test app {name} that records each reload

[Service]
ExecStart=/bin/sleep infinity
ExecReload=/bin/sh -c 'echo reloaded >> /run/{name}-reloads'
"""


@dataclass
class App:
    """One app unit behind the agent inside the machine, and the SSM path its parameters live under."""

    machine: Machine
    name: str
    prefix: str

    @property
    def unit(self) -> str:
        """The app's unit name."""
        return f"{self.name}.service"

    @property
    def agent_unit(self) -> str:
        """The agent instance the app's drop-in pulls in."""
        return f"secrets-agent@{self.name}.service"

    @property
    def refresh_unit(self) -> str:
        """The rotation check of the app (`enable --refresh`'s timer starts it)."""
        return f"secrets-agent-refresh@{self.name}.service"

    @property
    def reloads(self) -> str:
        """Where a reloadable app (install_app(..., reloadable=True)) records each reload, one line each."""
        return f"/run/{self.name}-reloads"

    @property
    def folder(self) -> str:
        """The app's runtime folder inside the machine."""
        return f"/run/secrets-agent/{self.name}"

    def write_template(self, text: str) -> None:
        """Write /etc/secrets-agent/NAME.env.j2 (0640 root, like `enable`'s starter)."""
        path = self.machine.path(f"/etc/secrets-agent/{self.name}.env.j2")
        path.write_text(text)
        path.chmod(0o640)

    def write_settings(self, text: str) -> None:
        """Write /etc/secrets-agent/NAME.toml."""
        self.machine.path(f"/etc/secrets-agent/{self.name}.toml").write_text(text)

    @property
    def clean_unit(self) -> str:
        """The clean-up the agent unit starts once it has stopped (metrics, inventory)."""
        return f"secrets-agent-clean@{self.name}.service"

    def stop(self) -> None:
        """`systemctl stop` the app, then wait for its agent unit to have stopped too and for the
        clean-up that follows to have finished (Machine.stop_app): only then are its runtime
        folder, metrics file and inventory lines gone."""
        self.machine.stop_app(self.name)

    def main_pid(self) -> int:
        """The app's main PID in the machine's PID namespace (0 when it does not run)."""
        return int(self.machine.show(self.unit, "MainPID"))

    def environ(self) -> dict[bytes, bytes]:
        """The running app's environment, byte for byte, from /proc/PID/environ inside the machine,
        read once the main process has exec'd the app (see Machine.exec_environ)."""
        return self.machine.exec_environ(self.unit)

    def exists(self, path: str) -> bool:
        """True if `path` exists inside the machine (its tmpfs mounts included)."""
        return self.machine.run("test", "-e", path, check=False).returncode == 0


def install_app(machine: Machine, name: str, *, behind_agent: bool = True, reloadable: bool = False) -> App:
    """Install a `sleep infinity` unit NAME.service, with the agent's drop-in unless told not to;
    a reloadable one records each `systemctl reload` in App.reloads."""
    units = machine.path("/etc/systemd/system")
    template = RELOADABLE_APP_UNIT_TEMPLATE if reloadable else APP_UNIT_TEMPLATE
    (units / f"{name}.service").write_text(template.format(name=name))
    if behind_agent:
        dropin = units / f"{name}.service.d" / "secrets-agent.conf"
        dropin.parent.mkdir(exist_ok=True)
        dropin.write_text(render_dropin(name))
    machine.daemon_reload()
    return App(machine=machine, name=name, prefix=f"/{name}-{secrets.token_hex(4)}")


def put(ssm: Any, name: str, value: str, *, tier: Optional[str] = None) -> None:
    """Create or overwrite a SecureString parameter in moto."""
    extra = {"Tier": tier} if tier else {}
    ssm.put_parameter(Name=name, Value=value, Type="SecureString", Overwrite=True, **extra)


def disk_files_with_mark(machine: Machine) -> str:
    """Every file of the machine's disk, as the host sees it (not its tmpfs mounts), that holds MARK,
    one path a line ("" when none)."""
    found = subprocess.run(
        ["grep", "-rlaF", "-D", "skip", "-e", MARK, str(machine.root)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert found.returncode in (0, 1), found.stderr
    return found.stdout
