"""The suite's network guard itself."""

from __future__ import annotations

import socket

import pytest


def test_connection_to_imds_address_is_refused() -> None:
    """A connect() to the real IMDS address fails loudly instead of leaving the machine."""
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError, match=r"127\.0\.0\.1"):
        sock.connect(("169.254.169.254", 80))


def test_name_lookup_of_aws_host_is_refused() -> None:
    """Resolving an AWS host name is refused before any DNS query is sent."""
    with pytest.raises(ConnectionRefusedError, match=r"ssm\.eu-west-1\.amazonaws\.com"):
        socket.getaddrinfo("ssm.eu-west-1.amazonaws.com", 443)


def test_loopback_is_allowed() -> None:
    """Loopback addresses pass the guard (the connection itself may still be refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
