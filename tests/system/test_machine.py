"""The harness itself: each release's machine boots under its own systemd with what the agent needs."""

from __future__ import annotations

import secrets
from typing import Callable

import pytest
from nspawn import START_LIMIT_BURST, Machine, Release, build_rootfs, install_mode
from system_helpers import App

from agent import __version__

pytestmark = pytest.mark.system


def test_machine_runs_its_releases_systemd_with_run_on_tmpfs(machine: Machine, release: Release) -> None:
    """The machine is a booted Debian of the session's release, under that release's systemd (252
    on Debian 12, 257 on 13), whose /run, where the secrets go, is tmpfs."""
    assert machine.release.suite == release.suite
    # "degraded" (exit 1) when a unit an earlier test left has failed: still a booted machine.
    state = machine.text("systemctl", "is-system-running", check=False).strip()
    failed = machine.text("systemctl", "list-units", "--failed", "--no-legend", "--plain")
    assert state in ("running", "degraded"), f"{state}: {failed}"
    assert machine.text("systemctl", "--version").split()[1] == str(release.systemd)
    assert machine.text("stat", "-f", "-c", "%T", "/run").strip() == "tmpfs"
    assert machine.text("cat", "/etc/debian_version").startswith(f"{release.number}.")


def test_machine_has_the_agent_and_its_debian_dependencies(machine: Machine, release: Release) -> None:
    """The release's python3 imports the agent, and boto3, requests, jinja2 and structlog are the
    release's own packages."""
    packages = [package for package, _ in release.libraries]
    versions = dict(
        line.split()
        for line in machine.text("dpkg-query", "-W", "-f", "${Package} ${Version}\n", *packages).splitlines()
    )
    for package, prefix in release.libraries:
        assert versions[package].startswith(prefix), (package, versions[package])
    if install_mode() == "source":
        python = machine.text("python3", "-c", "import sys, agent.cli; print('%d.%d' % sys.version_info[:2])")
        assert python.strip() == release.python
    else:
        # The .deb's and the tarball's agent live in the private folder /usr/lib/secrets-agent (Debian's
        # Python policy for a program's modules): the release's python3 does not see it on its own...
        assert machine.run("python3", "-c", "import agent", check=False).returncode != 0
        if install_mode() == "deb":
            # ...but runs it from there, with the release's own libraries.
            python = machine.text(
                "python3", "-c",
                "import sys; sys.path.insert(0, '/usr/lib/secrets-agent'); import agent.cli; "
                "print('%d.%d' % sys.version_info[:2])",
            )  # fmt: skip
            assert python.strip() == release.python
    assert machine.text("secrets-agent", "--version").startswith("secrets-agent ")


def test_machine_runs_the_agent_as_installed(machine: Machine) -> None:
    """By default the machine's agent is the .deb, installed by apt-get: dpkg owns the command
    and the unit, and its version is this tree's. SECRETS_AGENT_SYSTEM_INSTALL=source copies
    the tree in instead, and =tarball extracts the self-contained tarball: dpkg knows nothing of
    either."""
    owners = machine.run(
        "dpkg-query", "-S", "/usr/bin/secrets-agent", "/lib/systemd/system/secrets-agent@.service",
        check=False,
    )  # fmt: skip
    if install_mode() == "tarball":
        assert machine.text("cat", "/usr/lib/secrets-agent/VERSION").strip() == __version__
    if install_mode() in ("source", "tarball"):
        assert owners.returncode != 0
        return
    assert owners.returncode == 0, owners.stderr
    assert [line.split(":")[0] for line in owners.stdout.decode().splitlines()] == ["secrets-agent"] * 2
    status = machine.text("dpkg-query", "-W", "-f", "${Status} ${Version}", "secrets-agent")
    assert status == f"install ok installed {__version__}"


def test_machine_lets_a_unit_start_more_than_five_times_in_ten_seconds(
    machine: Machine, new_app: Callable[..., App]
) -> None:
    """The machine's systemd start limit is raised (nspawn.raise_start_limit): an app restarts
    eight times in a row with no pause, where systemd's default refuses the 6th."""
    app = new_app("startlimit", behind_agent=False)
    assert machine.show(app.unit, "StartLimitBurst") == str(START_LIMIT_BURST)
    for _ in range(8):
        machine.systemctl("restart", app.unit)
    assert machine.show(app.unit, "ActiveState") == "active"


def test_machine_changes_never_reach_the_cached_root(machine: Machine, release: Release) -> None:
    """A file the machine writes lands in its own copy of the root (an overlay, nspawn.writable_copy),
    never in the cached root file system that every session's machines start from."""
    cached = build_rootfs(log=lambda _line: None, release=release)
    marker = f"/etc/secrets-agent-copy-{secrets.token_hex(4)}"
    machine.run("touch", marker)
    try:
        assert machine.path(marker).exists()
        assert (cached / "etc/os-release").exists()  # the right folder: a file it does hold shows
        assert not (cached / marker.lstrip("/")).exists()
    finally:
        machine.run("rm", "-f", marker)
