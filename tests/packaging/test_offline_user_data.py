"""cloud-init/user-data-offline.yaml at a real first boot (Debian 12's cloud-init, NoCloud seed) in a
container with no network but the AWS stand-ins (tests/packaging/closed_network.py): the tarball
comes from S3 (moto enforcing IAM checks the signature and the role's s3:GetObject), with the
credentials IMDSv2 hands the instance role; its sha256 is checked before anything is installed. On
an IPv6-only network too, where IMDS answers only at [fd00:ec2::254] and is found as the agent
finds it."""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest

from tests.packaging.closed_network import BUCKET, REGION, ClosedWorld, closed_ipv6_world, closed_world
from tests.packaging.conftest import REPO, Artefacts, skip_unless_root
from tests.packaging.essentials import write
from tests.packaging.machine import booted, fresh_rootfs, run
from tests.packaging.test_container_install import CLOUD_INIT_TIMEOUT_SECONDS, first_boot_output
from tests.system import nspawn
from tests.system.nspawn import BOOKWORM

pytestmark = pytest.mark.system

USER_DATA = REPO / "cloud-init" / "user-data-offline.yaml"
# The lines the user-data asks its reader to edit (the bucket's region only for a bucket elsewhere),
# and the two only a non-EC2 host needs.
EDITED_LINES = (
    "SECRETS_AGENT_PACKAGE",
    "SECRETS_AGENT_SHA256",
    "SECRETS_AGENT_BUCKET_REGION",
    "IMDS_ENDPOINT",
    "S3_ENDPOINT",
)
VALUES = {
    "/app/prod/DATABASE_URL": "postgres://app:offline-p4ss@db/app",
    "/app/prod/API_TOKEN": "tok-offline-7f3a",
}
# Test only: the container's one link is set up by the test, not by cloud-init's DHCP fallback.
NO_NETWORK_CONFIG = {
    "etc/cloud/cloud.cfg.d/95-secrets-agent-tests-network.cfg": "network: {config: disabled}\n"
}


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    skip_unless_root("booting containers with systemd-nspawn")


@pytest.fixture(scope="module")
def world(artefacts: Artefacts) -> Iterator[ClosedWorld]:
    """The closed network and its stand-ins, with the release tarball in the S3 bucket and the
    app's parameters in SSM."""
    skip_unless_root("a network namespace")
    with closed_world() as made:
        made.s3().upload_file(str(artefacts.tarball), BUCKET, f"releases/{artefacts.tarball.name}")
        for name, value in VALUES.items():
            made.iam.put(name, value)
        yield made


@pytest.fixture
def cloud_root() -> Iterator[Path]:
    """A fresh Debian 12 root with cloud-init, in a folder removed afterwards."""
    nspawn.WORK_ROOT.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="secrets-agent-packaging-", dir=nspawn.WORK_ROOT))
    yield fresh_rootfs(folder / "root", cloud_init=True, release=BOOKWORM)
    shutil.rmtree(folder, ignore_errors=True)


def user_data(world: ClosedWorld, key: str, sha256: str, *, imds: Optional[str] = None) -> str:
    """The offline user-data with its lines set for the stand-ins: the S3 object, its sha256, and
    where S3 and (unless `imds` says otherwise: "" to find it as on EC2) IMDS answer in this closed
    network."""
    text = USER_DATA.read_text(encoding="utf-8")
    imds_line = world.imds.url if imds is None else imds
    values = dict(
        zip(EDITED_LINES, (f"s3://{BUCKET}/{key}", sha256, "", imds_line, world.moto_url), strict=True)
    )
    for name, value in values.items():
        text, count = re.subn(rf'^(\s+){name}="[^"]*"$', rf'\g<1>{name}="{value}"', text, flags=re.MULTILINE)
        assert count == 1, f"expected one {name}= line in {USER_DATA.name}"
    return text


def seed(root: Path, world: ClosedWorld, text: str, agent_toml: Optional[str] = None) -> None:
    """The NoCloud seed, the agent's pointer to the stand-ins, and the test's network setting."""
    write(root, "/var/lib/cloud/seed/nocloud/user-data", text)
    write(root, "/var/lib/cloud/seed/nocloud/meta-data", "instance-id: iid-secrets-agent-offline\n")
    # The stand-ins for EC2's IMDS and SSM; on EC2 no agent.toml is needed.
    write(root, "/etc/secrets-agent/agent.toml", world.agent_toml() if agent_toml is None else agent_toml)
    for path, content in NO_NETWORK_CONFIG.items():
        write(root, path, content)


def test_offline_user_data_installs_the_tarball_from_s3_and_starts_the_app(
    artefacts: Artefacts, world: ClosedWorld, cloud_root: Path
) -> None:
    """With no network but S3, SSM and IMDS stand-ins, the first boot fetches the tarball from S3
    with the role's credentials, checks its sha256, installs it, and the app runs with its secrets;
    the package's staging folder is gone and no value is in cloud-init's output."""
    digest = artefacts.tarball_sha256.read_text().split()[0]
    seed(cloud_root, world, user_data(world, f"releases/{artefacts.tarball.name}", digest))
    with booted(cloud_root, "sa-offline-bookworm", world.network.path) as machine:
        output = first_boot_output(machine)
        assert "secrets-agent-1-fetch: fetched" in output
        assert f"secrets-agent-2-verify-sha256: sha256 {digest} as expected" in output
        assert f"secrets-agent-3-install: installed secrets-agent {artefacts.version}" in output
        assert run(machine, "python3", "-m", "pip", "--version", check=False).returncode != 0
        assert run(machine, "systemctl", "is-active", "app.service").stdout.strip() == "active"
        environment = machine.exec_environ("app.service")
        assert {key: environment.get(key.encode()) for key in ("DATABASE_URL", "API_TOKEN")} == {
            "DATABASE_URL": VALUES["/app/prod/DATABASE_URL"].encode(),
            "API_TOKEN": VALUES["/app/prod/API_TOKEN"].encode(),
        }
        timer = "secrets-agent-refresh@app.timer"
        assert run(machine, "systemctl", "is-enabled", timer).stdout.strip() == "enabled"
        assert run(machine, "test", "-e", "/run/secrets-agent-install", check=False).returncode == 1
        for value in VALUES.values():
            assert value not in output


