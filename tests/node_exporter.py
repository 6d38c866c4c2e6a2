"""Debian's real prometheus-node-exporter, for the tests that check what it serves of the agent's
metrics file: on the host's 127.0.0.1 (a free port), with only its textfile collector, reading one
folder. The one launcher of it, for the integration tests (a folder on the host) and the system
tests (the machine's textfile folder, seen from the host)."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.prerequisites import require_command

NODE_EXPORTER = Path("/usr/bin/prometheus-node-exporter")
READY_TIMEOUT_SECONDS = 10.0


def node_exporter_binary() -> Path:
    """Debian's prometheus-node-exporter on the host (tests/prerequisites.py installs it when
    missing, else the test skips, or fails under CI, naming it)."""
    return Path(require_command(NODE_EXPORTER.name, "prometheus-node-exporter"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serving(textfile_dir: Path) -> Iterator[str]:
    """node_exporter reading `textfile_dir`, up and answering; yields its metrics URL and stops it after."""
    port = _free_port()
    process = subprocess.Popen(
        [
            str(node_exporter_binary()),
            f"--web.listen-address=127.0.0.1:{port}",
            "--collector.disable-defaults",
            "--collector.textfile",
            f"--collector.textfile.directory={textfile_dir}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while True:
            try:
                with urllib.request.urlopen(url, timeout=1) as answer:
                    answer.read()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
