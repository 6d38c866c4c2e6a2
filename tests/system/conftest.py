"""Fixtures for the system tests: one booted Debian machine per release and session (the `release`
fixture of tests/conftest.py: Debian 12 and 13), with the agent installed and pointed at moto's
server and the fake IMDSv2 on the host's 127.0.0.1. See README.md here for how to add a test.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from moto.server import ThreadedMotoServer
from nspawn import (
    HostNotSuitable,
    Installer,
    Machine,
    Release,
    booted_machine,
    build_rootfs,
    ensure_host_tools,
    install_agent_from_source,
)
from system_helpers import LOOPBACK, MARK, REGION, ROLE, App, install_app, install_mode, skip_or_fail

from devtools.fakeimds import FakeImds
from devtools.netns import Pair, namespace_pair
from tests.integration.moto_server import admin_ssm_client
from tests.packaging.dist import BuildUnavailable, built_artefacts
from tests.packaging.machine import install_agent_from_deb, install_agent_from_tarball


@dataclass
class Timings:
    """Seconds spent in the phases of the session, printed at its end."""

    phases: dict[str, float] = field(default_factory=dict)


TIMINGS = Timings()


def _installer() -> Installer:
    if install_mode() == "source":
        return install_agent_from_source
    started = time.monotonic()
    try:
        artefacts = built_artefacts()
    except BuildUnavailable as exc:
        skip_or_fail(str(exc))
    TIMINGS.phases["dist"] = time.monotonic() - started
    if install_mode() == "tarball":
        return install_agent_from_tarball(artefacts.tarball)
    return install_agent_from_deb(artefacts.deb)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Report where the system tests spent their time (build, copy, boot, poweroff)."""
    if TIMINGS.phases:
        shown = ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in TIMINGS.phases.items())
        terminalreporter.write_line(f"system machine: {shown}")


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """moto's server on the host's 127.0.0.1, which the machine reaches through the shared network."""
    server = ThreadedMotoServer(ip_address=LOOPBACK, port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def imds() -> Iterator[FakeImds]:
    """The strict IMDSv2 fake the agent gets its role credentials and region from."""
    with FakeImds(
        host=LOOPBACK,
        region=REGION,
        role=ROLE,
        secret_access_key=f"imds-secret-key-{MARK}",
        session_token=f"imds-session-token-{MARK}",
    ) as fake:
        yield fake


@pytest.fixture(scope="session")
def ssm(moto_url: str) -> Any:
    """A boto3 SSM client on moto, for the tests to create and change parameters."""
    return admin_ssm_client(moto_url, REGION)


def _endpoints_dropin(imds_url: str, moto_url: str) -> str:
    return (
        "# Test only: the agent talks to the fakes on the host's loopback instead of AWS.\n"
        "[Service]\n"
        f"Environment=AWS_EC2_METADATA_SERVICE_ENDPOINT={imds_url}\n"
        f"Environment=AWS_ENDPOINT_URL_SSM={moto_url}\n"
        f"Environment=AWS_ENDPOINT_URL_SECRETS_MANAGER={moto_url}\n"
        f"Environment=AWS_REGION={REGION}\n"
    )


@pytest.fixture(scope="session")
def machine(release: Release, moto_url: str, imds: FakeImds) -> Iterator[Machine]:
    """A booted machine of `release` with the agent installed, for the whole session: every test
    that uses it runs once per release."""
    try:
        ensure_host_tools()
        started = time.monotonic()
        rootfs = build_rootfs(log=lambda _line: None, release=release)
        TIMINGS.phases[f"{release.suite} rootfs"] = time.monotonic() - started
    except HostNotSuitable as exc:
        skip_or_fail(str(exc))

    def point_at_fakes(root: Path) -> None:
        for unit in ("secrets-agent@.service", "secrets-agent-refresh@.service"):
            dropin = root / f"etc/systemd/system/{unit}.d/test.conf"
            dropin.parent.mkdir(parents=True, exist_ok=True)
            dropin.write_text(_endpoints_dropin(imds.url, moto_url))
        (root / "etc/secrets-agent").mkdir(mode=0o755, exist_ok=True)

    assert rootfs.is_dir()
    install = _installer()
    with booted_machine(install=install, prepare=point_at_fakes, release=release) as booted:
        TIMINGS.phases.update({f"{release.suite} {phase}": took for phase, took in booted.timings.items()})
        yield booted
        poweroff_started = time.monotonic()
    TIMINGS.phases[f"{release.suite} poweroff"] = time.monotonic() - poweroff_started


@pytest.fixture(scope="module")
def netns_machine(release: Release, moto_url: str) -> Iterator[tuple[Machine, Pair]]:
    """A second machine of `release`, booted in a network namespace of its own wired only to a
    namespace of fakes (devtools/netns.py): no route to the host, 169.254.169.254 or AWS, and no
    endpoint setting at all; the test wires IPv6-only or IPv4-only and starts the fakes there."""
    try:
        ensure_host_tools()
        build_rootfs(log=lambda _line: None, release=release)
    except HostNotSuitable as exc:
        skip_or_fail(str(exc))

    def no_settings(root: Path) -> None:
        (root / "etc/secrets-agent").mkdir(mode=0o755, exist_ok=True)

    started = time.monotonic()
    with (
        namespace_pair(f"{release.suite[:4]}{os.getpid() % 100000}") as pair,
        booted_machine(
            install=_installer(),
            prepare=no_settings,
            release=release,
            network_namespace_path=pair.machine_path,
        ) as booted,
    ):
        TIMINGS.phases[f"{release.suite} netns machine boot"] = time.monotonic() - started
        yield booted, pair


@pytest.fixture
def new_app(machine: Machine) -> Iterator[Any]:
    """A factory of app units for one test; they are stopped and their failures reset afterwards."""
    apps: list[App] = []

    def make(name: str, *, behind_agent: bool = True) -> App:
        app = install_app(machine, name, behind_agent=behind_agent)
        apps.append(app)
        return app

    yield make
    for app in apps:
        machine.systemctl("stop", app.unit, app.agent_unit, check=False)
        machine.systemctl("reset-failed", app.unit, app.agent_unit, check=False)
