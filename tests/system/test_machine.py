"""The harness itself: the Debian 12 machine boots under systemd 252 with what the agent needs."""

from __future__ import annotations

import pytest
from nspawn import Machine
from system_helpers import install_mode

from agent import __version__

pytestmark = pytest.mark.system


def test_machine_runs_systemd_252_with_run_on_tmpfs(machine: Machine) -> None:
    """The machine is a booted systemd 252 whose /run, where the secrets go, is tmpfs."""
    assert machine.text("systemctl", "is-system-running").strip() in ("running", "degraded")
    assert machine.text("systemctl", "--version").split()[1] == "252"
    assert machine.text("stat", "-f", "-c", "%T", "/run").strip() == "tmpfs"


def test_machine_has_the_agent_and_its_debian_dependencies(machine: Machine) -> None:
    """Debian 12's python3 imports the agent and boto3, requests, jinja2 and structlog."""
    out = machine.text(
        "python3",
        "-c",
        "import boto3, jinja2, requests, structlog, agent.cli; "
        "print(boto3.__version__, jinja2.__version__, requests.__version__, structlog.__version__)",
    )
    boto3_version, jinja2_version, requests_version, structlog_version = out.split()
    assert boto3_version.startswith("1.26.")
    assert jinja2_version == "3.1.2"
    assert requests_version.startswith("2.28.")
    assert structlog_version.startswith("22.")
    assert machine.text("secrets-agent", "--version").startswith("secrets-agent ")


def test_machine_runs_the_agent_as_installed(machine: Machine) -> None:
    """By default the machine's agent is the .deb, installed by apt-get: dpkg owns the command
    and the unit, and its version is this tree's. SECRETS_AGENT_SYSTEM_INSTALL=source copies
    the tree in instead, and dpkg knows nothing of it."""
    owners = machine.run(
        "dpkg-query", "-S", "/usr/bin/secrets-agent", "/lib/systemd/system/secrets-agent@.service",
        check=False,
    )  # fmt: skip
    if install_mode() == "source":
        assert owners.returncode != 0
        return
    assert owners.returncode == 0, owners.stderr
    assert [line.split(":")[0] for line in owners.stdout.decode().splitlines()] == ["secrets-agent"] * 2
    status = machine.text("dpkg-query", "-W", "-f", "${Status} ${Version}", "secrets-agent")
    assert status == f"install ok installed {__version__}"
