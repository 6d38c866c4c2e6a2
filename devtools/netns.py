"""Network namespaces for the tests and bench that run a machine cut off from the world (never
installed): the suite's one builder of them and its one address plan. Nothing in them reaches the
host's network, 169.254.169.254 or AWS.

Two shapes, both a namespace for the machine (systemd-nspawn --network-namespace-path=) joined by a
veth link to where the test's fakes listen:

    host_link(tag): the machine's namespace  <-veth->  this host (the fakes run on the host's end)
        machine 10.213.N.2/30, host 10.213.N.1/30; N from 1 to 250, one per link
    namespace_pair(tag): the machine's namespace  <-veth->  a namespace of fakes
        IPv6-only: machine fd00:ec2::2/64, no IPv4 at all; fakes fd00:ec2::254 (IMDS), fd00:ec2::10 (SSM)
        IPv4-only: machine 10.213.0.2/24, default via 10.213.0.1 (SSM); fakes 169.254.169.254/32 (IMDS)

Every IPv4 address is in TEST_NETWORKS, which the suite's guard (tests/conftest.py) lets tests
reach. In a pair the fakes run in this process: `inside(namespace, start)` calls `start` on a thread
that entered the namespace, so the sockets it binds (and the server threads it starts) live there.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

_CLONE_NEWNET = 0x40000000
_T = TypeVar("_T")

# The address plan (see above).
TEST_NETWORKS = "10.213.0.0/16"
HOST_LINKS = range(1, 251)
MACHINE_SIDE = "sa-veth-m"
FAKES_SIDE = "sa-veth-f"
IPV6_MACHINE = "fd00:ec2::2"
IPV6_IMDS = "fd00:ec2::254"
IPV6_SSM = "fd00:ec2::10"
IPV4_MACHINE = "10.213.0.2"
IPV4_GATEWAY = "10.213.0.1"
IPV4_SSM = IPV4_GATEWAY
IPV4_IMDS = "169.254.169.254"
APT_INSTALL = Path(__file__).resolve().parents[1] / "packaging" / "apt-install.sh"


def ip(*args: str) -> str:
    """`ip ARGS` on the host; its output."""
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30).stdout


def _ensure_ip() -> None:
    if shutil.which("ip") is None:
        subprocess.run(["bash", str(APT_INSTALL), "iproute2"], check=True, timeout=600)


@contextmanager
def _namespace(name: str) -> Iterator[str]:
    """A fresh namespace NAME (one a killed session left is replaced) with its loopback up; deleted after."""
    subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        ip("netns", "delete", name)


def _veth(one: tuple[str, Optional[str]], other: tuple[str, Optional[str]]) -> None:
    """A veth link between two (device, namespace) ends, None for the host's; both ends up."""
    ends = [(device, ["netns", namespace] if namespace else []) for device, namespace in (one, other)]
    (first, first_ns), (second, second_ns) = ends
    ip("link", "add", first, *first_ns, "type", "veth", "peer", "name", second, *second_ns)
    for device, namespace in (one, other):
        ip(*(["-n", namespace] if namespace else []), "link", "set", device, "up")


@dataclass(frozen=True)
class HostLink:
    """A machine's namespace whose only link leads to this host."""

    namespace: str
    host_address: str
    machine_address: str

    @property
    def path(self) -> Path:
        """What systemd-nspawn --network-namespace-path= takes."""
        return Path("/run/netns") / self.namespace


# Each link of this process takes the next number (two sessions at once start apart, by PID).
_LINK_NUMBERS = itertools.count(os.getpid())


@contextmanager
def host_link() -> Iterator[HostLink]:
    """A namespace for a machine, linked to this host alone: no default route and no resolver that
    answers, so nothing but what listens on the host's end (10.213.N.1) is reachable."""
    _ensure_ip()
    number = HOST_LINKS[next(_LINK_NUMBERS) % len(HOST_LINKS)]
    link = HostLink(f"sa-link-{os.getpid()}-{number}", f"10.213.{number}.1", f"10.213.{number}.2")
    host_side, machine_side = f"sa{number}h", f"sa{number}m"
    with contextlib.suppress(subprocess.CalledProcessError):
        ip("link", "del", host_side)  # left by a killed session with the same number
    with _namespace(link.namespace):
        try:
            _veth((host_side, None), (machine_side, link.namespace))
            ip("addr", "add", f"{link.host_address}/30", "dev", host_side)
            ip("-n", link.namespace, "addr", "add", f"{link.machine_address}/30", "dev", machine_side)
            yield link
        finally:
            with contextlib.suppress(subprocess.CalledProcessError):
                ip("link", "del", host_side)


