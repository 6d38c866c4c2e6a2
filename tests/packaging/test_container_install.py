"""The .deb and the wheel as they are used, in booted containers of each Debian release the .deb runs
on (12 and 13, the `release` fixture): apt-get install, purge, cloud-init's first boot from a
NoCloud seed, and an AMI bake after which the image holds no secret. The wheel's first boot also runs
on Debian 11, whose python3 is 3.9 like Amazon Linux 2023's."""

from __future__ import annotations

import contextlib
import functools
import http.server
import secrets
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import boto3
import pytest

from devtools.fakeimds import FakeImds
from devtools.systemd_envfile import parse_env
from tests.hard_values import hard_values, template_lines, tier_for
from tests.integration.moto_server import RecordingProxy
from tests.packaging.conftest import REPO, Artefacts, skip_unless_root
from tests.packaging.machine import (
    APP_TEMPLATE,
    APP_UNIT,
    APT_TIMEOUT_SECONDS,
    InstalledDeb,
    Machine,
    booted,
    fresh_rootfs,
    run,
    write,
)
from tests.packaging.test_cloud_init_files import USER_DATA, USER_DATA_WHEEL, with_location
from tests.system import nspawn
from tests.system.nspawn import BULLSEYE, MachinePool, Release

pytestmark = pytest.mark.system

REGION = "eu-west-1"
CLOUD_INIT_TIMEOUT_SECONDS = 300


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    skip_unless_root("booting containers with systemd-nspawn")


@dataclass
class Fakes:
    """The AWS side on the host's 127.0.0.1, which the containers share: IMDS, and SSM behind a recorder."""

    imds: FakeImds
    ssm: RecordingProxy
    values: dict[str, str]
    client: Any

    def agent_toml(self) -> str:
        """agent.toml that points a container's agent at the fakes instead of AWS."""
        return f'imds_endpoint = "{self.imds.url}"\nssm_endpoint = "{self.ssm.url}"\n'

    def secret_bytes(self) -> list[bytes]:
        return [value.encode() for value in self.values.values()]


@contextlib.contextmanager
def made_fakes(moto_url: str, region: str = REGION) -> Iterator[Fakes]:
    """Fresh secret values in moto's `region`, the IMDS fake of that region and a recording proxy in
    front of moto. moto keeps each region's parameters apart, so machines booting side by side
    with fakes of different regions each read their own values."""
    values = {
        "/app/prod/DATABASE_URL": f"postgres://app:{secrets.token_hex(16)}@db:5432/app",
        "/app/prod/API_TOKEN": f"tok-{secrets.token_hex(20)}",
    }
    client = boto3.client(
        "ssm", region_name=region, endpoint_url=moto_url, aws_access_key_id="t", aws_secret_access_key="t"
    )
    for name, value in values.items():
        client.put_parameter(Name=name, Value=value, Type="SecureString", Overwrite=True)
    imds = FakeImds(region=region, role="app-role")
    imds.start()
    try:
        with RecordingProxy(moto_url) as proxy:
            yield Fakes(imds=imds, ssm=proxy, values=values, client=client)
    finally:
        imds.stop()


@pytest.fixture
def fakes(moto_url: str) -> Iterator[Fakes]:
    """Fresh secret values in moto, the IMDS fake and a recording proxy in front of moto."""
    with made_fakes(moto_url) as made:
        yield made


