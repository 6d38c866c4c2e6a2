"""A network with nothing in it but the test's own AWS stand-ins, for the containers that prove the
self-contained tarball, the rpm and the offline user-data need no network at install or boot.

A network namespace holds one end of a veth link (the container's, 10.213.N.2/30) and nothing
else: no default route, no resolver that answers, so apt, pip and any AWS address are unreachable
from inside. The host's end (10.213.N.1) serves the stand-ins: moto enforcing IAM (SSM, S3, STS:
every request is signed, its signature checked and evaluated against the caller's policy) and
the strict IMDSv2 fake, handing out the credentials of a role assumed through moto's STS. A
container joins the namespace with systemd-nspawn --network-namespace-path.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

from devtools.fakeimds import FakeImds
from devtools.netns import IPV6_IMDS, IPV6_SSM, inside, namespace_pair
from tests.integration.iam_world import IamWorld, Keys, allow, enforcing_moto_server, policy_of

REGION = "eu-west-1"
ROLE = "instance-role"
BUCKET = "secrets-agent-releases"
# What the instance role may do, as moto evaluates it (actions only, resource "*").
ROLE_ACTIONS = (
    "ssm:GetParameters", "ssm:GetParameter", "ssm:GetParametersByPath", "kms:Decrypt", "s3:GetObject",
    "sts:GetCallerIdentity",
)  # fmt: skip


@dataclass(frozen=True)
class ClosedNetwork:
    """A network namespace and the two ends of its only link."""

    name: str
    host_address: str
    container_address: str

    @property
    def path(self) -> Path:
        """What systemd-nspawn --network-namespace-path takes."""
        return Path("/run/netns") / self.name


APT_INSTALL = Path(__file__).resolve().parents[2] / "packaging" / "apt-install.sh"


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def closed_network() -> Iterator[ClosedNetwork]:
    """A namespace whose only link leads to this host, made for the session and removed after."""
    if shutil.which("ip") is None:
        subprocess.run(["bash", str(APT_INSTALL), "iproute2"], check=True, timeout=600)
    number = os.getpid() % 250 + 1
    name = f"sa-closed-{os.getpid()}"
    host_link, container_link = f"sa{number}h", f"sa{number}c"
    network = ClosedNetwork(name, f"10.213.{number}.1", f"10.213.{number}.2")
    with contextlib.suppress(subprocess.CalledProcessError):
        _ip("link", "del", host_link)  # left by a killed session with the same number
    _ip("netns", "add", name)
    try:
        _ip("link", "add", host_link, "type", "veth", "peer", "name", container_link, "netns", name)
        _ip("addr", "add", f"{network.host_address}/30", "dev", host_link)
        _ip("link", "set", host_link, "up")
        inside = ("netns", "exec", name, "ip")
        _ip(*inside, "addr", "add", f"{network.container_address}/30", "dev", container_link)
        _ip(*inside, "link", "set", container_link, "up")
        _ip(*inside, "link", "set", "lo", "up")
        yield network
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", host_link)
        _ip("netns", "del", name)


_T = TypeVar("_T")


@dataclass
class ClosedWorld:
    """The stand-ins on the host's end of a closed network: moto enforcing IAM, and IMDS serving
    the credentials of ROLE, which may read parameters and S3 objects and nothing else. In an
    IPv6-only world they live in a namespace of their own (`fakes_namespace`), where `call` runs
    the test's own requests to them."""

    network: ClosedNetwork
    iam: IamWorld
    imds: FakeImds
    role_keys: Keys
    fakes_namespace: Optional[str] = None

    def call(self, action: Callable[[], _T]) -> _T:
        """Run `action` (uploads, parameters) where the stand-ins can be reached."""
        if self.fakes_namespace is None:
            return action()
        return inside(self.fakes_namespace, action)

    @property
    def moto_url(self) -> str:
        """moto's URL, as the container reaches it."""
        return self.iam.url

    def agent_toml(self) -> str:
        """agent.toml that points a container's agent at the stand-ins instead of AWS."""
        return f'region = "{REGION}"\nimds_endpoint = "{self.imds.url}"\nssm_endpoint = "{self.moto_url}"\n'

    def ssm(self) -> Any:
        """An SSM client as the administrator, to create and change parameters."""
        return self.iam.client("ssm")

    def s3(self) -> Any:
        """An S3 client as the administrator, to upload the release files."""
        return self.iam.client("s3")


@contextlib.contextmanager
def closed_world() -> Iterator[ClosedWorld]:
    """A closed network with its stand-ins, the role made, the release bucket created."""
    with closed_network() as network, enforcing_moto_server(network.host_address) as url:
        iam = IamWorld(url, REGION)
        keys = iam.role(ROLE, policy_of(allow(*ROLE_ACTIONS)))
        iam.client("s3").create_bucket(
            Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION}
        )
        imds = iam.imds(ROLE, keys, host=network.host_address)
        imds.start()
        try:
            yield ClosedWorld(network=network, iam=iam, imds=imds, role_keys=keys)
        finally:
            imds.stop()


@contextlib.contextmanager
def closed_ipv6_world() -> Iterator[ClosedWorld]:
    """An IPv6-only closed network (devtools/netns.py's pair): the container's namespace has
    fd00:ec2::2/64 and no IPv4 address or route at all; the stand-ins sit in a namespace of their
    own behind it, IMDS only at [fd00:ec2::254] on port 80, as on an IPv6-only EC2 subnet, and moto
    enforcing IAM (SSM, S3, STS) at fd00:ec2::10. The role made, the release bucket created."""
    if shutil.which("ip") is None:
        subprocess.run(["bash", str(APT_INSTALL), "iproute2"], check=True, timeout=600)
    with namespace_pair(f"v6c{os.getpid() % 100000}") as pair:
        pair.wire_ipv6_only()
        network = ClosedNetwork(pair.machine, IPV6_SSM, "fd00:ec2::2")
        with enforcing_moto_server(IPV6_SSM, netns=pair.fakes) as url:

            def made() -> tuple[IamWorld, Keys, FakeImds]:
                iam = IamWorld(url, REGION)
                keys = iam.role(ROLE, policy_of(allow(*ROLE_ACTIONS)))
                iam.client("s3").create_bucket(
                    Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION}
                )
                imds = iam.imds(ROLE, keys, host=IPV6_IMDS, port=80)
                imds.start()
                return iam, keys, imds

            iam, keys, imds = inside(pair.fakes, made)
            try:
                yield ClosedWorld(
                    network=network, iam=iam, imds=imds, role_keys=keys, fakes_namespace=pair.fakes
                )
            finally:
                imds.stop()
