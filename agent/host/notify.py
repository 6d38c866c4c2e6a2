"""systemd's notification protocol, for one thing: a STATUS= line that `systemctl status` shows while
the agent waits (the unit sets NotifyAccess=main; a oneshot unit accepts STATUS= that way)."""

from __future__ import annotations

import socket
from typing import Optional

import structlog

_log = structlog.get_logger()


class StatusNotifier:
    """Sends `STATUS=...` datagrams to systemd's socket; does nothing when there is none."""

    def __init__(self, socket_path: Optional[str]) -> None:
        self._address: Optional[str] = socket_path or None
        if socket_path and socket_path.startswith("@"):
            # "@name" is a socket in the abstract namespace, spelled with a leading NUL on the wire.
            self._address = "\0" + socket_path[1:]

    def status(self, text: str) -> None:
        """Tell systemd what the agent is doing; a failure to tell it never stops the agent."""
        if self._address is None:
            return
        line = "STATUS=" + text.replace("\n", " ")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(line.encode("utf-8"), self._address)
        except OSError as exc:
            _log.debug("notify_failed", error=exc.strerror or type(exc).__name__)
