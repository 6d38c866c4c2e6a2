"""A DNS server that never resolves anything, and a mount namespace whose glibc resolver asks only it
(never installed): how the tests make the agent meet a real failed name resolution.

    FakeDns(answer)     UDP on a loopback address of its own, port 53; every query is recorded and
                        answered SERVFAIL ("servfail"), NXDOMAIN ("nxdomain"), NOERROR with no
                        record ("nodata"), or not at all ("silent": the resolver times out)
    resolver_jail(...)  the argv prefix that runs a command in a mount namespace of its own, where
                        /etc/resolv.conf names only that server, /etc/nsswitch.conf says
                        `hosts: files dns` and /etc/hosts holds only localhost

The server holds no record of any kind, so no answer of it ever carries an address: whatever the
agent asks, nothing leaves this machine. The jail hides nscd's socket too, so glibc cannot ask a
cache that reads the host's resolv.conf. Needs root (port 53, mount namespaces) and unshare(1).
"""

from __future__ import annotations

import errno
import random
import socket
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

DNS_PORT = 53
# The resolver gives up on a silent server after one try of this many seconds.
RESOLVER_TIMEOUT_SECONDS = 1
ANSWERS = ("servfail", "nxdomain", "nodata", "silent")
_RCODES = {"servfail": 2, "nxdomain": 3, "nodata": 0}
_HEADER = struct.Struct("!HHHHHH")
_QR_AA_RA = 0x8000 | 0x0400 | 0x0080
_OPCODE_RD = 0x7900
# What the jail puts in place of the host's files.
NSSWITCH = "hosts: files dns\n"
HOSTS = "127.0.0.1 localhost\n::1 localhost\n"
_JAIL_SCRIPT = (
    'mount --bind "$1" /etc/resolv.conf && mount --bind "$2" /etc/nsswitch.conf'
    ' && mount --bind "$3" /etc/hosts'
    " && { [ ! -d /run/nscd ] || mount -t tmpfs tmpfs /run/nscd; }"
    ' && shift 3 && exec "$@"'
)


def _question(packet: bytes) -> tuple[str, int, int]:
    """The queried name, its type, and the offset where the question ends."""
    offset = _HEADER.size
    labels = []
    while packet[offset]:
        length = packet[offset]
        labels.append(packet[offset + 1 : offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length
    offset += 1
    (qtype,) = struct.unpack_from("!H", packet, offset)
    return ".".join(labels).lower(), qtype, offset + 4


@dataclass
class FakeDns:
    """A UDP DNS server on a random 127.x.y.z:53 that fails every query as `answer` says."""

    answer: str = "servfail"
    address: str = ""
    queries: list[tuple[str, int]] = field(default_factory=list)
    _socket: Optional[socket.socket] = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def start(self) -> str:
        """Bind (in the calling thread's network namespace) and serve from a daemon thread; the address."""
        rng = random.Random()  # noqa: S311  (spreads test servers over loopback, no secret)
        for _ in range(20):
            address = f"127.{rng.randint(1, 254)}.{rng.randint(1, 254)}.{rng.randint(1, 254)}"
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.bind((address, DNS_PORT))
            except OSError as exc:
                sock.close()
                if exc.errno != errno.EADDRINUSE:
                    raise
                continue
            self._socket, self.address = sock, address
            threading.Thread(target=self._serve, name="fake-dns", daemon=True).start()
            return address
        raise OSError(errno.EADDRINUSE, "no free loopback address for the fake DNS server")

    def stop(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def asked(self, name: str) -> bool:
        """True when some query asked for `name`."""
        with self._lock:
            return any(asked == name.lower() for asked, _qtype in self.queries)

    def clear(self, answer: str) -> None:
        """Forget the queries and answer from now on as `answer` says."""
        if answer not in ANSWERS:
            raise ValueError(f"answer {answer!r}: one of {ANSWERS}")
        with self._lock:
            self.queries.clear()
            self.answer = answer

    def resolv_conf(self) -> str:
        """resolv.conf naming this server alone, one try of RESOLVER_TIMEOUT_SECONDS."""
        return f"nameserver {self.address}\noptions timeout:{RESOLVER_TIMEOUT_SECONDS} attempts:1\n"

    def _serve(self) -> None:
        sock = self._socket
        while sock is not None:
            try:
                packet, peer = sock.recvfrom(4096)
            except OSError:
                return  # stopped
            reply = self._reply(packet)
            if reply is not None:
                try:
                    sock.sendto(reply, peer)
                except OSError:
                    return

    def _reply(self, packet: bytes) -> Optional[bytes]:
        try:
            ident, flags, qdcount, _an, _ns, _ar = _HEADER.unpack_from(packet)
            name, qtype, end = _question(packet)
        except (struct.error, IndexError):
            return None  # not a query this server understands: no answer
        with self._lock:
            self.queries.append((name, qtype))
            answer = self.answer
        if answer == "silent" or qdcount != 1:
            return None
        header = _HEADER.pack(ident, _QR_AA_RA | (flags & _OPCODE_RD) | _RCODES[answer], 1, 0, 0, 0)
        return header + packet[_HEADER.size : end]


def resolver_jail(folder: Path, server: FakeDns, *, netns: Optional[str] = None) -> list[str]:
    """The argv prefix that runs a command (in network namespace `netns` when given) in a mount
    namespace of its own, whose glibc resolver asks only `server`; its files are written in `folder`."""
    files = {"resolv.conf": server.resolv_conf(), "nsswitch.conf": NSSWITCH, "hosts": HOSTS}
    for name, text in files.items():
        path = folder / name
        path.write_text(text, encoding="ascii")
        path.chmod(0o644)
    in_netns = ["ip", "netns", "exec", netns] if netns else []
    return [
        *in_netns,
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        _JAIL_SCRIPT,
        "sh",
        *(str(folder / name) for name in files),
    ]
