"""Network namespaces for the endpoint-mode system tests and bench (never installed): a machine's
namespace wired by a veth pair to a namespace of fakes, and nothing else. Neither reaches the host's
network, 169.254.169.254 or AWS.

    the machine's namespace (nspawn --network-namespace-path=)  <-veth->  the fakes' namespace
    IPv6-only: fd00:ec2::2/64, no IPv4 at all       fd00:ec2::254 (IMDS), fd00:ec2::10 (SSM)
    IPv4-only: 10.20.0.2/24, default via 10.20.0.1  10.20.0.1 (SSM), 169.254.169.254/32 (IMDS)

The fakes run in this process: `inside(namespace, start)` calls `start` on a thread that entered the
namespace, so the sockets it binds (and the server threads it starts) live there.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

_CLONE_NEWNET = 0x40000000
_T = TypeVar("_T")

MACHINE_SIDE = "sa-veth-m"
FAKES_SIDE = "sa-veth-f"
IPV6_MACHINE = "fd00:ec2::2"
IPV6_IMDS = "fd00:ec2::254"
IPV6_SSM = "fd00:ec2::10"
IPV4_MACHINE = "10.20.0.2"
IPV4_GATEWAY = "10.20.0.1"
IPV4_SSM = IPV4_GATEWAY
IPV4_IMDS = "169.254.169.254"


def ip(*args: str) -> str:
    """`ip ARGS` on the host; its output."""
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30).stdout


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
    """Two fresh namespaces joined by a veth pair, both ends up; removed after."""
    pair = Pair(machine=f"sa-m-{tag}", fakes=f"sa-f-{tag}")
    for name in (pair.machine, pair.fakes):
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
    ip("netns", "add", pair.machine)
    try:
        ip("netns", "add", pair.fakes)
        try:
            ip("link", "add", MACHINE_SIDE, "netns", pair.machine, "type", "veth", "peer", FAKES_SIDE,
               "netns", pair.fakes)  # fmt: skip
            for run, device in ((pair.in_machine, MACHINE_SIDE), (pair.in_fakes, FAKES_SIDE)):
                run("link", "set", "lo", "up")
                run("link", "set", device, "up")
            yield pair
        finally:
            ip("netns", "delete", pair.fakes)
    finally:
        ip("netns", "delete", pair.machine)


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
    subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
        for address in loopback_addresses:
            ip("-n", name, "addr", "add", f"{address}/32", "dev", "lo")
        yield name
    finally:
        ip("netns", "delete", name)


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
