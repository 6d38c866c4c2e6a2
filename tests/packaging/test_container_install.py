"""The .deb and the wheel as they are used, in booted containers of each Debian release the .deb runs
on (12 and 13, the `release` fixture): apt-get install, purge, cloud-init's first boot from a
NoCloud seed, and an AMI bake after which the image holds no secret. The wheel's first boot also runs
on Debian 11, whose python3 is 3.9 like Amazon Linux 2023's."""

from __future__ import annotations

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
from tests import readme_quickstart
from tests.hard_values import hard_values, template_lines, tier_for
from tests.integration.moto_server import RecordingProxy
from tests.packaging.conftest import REPO, Artefacts, skip_unless_root
from tests.packaging.machine import Machine, booted, fresh_rootfs, run
from tests.packaging.test_cloud_init_files import USER_DATA, USER_DATA_WHEEL, with_location
from tests.system import nspawn
from tests.system.nspawn import BULLSEYE, Release

pytestmark = pytest.mark.system

REGION = "eu-west-1"
CLOUD_INIT_TIMEOUT_SECONDS = 300
APT_TIMEOUT_SECONDS = 300
APP_UNIT = (REPO / "systemd" / "examples" / "app.service").read_text(encoding="utf-8")
APP_TEMPLATE = (
    'DATABASE_URL={{ param("/app/prod/DATABASE_URL") }}\nAPI_TOKEN={{ param("/app/prod/API_TOKEN") }}\n'
)


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


@pytest.fixture
def fakes(moto_url: str) -> Iterator[Fakes]:
    """Fresh secret values in moto, the IMDS fake and a recording proxy in front of moto."""
    values = {
        "/app/prod/DATABASE_URL": f"postgres://app:{secrets.token_hex(16)}@db:5432/app",
        "/app/prod/API_TOKEN": f"tok-{secrets.token_hex(20)}",
    }
    client = boto3.client(
        "ssm", region_name=REGION, endpoint_url=moto_url, aws_access_key_id="t", aws_secret_access_key="t"
    )
    for name, value in values.items():
        client.put_parameter(Name=name, Value=value, Type="SecureString", Overwrite=True)
    imds = FakeImds(region=REGION, role="app-role")
    imds.start()
    try:
        with RecordingProxy(moto_url) as proxy:
            yield Fakes(imds=imds, ssm=proxy, values=values, client=client)
    finally:
        imds.stop()


class _RecordingFileHandler(http.server.SimpleHTTPRequestHandler):
    requested: list[str]

    def do_GET(self) -> None:
        self.requested.append(self.path)
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def package_server(artefacts: Artefacts) -> Iterator[tuple[str, list[str]]]:
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


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A folder for one container's root beside the harness's cache, removed afterwards."""
    nspawn.WORK_ROOT.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="secrets-agent-packaging-", dir=nspawn.WORK_ROOT))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def write(root: Path, path: str, content: str, mode: int = 0o644) -> None:
    """Write a file into the container's root."""
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(content, encoding="utf-8")
    target.chmod(mode)


def app_environment(machine: Machine) -> dict[str, str]:
    """The environment app.service's main process runs with, once it runs the app's program."""
    environ = machine.exec_environ("app.service")
    return {key.decode(): value.decode() for key, value in environ.items()}


def files_holding(root: Path, needles: list[bytes]) -> list[str]:
    """Files under `root` that contain any of `needles` (grep over every file, binary too)."""
    argv = ["grep", "-r", "-l", "-a", "-F", "--no-messages"]
    for needle in needles:
        argv += ["-e", needle.decode()]
    result = subprocess.run([*argv, str(root)], capture_output=True, text=True, check=False)
    # 0: found, 1: found nothing; anything else means the search itself failed.
    assert result.returncode in (0, 1), result.stderr
    return result.stdout.splitlines()


def expected_app_values(fakes: Fakes) -> dict[str, str]:
    return {
        "DATABASE_URL": fakes.values["/app/prod/DATABASE_URL"],
        "API_TOKEN": fakes.values["/app/prod/API_TOKEN"],
    }