@pytest.fixture(scope="module")
def ipv6_world(artefacts: Artefacts) -> Iterator[ClosedWorld]:
    """An IPv6-only closed network and its stand-ins (IMDS only at [fd00:ec2::254]), with the
    release tarball in the S3 bucket and the app's parameters in SSM."""
    skip_unless_root("network namespaces")
    with closed_ipv6_world() as made:

        def fill() -> None:
            key = f"releases/{artefacts.tarball.name}"
            made.s3().upload_file(str(artefacts.tarball), BUCKET, key)
            for name, value in VALUES.items():
                made.iam.put(name, value)

        made.call(fill)
        yield made


def test_offline_user_data_boots_an_ipv6_only_instance(
    artefacts: Artefacts, ipv6_world: ClosedWorld, cloud_root: Path
) -> None:
    """On an IPv6-only network (no IPv4 address or route; IMDS only at [fd00:ec2::254]), with
    IMDS_ENDPOINT left empty as on EC2, the first boot finds IMDS as the agent does, fetches the
    tarball from S3 with the role's credentials, installs it, and the app runs with its secrets
    (the agent finding IMDS the same way: no imds_endpoint anywhere)."""
    world = ipv6_world
    digest = artefacts.tarball_sha256.read_text().split()[0]
    text = user_data(world, f"releases/{artefacts.tarball.name}", digest, imds="")
    # Only SSM's stand-in is named; IMDS is found, as on EC2.
    seed(cloud_root, world, text, agent_toml=f'region = "{REGION}"\nssm_endpoint = "{world.moto_url}"\n')
    with booted(cloud_root, "sa-offline-ipv6", world.network.path) as machine:
        assert run(machine, "ip", "-4", "route", "show").stdout.strip() == ""
        assert run(machine, "ip", "-4", "addr", "show", "scope", "global").stdout.strip() == ""
        output = first_boot_output(machine)
        assert f"secrets-agent-1-fetch: fetched s3://{BUCKET}/releases/{artefacts.tarball.name}" in output
        assert f"secrets-agent-3-install: installed secrets-agent {artefacts.version}" in output
        assert run(machine, "systemctl", "is-active", "app.service").stdout.strip() == "active"
        environment = machine.exec_environ("app.service")
        assert {key: environment.get(key.encode()) for key in ("DATABASE_URL", "API_TOKEN")} == {
            "DATABASE_URL": VALUES["/app/prod/DATABASE_URL"].encode(),
            "API_TOKEN": VALUES["/app/prod/API_TOKEN"].encode(),
        }
        for value in VALUES.values():
            assert value not in output
    # No IPv4 at all in the machine: the step and the agent both reached IMDS at [fd00:ec2::254].
    assert world.imds.count("PUT", "/latest/api/token") >= 2


def test_offline_user_data_refuses_a_tarball_whose_sha256_differs(
    artefacts: Artefacts, world: ClosedWorld, cloud_root: Path
) -> None:
    """A tarball whose sha256 is not the user-data's is refused: `cloud-init status --long` names the
    verify step, the output log says why, nothing of the agent is installed and the app never
    starts."""
    tampered = artefacts.tarball.read_bytes() + b"\0"
    world.s3().put_object(Bucket=BUCKET, Key="releases/tampered.tar.gz", Body=tampered)
    expected = hashlib.sha256(artefacts.tarball.read_bytes()).hexdigest()
    seed(cloud_root, world, user_data(world, "releases/tampered.tar.gz", expected))
    with booted(cloud_root, "sa-offline-tampered", world.network.path) as machine:
        status = run(
            machine,
            "cloud-init",
            "status",
            "--wait",
            "--long",
            check=False,
            timeout=CLOUD_INIT_TIMEOUT_SECONDS,
        )
        output = run(machine, "cat", "/var/log/cloud-init-output.log").stdout
        assert status.returncode != 0
        assert "status: error" in status.stdout
        [line] = [text for text in status.stdout.splitlines() if "secrets-agent-2-verify-sha256" in text]
        assert "scripts-per-instance" in line, status.stdout
        actual = hashlib.sha256(tampered).hexdigest()
        assert (
            f"secrets-agent-2-verify-sha256: refused the package: its sha256 is {actual}, not "
            f"SECRETS_AGENT_SHA256={expected}; nothing installed"
        ) in output
        assert "secrets-agent-3-install: no verified package" in output
        for path in (
            "/usr/bin/secrets-agent",
            "/usr/lib/secrets-agent",
            "/run/secrets-agent-install/package.tar.gz",
        ):
            assert run(machine, "test", "-e", path, check=False).returncode == 1, path
        assert run(machine, "systemctl", "is-active", "app.service", check=False).stdout.strip() != "active"