class _RecordingFileHandler(http.server.SimpleHTTPRequestHandler):
    requested: list[str]

    def do_GET(self) -> None:
        self.requested.append(self.path)
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serving_dist(artefacts: Artefacts) -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on 127.0.0.1 serving dist/; yields its URL and the paths requested."""
    requested: list[str] = []
    handler = functools.partial(
        type("Handler", (_RecordingFileHandler,), {"requested": requested}), directory=str(artefacts.folder)
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requested
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class FirstBoot:
    """A fresh cloud-init root booted with a user-data in its NoCloud seed, its fakes (a region of
    their own) and the paths its package server was asked for. Its first boot starts ahead of its
    test (see `first_boots`); the test waits for it with first_boot_output()."""

    machine: Machine
    fakes: Fakes
    requested: list[str]


# The first boots the tests below check: a test's name -> the user-data it boots ("deb" or
# "wheel") and its release (None: the test's `release`).
FIRST_BOOT_OF_TEST: dict[str, tuple[str, Optional[Release]]] = {
    "test_cloud_init_first_boot_installs_the_deb_and_starts_the_app": ("deb", None),
    "test_cloud_init_first_boot_installs_the_wheel_in_a_venv_and_starts_the_app": ("wheel", None),
    "test_wheel_user_data_boots_debian_11_with_python_39": ("wheel", BULLSEYE),
}
# One region each (moto keeps regions apart), none the other tests' REGION.
FIRST_BOOT_REGIONS = {
    (kind, suite): region
    for (kind, suite), region in zip(
        [(kind, suite) for kind in ("deb", "wheel") for suite in ("bookworm", "trixie", "bullseye")],
        ("eu-west-2", "eu-west-3", "eu-central-1", "eu-north-1", "us-east-2", "us-west-2"),
        strict=True,
    )
}


@contextlib.contextmanager
def first_boot(kind: str, release: Release, artefacts: Artefacts, moto_url: str) -> Iterator[FirstBoot]:
    """Boot a fresh cloud-init root of `release` with the .deb's ("deb") or the wheel's ("wheel")
    user-data, its package on a local server, and its own fakes; removed after."""
    package = artefacts.deb if kind == "deb" else artefacts.wheel
    region = FIRST_BOOT_REGIONS[(kind, release.suite)]
    nspawn.WORK_ROOT.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="secrets-agent-packaging-", dir=nspawn.WORK_ROOT))
    try:
        with made_fakes(moto_url, region) as fakes, serving_dist(artefacts) as (url, requested):
            root = fresh_rootfs(folder / "root", cloud_init=True, release=release)
            user_data = USER_DATA if kind == "deb" else USER_DATA_WHEEL
            seeded = with_location(user_data, f"{url}/{package.name}")
            write(root, "/var/lib/cloud/seed/nocloud/user-data", seeded)
            instance = "iid-secrets-agent-test" if kind == "deb" else "iid-secrets-agent-wheel"
            write(root, "/var/lib/cloud/seed/nocloud/meta-data", f"instance-id: {instance}\n")
            # The test's stand-in for EC2's IMDS and SSM; on EC2 no agent.toml is needed.
            write(root, "/etc/secrets-agent/agent.toml", fakes.agent_toml())
            if kind == "wheel":
                # Test only: this machine reaches PyPI through its own CA, whose bundle the harness copied in.
                write(root, "/etc/pip.conf", "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")
            name = f"sa-pkg-{'cloud' if kind == 'deb' else 'wheel'}-{release.suite}"
            # Booted means cloud-init's user-data ran: a first boot's bound, as first_boot_output's.
            with booted(
                root, name, timeout=nspawn.BOOT_TIMEOUT_SECONDS + CLOUD_INIT_TIMEOUT_SECONDS
            ) as machine:
                yield FirstBoot(machine, fakes, requested)
    finally:
        nspawn.remove_copies(folder)


def _start_first_boot(
    pool: MachinePool, kind: str, release: Release, artefacts: Artefacts, moto_url: str
) -> tuple[str, str, str]:
    key = ("first-boot", kind, release.suite)
    pool.start(key, lambda: first_boot(kind, release, artefacts, moto_url))
    return key


@pytest.fixture(scope="module", autouse=True)
def _first_boots_ahead(
    request: pytest.FixtureRequest, artefacts: Artefacts, moto_url: str, machine_pool: MachinePool
) -> None:
    """Start every first boot the session's tests here check, side by side, as the module begins:
    each waits on apt, pip and cloud-init inside its machine, not on this host, while the tests
    before it run."""
    for item in request.session.items:
        kind, fixed = FIRST_BOOT_OF_TEST.get(getattr(item, "originalname", ""), ("", None))
        params = getattr(getattr(item, "callspec", None), "params", {})
        release = fixed or params.get("release")
        if kind and release is not None:
            _start_first_boot(machine_pool, kind, release, artefacts, moto_url)


@pytest.fixture
def first_boots(
    artefacts: Artefacts, moto_url: str, machine_pool: MachinePool
) -> Iterator[Callable[[str, Release], FirstBoot]]:
    """A getter of the first boot of a user-data ("deb" or "wheel") on a release, started ahead
    (`_first_boots_ahead`) or now; each is powered off after its test."""
    used: list[tuple[str, str, str]] = []

    def get(kind: str, release: Release) -> FirstBoot:
        used.append(_start_first_boot(machine_pool, kind, release, artefacts, moto_url))
        boot: FirstBoot = machine_pool.get(used[-1])
        return boot

    yield get
    for key in used:
        machine_pool.close(key)


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A folder for one container's root beside the harness's cache, removed afterwards."""
    nspawn.WORK_ROOT.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="secrets-agent-packaging-", dir=nspawn.WORK_ROOT))
    yield path
    nspawn.remove_copies(path)