@dataclass(frozen=True)
class Pair:
    """The two namespaces, by name (under /run/netns)."""

    machine: str
    fakes: str

    @property
    def machine_path(self) -> str:
        """What systemd-nspawn's --network-namespace-path= takes."""
        return f"/run/netns/{self.machine}"

    def in_machine(self, *args: str) -> str:
        """`ip ARGS` in the machine's namespace."""
        return ip("-n", self.machine, *args)

    def in_fakes(self, *args: str) -> str:
        """`ip ARGS` in the fakes' namespace."""
        return ip("-n", self.fakes, *args)

    def wire_ipv6_only(self) -> None:
        """IPv6 addresses on both ends, no IPv4 address or route in the machine's namespace."""
        self._clear()
        self.in_machine("-6", "addr", "add", f"{IPV6_MACHINE}/64", "dev", MACHINE_SIDE, "nodad")
        for address in (IPV6_IMDS, IPV6_SSM):
            self.in_fakes("-6", "addr", "add", f"{address}/64", "dev", FAKES_SIDE, "nodad")

    def wire_ipv4_only(self) -> None:
        """Today's EC2: IPv4 with a default route, IMDS at 169.254.169.254 behind it, no IPv6 route."""
        self._clear()
        self.in_machine("addr", "add", f"{IPV4_MACHINE}/24", "dev", MACHINE_SIDE)
        self.in_machine("route", "add", "default", "via", IPV4_GATEWAY)
        self.in_fakes("addr", "add", f"{IPV4_GATEWAY}/24", "dev", FAKES_SIDE)
        self.in_fakes("addr", "add", f"{IPV4_IMDS}/32", "dev", FAKES_SIDE)

    def _clear(self) -> None:
        for run, device in ((self.in_machine, MACHINE_SIDE), (self.in_fakes, FAKES_SIDE)):
            run("addr", "flush", "dev", device, "scope", "global")
            run("route", "flush", "table", "main")


@contextmanager
def namespace_pair(tag: str) -> Iterator[Pair]:
    """Two fresh namespaces joined by a veth pair, both ends up and unaddressed (`wire_*`); removed after."""
    _ensure_ip()
    pair = Pair(machine=f"sa-m-{tag}", fakes=f"sa-f-{tag}")
    with _namespace(pair.machine), _namespace(pair.fakes):
        _veth((MACHINE_SIDE, pair.machine), (FAKES_SIDE, pair.fakes))
        yield pair


def _setns(fd: int) -> None:
    setns = getattr(os, "setns", None)
    if setns is not None:  # Python >= 3.12
        setns(fd, _CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def inside(namespace: str, start: Callable[[], _T]) -> _T:
    """Run `start` on a thread inside `namespace` and return its result.

    Sockets it opens and threads it starts stay in that namespace (a network namespace belongs to a
    thread, and a new thread inherits its creator's); the calling thread never leaves its own.
    """
    results: list[_T] = []
    errors: list[BaseException] = []

    def run() -> None:
        fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(fd)
            results.append(start())
        except BaseException as exc:  # handed to the caller below
            errors.append(exc)
        finally:
            os.close(fd)

    thread = threading.Thread(target=run, name=f"netns-{namespace}")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return results[0]


@contextmanager
def lone_namespace(name: str, *, loopback_addresses: tuple[str, ...] = ()) -> Iterator[str]:
    """One fresh namespace with only its loopback up (plus `loopback_addresses`/32 on it): an
    IPv4-only host whose IMDS address is local and which has no IPv6 route beyond ::1."""
    _ensure_ip()
    with _namespace(name):
        for address in loopback_addresses:
            ip("-n", name, "addr", "add", f"{address}/32", "dev", "lo")
        yield name


def serve_moto(address: str, port: int = 0) -> Any:
    """moto's server app (its state is this process's, shared with any other moto server here)
    bound on the calling thread, so that a bind error is raised rather than left in a thread; it
    serves from a daemon thread. Stop it with .shutdown() and .server_close()."""
    from moto.moto_server.werkzeug_app import (  # noqa: PLC0415  (a dev dependency)
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server  # noqa: PLC0415

    app = DomainDispatcherApplication(create_backend_app)
    server = make_server(address, port, app, threaded=True, request_handler=MotoRequestHandler)
    threading.Thread(target=server.serve_forever, name="moto-in-netns", daemon=True).start()
    return server
