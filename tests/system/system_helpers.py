"""What the system tests share besides fixtures: the fakes' settings, the secret mark and the
test apps installed into the machine.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from typing import Any, Optional

import pytest
from nspawn import Machine

from agent.host.units import render_dropin

# The suite's one skip-or-fail rule (tests/prerequisites.py), importable from here as before.
from tests.prerequisites import skip_or_fail  # noqa: F401 - re-exported

REGION = "eu-west-1"
ROLE = "app-role"
# The machine shares the host's network, so the host's loopback is the machine's too.
LOOPBACK = "127.0.0.1"
# The agent unit stops after its app (the reverse of Before=), once `systemctl stop APP` has returned,
# then secrets-agent-clean@APP runs `secrets-agent clean` for the metrics and inventory files: this
# long at most for both.
AGENT_STOP_SECONDS = 10.0
# Every secret of the session (SSM values, IMDS credentials) carries this mark, so that one
# search of the machine's disk and journal finds a leak of any of them.
MARK = f"s3cr3t{secrets.token_hex(6)}"
APP_UNIT_TEMPLATE = """\
[Unit]
Description=Test app {name} that only holds its environment

[Service]
ExecStart=/bin/sleep infinity
"""


# How the agent gets into the machine: "deb" (the default, and what CI runs) builds the .deb with
# packaging/build-dist.sh and apt-get installs it, so the system tests prove the package Debian
# users get; "tarball" extracts the self-contained tarball instead (its launcher ignores the
# machine's python3-boto3 and the rest); "source" copies this tree's agent/ in, which saves the
# build while iterating.
INSTALL_ENV = "SECRETS_AGENT_SYSTEM_INSTALL"
INSTALL_MODES = ("deb", "tarball", "source")


def install_mode() -> str:
    """The install mode, "deb", "tarball" or "source", from SECRETS_AGENT_SYSTEM_INSTALL."""
    mode = os.environ.get(INSTALL_ENV, "deb")
    if mode not in INSTALL_MODES:
        raise pytest.UsageError(f"{INSTALL_ENV} must be one of {', '.join(INSTALL_MODES)}, not {mode!r}")
    return mode


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
        clean-up that follows to have finished (see AGENT_STOP_SECONDS): only then are its runtime
        folder, metrics file and inventory lines gone."""
        self.machine.systemctl("stop", self.unit)
        deadline = time.monotonic() + AGENT_STOP_SECONDS
        # PID 1 queues the clean-up's job in the same step that makes the agent unit inactive, so
        # once that is seen, an empty job list for the clean-up means it has run (or was skipped).
        while (
            self.machine.show(self.agent_unit, "ActiveState") not in ("inactive", "failed")
            or self.machine.text("systemctl", "list-jobs", "--no-legend", self.clean_unit).strip()
        ):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.agent_unit} and its clean-up did not finish within {AGENT_STOP_SECONDS} s"
                )
            time.sleep(0.05)

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


def install_app(machine: Machine, name: str, *, behind_agent: bool = True) -> App:
    """Install a `sleep infinity` unit NAME.service, with the agent's drop-in unless told not to."""
    units = machine.path("/etc/systemd/system")
    (units / f"{name}.service").write_text(APP_UNIT_TEMPLATE.format(name=name))
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