def files_holding(root: Path, needles: list[bytes]) -> list[str]:
    """Files under `root` that contain any of `needles` (grep over every file, binary too)."""
    argv = ["grep", "-r", "-l", "-a", "-F", "--no-messages"]
    for needle in needles:
        argv += ["-e", needle.decode()]
    result = subprocess.run([*argv, str(root)], capture_output=True, text=True, check=False)
    # 0: found, 1: found nothing; anything else means the search itself failed.
    assert result.returncode in (0, 1), result.stderr
    return result.stdout.splitlines()


def assert_app_has_its_values(machine: Machine, fakes: Fakes) -> None:
    """app.service's main process, once it runs the app's program (Machine.exec_environ), holds
    DATABASE_URL and API_TOKEN byte for byte as SSM has them."""
    environment = machine.exec_environ("app.service")
    keys = ("DATABASE_URL", "API_TOKEN")
    assert {key: environment.get(key.encode()) for key in keys} == {
        key: fakes.values[f"/app/prod/{key}"].encode() for key in keys
    }


def test_apt_installs_the_deb_with_debians_libraries_and_it_renders(
    artefacts: Artefacts, fakes: Fakes, installed_deb: InstalledDeb
) -> None:
    """apt-get install ./deb pulls the release's own libraries (the one .deb's Depends: hold on
    each), starts nothing, and the agent then feeds the app."""
    machine, release = installed_deb.machine, installed_deb.release
    installed = run(
        machine,
        "dpkg-query",
        "-W",
        "-f=${Package} ${Version}\n",
        "secrets-agent",
        *dict(release.libraries),
    ).stdout
    versions = dict(line.split() for line in installed.splitlines())
    assert versions["secrets-agent"] == artefacts.version
    for package, prefix in release.libraries:
        assert versions[package].startswith(prefix), (package, versions[package])
    assert run(machine, "secrets-agent", "--version").stdout.split() == [
        "secrets-agent",
        artefacts.version,
    ]
    # Installing fetched nothing and started nothing.
    assert installed_deb.imds_requests == 0
    assert installed_deb.ssm_actions == []
    assert installed_deb.agent_units.strip() == ""

    write(machine.root, "/etc/secrets-agent/agent.toml", fakes.agent_toml())
    run(machine, "secrets-agent", "enable", "app")
    try:
        run(machine, "systemctl", "start", "app.service")
        assert_app_has_its_values(machine, fakes)
        assert fakes.ssm.count("GetParameters") >= 1
    finally:
        # Back to the shared machine's state: installed, nothing enabled or running.
        machine.stop_app("app")
        run(machine, "secrets-agent", "disable", "app")