def apt_install_deb(machine: Machine, deb: Path) -> None:
    """The README quick start's .deb install block as printed, from the machine's /root, where the
    test copied the .deb; its dependencies come from Debian's archive."""
    run(machine, "apt-get", "update", "-q", timeout=APT_TIMEOUT_SECONDS)
    block = readme_quickstart.install_block("deb")
    assert "apt-get install -y ./secrets-agent_${VERSION}_all.deb" in block
    run(
        machine, "sh", "-c", readme_quickstart.as_root_script(block), cwd="/root", timeout=APT_TIMEOUT_SECONDS
    )


def test_apt_installs_the_deb_with_debians_libraries_and_it_renders(
    artefacts: Artefacts, fakes: Fakes, workdir: Path, release: Release
) -> None:
    """apt-get install ./deb pulls the release's own libraries (the one .deb's Depends: hold on
    each), starts nothing, and the agent then feeds the app."""
    root = fresh_rootfs(workdir / "root", release=release)
    shutil.copy(artefacts.deb, root / "root")
    write(root, "/etc/secrets-agent/agent.toml", fakes.agent_toml())
    write(root, "/etc/secrets-agent/app.env.j2", APP_TEMPLATE, 0o640)
    write(root, "/etc/systemd/system/app.service", APP_UNIT)
    with booted(root, f"sa-pkg-apt-{release.suite}") as machine:
        apt_install_deb(machine, artefacts.deb)
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
        assert fakes.imds.count() == 0
        assert fakes.ssm.actions == []
        units = run(
            machine,
            "systemctl",
            "list-units",
            "--all",
            "--no-legend",
            "secrets-agent@*",
            "secrets-agent-refresh@*",
        ).stdout
        assert units.strip() == ""

        run(machine, "secrets-agent", "enable", "app")
        run(machine, "systemctl", "start", "app.service")
        environment = app_environment(machine)
        assert {key: environment.get(key) for key in ("DATABASE_URL", "API_TOKEN")} == expected_app_values(
            fakes
        )
        assert fakes.ssm.count("GetParameters") >= 1


def test_purge_removes_the_package_and_keeps_the_operators_files(
    artefacts: Artefacts, workdir: Path, release: Release
) -> None:
    """While a service is behind the agent, apt-get purge is refused, naming the service and its
    rotation timer, and the package stays installed; with SECRETS_AGENT_REMOVE_ANYWAY=1 it removes
    every file the .deb installed, warning with the same list, and leaves /etc/secrets-agent and
    the drop-ins."""
    root = fresh_rootfs(workdir / "root", release=release)
    shutil.copy(artefacts.deb, root / "root")
    write(root, "/etc/secrets-agent/app.env.j2", APP_TEMPLATE, 0o640)
    write(root, "/etc/systemd/system/app.service", APP_UNIT)
    with booted(root, f"sa-pkg-purge-{release.suite}") as machine:
        apt_install_deb(machine, artefacts.deb)
        run(machine, "secrets-agent", "enable", "app", "--refresh")
        shipped = [
            path
            for path in run(machine, "dpkg", "-L", "secrets-agent").stdout.splitlines()
            if (root / path.lstrip("/")).is_file()
        ]
        assert "/usr/bin/secrets-agent" in shipped
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
    artefacts: Artefacts,
    fakes: Fakes,
    package_server: tuple[str, list[str]],
    workdir: Path,
    release: Release,
) -> None:
    """At first boot, cloud-init runs the user-data from a NoCloud seed: the app runs with its secrets."""
    url, requested = package_server
    root = fresh_rootfs(workdir / "root", cloud_init=True, release=release)
    write(
        root, "/var/lib/cloud/seed/nocloud/user-data", with_location(USER_DATA, f"{url}/{artefacts.deb.name}")
    )
    write(root, "/var/lib/cloud/seed/nocloud/meta-data", "instance-id: iid-secrets-agent-test\n")
    # The test's stand-in for EC2's IMDS and SSM; on EC2 no agent.toml is needed.
    write(root, "/etc/secrets-agent/agent.toml", fakes.agent_toml())
    with booted(root, f"sa-pkg-cloud-{release.suite}") as machine:
        output = first_boot_output(machine)
        assert requested == [f"/{artefacts.deb.name}"]
        version = run(machine, "dpkg-query", "-W", "-f=${Version}", "secrets-agent").stdout
        assert version == artefacts.version
        assert run(machine, "systemctl", "is-active", "app.service").stdout.strip() == "active"
        environment = app_environment(machine)
        assert {key: environment.get(key) for key in ("DATABASE_URL", "API_TOKEN")} == expected_app_values(
            fakes
        )
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


