"""The suite's network guard itself."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

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


def test_child_process_not_pointed_at_a_fake_stays_on_this_machine(tmp_path: Path, tmpfs_path: Path) -> None:
    """An agent a test starts with the suite's environment and no endpoint of its own reaches a
    closed loopback port, not 169.254.169.254: it fails with exit 7 naming that port."""
    (tmp_path / "app.env.j2").write_text('A={{ param("/a") }}\n', encoding="utf-8")
    (tmp_path / "agent.toml").write_text("deadline_seconds = 1\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "agent", "--config-dir", str(tmp_path), "--runtime-dir", str(tmpfs_path),
         "render", "app"],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )  # fmt: skip
    suite_default = os.environ["AWS_EC2_METADATA_SERVICE_ENDPOINT"]  # set by tests/conftest.py
    assert suite_default.startswith("http://127.0.0.1:")
    assert result.returncode == 7, result.stderr
    assert f"IMDS at {suite_default} did not answer" in result.stderr
    assert "169.254.169.254" not in result.stderr
    assert list(tmpfs_path.iterdir()) == []