def test_purge_removes_the_package_and_keeps_the_operators_files(installed_deb: InstalledDeb) -> None:
    """While a service is behind the agent, apt-get purge is refused, naming the service and its
    rotation timer, and the package stays installed; with SECRETS_AGENT_REMOVE_ANYWAY=1 it removes
    every file the .deb installed, warning with the same list, and leaves /etc/secrets-agent and
    the drop-ins."""
    machine, root = installed_deb.machine, installed_deb.machine.root
    run(machine, "secrets-agent", "enable", "app", "--refresh")
    shipped = [
        path
        for path in run(machine, "dpkg", "-L", "secrets-agent").stdout.splitlines()
        if (root / path.lstrip("/")).is_file()
    ]
    assert "/usr/bin/secrets-agent" in shipped
    try:
        refused = run(machine, "apt-get", "purge", "-y", "-q", "secrets-agent", check=False)
        said = refused.stdout + refused.stderr
        assert refused.returncode != 0, said
        assert "secrets-agent: refusing to remove the package" in said
        listed = (
            "  app.service: its drop-in /etc/systemd/system/app.service.d/secrets-agent.conf would make "
            "it fail to start",
            "  secrets-agent-refresh@app.timer: enabled (in /etc/systemd/system/timers.target.wants), "
            "it would fail every 15 minutes",
        )
        for line in listed:
            assert line in said.splitlines(), said
        status = run(machine, "dpkg-query", "-W", "-f=${db:Status-Abbrev}", "secrets-agent").stdout
        assert status.strip() == "ii"
        assert run(machine, "systemctl", "cat", "secrets-agent@app.service", check=False).returncode == 0
        # No package left to share afterwards: `finally` retires the machine.
        forced = run(
            machine, "env", "SECRETS_AGENT_REMOVE_ANYWAY=1", "apt-get", "purge", "-y", "-q", "secrets-agent"
        )
        said = forced.stdout + forced.stderr
        assert "secrets-agent: WARNING: removing the package although" in said
        for line in listed:
            assert line in said.splitlines(), said
        assert run(machine, "systemctl", "cat", "secrets-agent@app.service", check=False).returncode != 0
        left = [path for path in shipped if (root / path.lstrip("/")).exists()]
        assert left == []
        assert not (root / "usr/lib/secrets-agent").exists()  # with py3compile's __pycache__
        assert (root / "etc/secrets-agent/app.env.j2").read_text(encoding="utf-8") == APP_TEMPLATE
        assert (root / "etc/systemd/system/app.service.d/secrets-agent.conf").is_file()
    finally:
        installed_deb.retire()


def first_boot_output(machine: Machine) -> str:
    """Wait for cloud-init's first boot to end, check it is done without errors, return its output log."""
    status = run(
        machine, "cloud-init", "status", "--wait", "--long", check=False, timeout=CLOUD_INIT_TIMEOUT_SECONDS
    )
    result = run(machine, "cat", "/run/cloud-init/result.json").stdout
    output = run(machine, "cat", "/var/log/cloud-init-output.log", check=False).stdout
    assert status.returncode == 0, status.stdout + result + output
    assert "status: done" in status.stdout
    assert '"errors": []' in result, result
    return output


def assert_rotation_checks_run(machine: Machine) -> None:
    """The user-data's `enable app --refresh` left the timer on, and a check run now finds nothing new."""
    timer = "secrets-agent-refresh@app.timer"
    assert run(machine, "systemctl", "is-enabled", timer).stdout.strip() == "enabled"
    assert run(machine, "systemctl", "is-active", timer).stdout.strip() == "active"
    run(machine, "systemctl", "start", "secrets-agent-refresh@app.service")
    journal = run(machine, "journalctl", "-q", "-o", "cat", "-u", "secrets-agent-refresh@app.service").stdout
    assert "refresh_unchanged" in journal


def test_cloud_init_first_boot_installs_the_deb_and_starts_the_app(
    artefacts: Artefacts, first_boots: Callable[[str, Release], FirstBoot], release: Release
) -> None:
    """At first boot, cloud-init runs the user-data from a NoCloud seed: the app runs with its secrets."""
    boot = first_boots("deb", release)
    machine, fakes = boot.machine, boot.fakes
    output = first_boot_output(machine)
    assert boot.requested == [f"/{artefacts.deb.name}"]
    version = run(machine, "dpkg-query", "-W", "-f=${Version}", "secrets-agent").stdout
    assert version == artefacts.version
    assert run(machine, "systemctl", "is-active", "app.service").stdout.strip() == "active"
    assert_app_has_its_values(machine, fakes)
    rendered = run(machine, "cat", "/run/secrets-agent/app/env").stdout
    assert dict(parse_env(rendered))["API_TOKEN"] == fakes.values["/app/prod/API_TOKEN"]
    assert_rotation_checks_run(machine)
    for value in fakes.values.values():
        assert value not in output


HARD_MARK = f"s3cr3t{secrets.token_hex(6)}"
HARD_VALUES = hard_values(HARD_MARK)
HARD_APP_UNIT = "[Service]\nExecStart=/bin/sleep infinity\n"