def boot_wheel_user_data(
    artefacts: Artefacts,
    fakes: Fakes,
    package_server: tuple[str, list[str]],
    workdir: Path,
    release: Release,
    *,
    then: Optional[Callable[[Machine], None]] = None,
) -> None:
    """Boot a fresh cloud-init root of `release` with the wheel's user-data in its NoCloud seed and
    check the first boot: the venv's agent, the app's secrets, every hard value; then `then`."""
    url, requested = package_server
    root = fresh_rootfs(workdir / "root", cloud_init=True, release=release)
    write(
        root,
        "/var/lib/cloud/seed/nocloud/user-data",
        with_location(USER_DATA_WHEEL, f"{url}/{artefacts.wheel.name}"),
    )
    write(root, "/var/lib/cloud/seed/nocloud/meta-data", "instance-id: iid-secrets-agent-wheel\n")
    write(root, "/etc/secrets-agent/agent.toml", fakes.agent_toml())
    # Test only: this machine reaches PyPI through its own CA, whose bundle the harness copied in.
    write(root, "/etc/pip.conf", "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")
    with booted(root, f"sa-pkg-wheel-{release.suite}") as machine:
        output = first_boot_output(machine)
        assert requested == [f"/{artefacts.wheel.name}"]
        python = run(machine, "/opt/secrets-agent/bin/python", "-c", "import sys; print(sys.version)").stdout
        assert python.startswith(f"{release.python}."), python
        assert run(machine, "/opt/secrets-agent/bin/secrets-agent", "--version").stdout.split() == [
            "secrets-agent",
            artefacts.version,
        ]
        # No .deb: dpkg knows nothing of the agent.
        assert run(machine, "dpkg-query", "-W", "secrets-agent", check=False).returncode != 0
        assert run(machine, "systemctl", "is-active", "app.service").stdout.strip() == "active"
        environment = app_environment(machine)
        assert {key: environment.get(key) for key in ("DATABASE_URL", "API_TOKEN")} == expected_app_values(
            fakes
        )
        assert_rotation_checks_run(machine)
        for value in fakes.values.values():
            assert value not in output
        assert_renders_every_hard_value(machine, fakes)
        if then is not None:
            then(machine)


def test_cloud_init_first_boot_installs_the_wheel_in_a_venv_and_starts_the_app(
    artefacts: Artefacts,
    fakes: Fakes,
    package_server: tuple[str, list[str]],
    workdir: Path,
    release: Release,
) -> None:
    """The wheel's user-data at first boot: python3-venv from the release's archive, the wheel and
    its libraries from PyPI into /opt/secrets-agent, the unit from write_files; the app gets its
    secrets and every hard value arrives exact."""
    boot_wheel_user_data(artefacts, fakes, package_server, workdir, release)


def test_wheel_user_data_boots_debian_11_with_python_39(
    artefacts: Artefacts, fakes: Fakes, package_server: tuple[str, list[str]], workdir: Path
) -> None:
    """The wheel's user-data on Debian 11 (python3 3.9, as Amazon Linux 2023's; systemd 247): the
    venv runs Python 3.9, the app gets its secrets and every hard value arrives exact, and
    `enable --credentials` is refused there with a clear message (systemd 247 < 251)."""
    boot_wheel_user_data(
        artefacts,
        fakes,
        package_server,
        workdir,
        BULLSEYE,
        then=assert_credentials_refused_before_systemd_251,
    )


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
        environment = app_environment(instance)
        assert {key: environment.get(key) for key in ("DATABASE_URL", "API_TOKEN")} == expected_app_values(
            fakes
        )
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
    verified = verify()
    assert verified.returncode == 0, verified.stderr