def assert_renders_every_hard_value(machine: Machine, fakes: Fakes) -> None:
    """Put a second app, `hard`, behind the installed agent with every hard value in its template:
    its environment holds each one byte for byte, and nothing else of the template."""
    prefix = f"/hard-{secrets.token_hex(4)}"
    for key, value in HARD_VALUES.items():
        fakes.client.put_parameter(
            Name=f"{prefix}/{key}", Value=value, Type="SecureString", Overwrite=True, **tier_for(value)
        )
    write(machine.root, "/etc/secrets-agent/hard.env.j2", template_lines(prefix, HARD_VALUES), 0o640)
    write(machine.root, "/etc/systemd/system/hard.service", HARD_APP_UNIT)
    run(machine, "secrets-agent", "enable", "hard")
    run(machine, "systemctl", "start", "hard.service")
    environment = machine.exec_environ("hard.service")
    got = {key: environment.get(key.encode(), b"").decode() for key in HARD_VALUES}
    assert got == HARD_VALUES
    assert b"EVIL" not in environment
    assert b"EVIL_TOO" not in environment


def assert_credentials_refused_before_systemd_251(machine: Machine) -> None:
    """`enable --credentials` on a systemd older than 251 (no LoadCredential= of a folder) exits 2
    with a message that names the version, the minimum and the EnvironmentFile way, and writes
    nothing: no drop-in, no template, no settings."""
    version = machine.release.systemd
    write(machine.root, "/etc/systemd/system/creds.service", HARD_APP_UNIT)
    refused = run(machine, "secrets-agent", "enable", "creds", "--credentials", check=False)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"this system runs systemd {version}; --credentials needs 251 or newer" in refused.stderr
    assert "without --credentials (an EnvironmentFile)" in refused.stderr
    for path in (
        "etc/systemd/system/creds.service.d",
        "etc/secrets-agent/creds.env.j2",
        "etc/secrets-agent/creds.toml",
    ):
        assert not (machine.root / path).exists(), path


def check_wheel_first_boot(
    artefacts: Artefacts,
    boot: FirstBoot,
    release: Release,
    *,
    then: Optional[Callable[[Machine], None]] = None,
) -> None:
    """Check the first boot of the wheel's user-data on `release`: the venv's agent, the app's
    secrets, every hard value; then `then`."""
    machine, fakes = boot.machine, boot.fakes
    output = first_boot_output(machine)
    assert boot.requested == [f"/{artefacts.wheel.name}"]
    python = run(machine, "/opt/secrets-agent/bin/python", "-c", "import sys; print(sys.version)").stdout
    assert python.startswith(f"{release.python}."), python
    assert run(machine, "/opt/secrets-agent/bin/secrets-agent", "--version").stdout.split() == [
        "secrets-agent",
        artefacts.version,
    ]
    # No .deb: dpkg knows nothing of the agent.
    assert run(machine, "dpkg-query", "-W", "secrets-agent", check=False).returncode != 0
    assert run(machine, "systemctl", "is-active", "app.service").stdout.strip() == "active"
    assert_app_has_its_values(machine, fakes)
    assert_rotation_checks_run(machine)
    for value in fakes.values.values():
        assert value not in output
    assert_renders_every_hard_value(machine, fakes)
    if then is not None:
        then(machine)


def test_cloud_init_first_boot_installs_the_wheel_in_a_venv_and_starts_the_app(
    artefacts: Artefacts, first_boots: Callable[[str, Release], FirstBoot], release: Release
) -> None:
    """The wheel's user-data at first boot: python3-venv from the release's archive, the wheel and
    its libraries from PyPI into /opt/secrets-agent, the unit from write_files; the app gets its
    secrets and every hard value arrives exact."""
    check_wheel_first_boot(artefacts, first_boots("wheel", release), release)


def test_wheel_user_data_boots_debian_11_with_python_39(
    artefacts: Artefacts, first_boots: Callable[[str, Release], FirstBoot]
) -> None:
    """The wheel's user-data on Debian 11 (python3 3.9, as Amazon Linux 2023's; systemd 247): the
    venv runs Python 3.9, the app gets its secrets and every hard value arrives exact, and
    `enable --credentials` is refused there with a clear message (systemd 247 < 251)."""
    boot = first_boots("wheel", BULLSEYE)
    check_wheel_first_boot(artefacts, boot, BULLSEYE, then=assert_credentials_refused_before_systemd_251)


def test_ami_bake_leaves_no_secret_and_the_image_boots_the_app(
    artefacts: Artefacts, fakes: Fakes, workdir: Path, release: Release
) -> None:
    """ami-bake.sh installs and enables without fetching and empties the builder's machine-id; an
    instance of the image gets its secrets at boot; after shutdown no secret value is anywhere in
    the root file system."""
    root = fresh_rootfs(workdir / "root", release=release)
    # The builder runs on a machine-id of its own, as an EC2 build instance does.
    builder_id = "4f3c2b1a09876543210fedcba9876543"
    write(root, "/etc/machine-id", builder_id + "\n", 0o444)
    shutil.copy(artefacts.deb, root / "root")
    shutil.copy(REPO / "packaging" / "ami-bake.sh", root / "root")
    write(root, "/etc/secrets-agent/agent.toml", fakes.agent_toml())
    write(root, "/etc/secrets-agent/app.env.j2", APP_TEMPLATE, 0o640)
    write(root, "/etc/systemd/system/app.service", APP_UNIT)
    with booted(root, f"sa-pkg-bake-{release.suite}") as builder:
        bake = run(
            builder,
            "bash",
            "/root/ami-bake.sh",
            f"/root/{artefacts.deb.name}",
            "app",
            check=False,
            timeout=APT_TIMEOUT_SECONDS,
        )
        assert bake.returncode == 0, bake.stdout + bake.stderr
        assert "verified: no rendered secret" in bake.stderr
        assert "emptied /etc/machine-id" in bake.stderr
        assert run(builder, "cat", "/etc/machine-id").stdout == ""
        assert run(builder, "systemctl", "is-enabled", "app.service").stdout.strip() == "enabled"
        assert run(builder, "systemctl", "is-active", "app.service", check=False).stdout.strip() == "inactive"
    assert fakes.imds.count() == 0
    assert fakes.ssm.actions == []
    assert (root / "etc/machine-id").read_text() == ""
    (root / "root" / artefacts.deb.name).unlink()

    # An instance launched from the image: the app comes up at boot with its secrets.
    with booted(root, f"sa-pkg-instance-{release.suite}") as instance:
        # app.service is part of multi-user.target, which booting waited for.
        assert run(instance, "systemctl", "is-active", "app.service", check=False).stdout.strip() == "active"
        assert_app_has_its_values(instance, fakes)
    assert files_holding(root, fakes.secret_bytes()) == []

    def verify() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(REPO / "packaging" / "ami-bake.sh"), "--verify-only", "--root", str(root)],
            capture_output=True,
            text=True,
            check=False,
        )

    # The instance made a machine-id of its own at its first boot and kept it: an image taken from
    # it now would hand that id to every instance, and the check refuses it, naming it.
    instance_id = (root / "etc/machine-id").read_text().strip()
    assert instance_id not in ("", builder_id)
    refused = verify()
    assert refused.returncode == 1
    machine_id = root / "etc/machine-id"
    assert f"{machine_id} holds {instance_id}; fix: `truncate -s 0 {machine_id}`" in refused.stderr
    (root / "etc/machine-id").write_text("")
    # The agent unit sets up systemd-creds' host key at its start (for on_outage = "sealed"): an image
    # taken from a running instance carries it, and the check refuses it too, naming it.
    host_key = root / "var/lib/systemd/credential.secret"
    if host_key.exists():
        assert str(host_key) in refused.stderr
        host_key.unlink()
    verified = verify()
    assert verified.returncode == 0, verified.stderr
    assert "no secrets-agent in" not in verified.stderr  # the image's agent validated its services

    # A template that would not render fails the image check, by the image's own agent (chroot),
    # offline: nothing reached the AWS stand-ins.
    write(root, "/etc/secrets-agent/broken.env.j2", 'X={{ param("/app/x" }}\n', 0o640)
    ssm_actions = len(fakes.ssm.actions)
    refused = verify()
    assert refused.returncode == 1, refused.stderr
    assert "broken would not render at boot" in refused.stderr
    assert "/etc/secrets-agent/broken.env.j2:1" in refused.stderr
    assert len(fakes.ssm.actions) == ssm_actions
