"""Suite-wide guards: no test reaches AWS, the real IMDS or any address off this machine."""

from __future__ import annotations

import ipaddress
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.prerequisites import skip_or_fail
from tests.system.nspawn import TEST_NETWORKS, Release, releases_under_test
from tests.timing import MACHINE_TIMEOUT_SECONDS, ManualClock

_LOCAL_NAMES = {"localhost", "127.0.0.1", "::1"}
_TEST_NETWORKS = ipaddress.ip_network(TEST_NETWORKS)


def _network_namespace(path: str) -> int:
    try:
        return os.stat(path).st_ino
    except OSError:
        return 0


# The session's own network namespace: a thread found in another one entered a namespace a test
# created (devtools/netns.py), which holds only the test's own fakes and machine.
_HOST_NETWORK = _network_namespace("/proc/self/ns/net")


def _in_test_network_namespace() -> bool:
    here = _network_namespace(f"/proc/self/task/{threading.get_native_id()}/ns/net")
    return here not in (0, _HOST_NETWORK)


def _is_local(host: Any) -> bool:
    if not isinstance(host, str):
        return True  # AF_UNIX paths and abstract sockets stay on this machine
    if host in _LOCAL_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    # The host's own end of a network namespace a test made: still this machine.
    return address.is_loopback or address in _TEST_NETWORKS


def _refuse_remote_connections(event: str, args: tuple[Any, ...]) -> None:
    # An audit hook sees every connect() this process makes, whatever library makes it,
    # without patching any of them.
    if event not in ("socket.connect", "socket.getaddrinfo"):
        return
    if event == "socket.connect":
        address = args[1]
        host = address[0] if isinstance(address, tuple) else address
    else:
        host = args[0]
    if not _is_local(host) and not _in_test_network_namespace():
        raise ConnectionRefusedError(
            f"test tried to reach {host!r}: tests may only talk to 127.0.0.1 or {TEST_NETWORKS} "
            "(set the IMDS and SSM endpoints to the local fakes)"
        )


sys.addaudithook(_refuse_remote_connections)

# boto3's default chain must never find a developer's real credentials or profile.
for _var in [v for v in os.environ if v.startswith("AWS_")]:
    del os.environ[_var]
os.environ["AWS_CONFIG_FILE"] = os.devnull
os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
# The audit hook above guards this process only. A child process (an agent a test starts) that
# was not pointed at a fake gets a closed loopback port (discard, 9) instead of 169.254.169.254
# or AWS's endpoints, so it fails at once on this machine and never leaves it.
DEAD_LOCAL_ENDPOINT = "http://127.0.0.1:9"
os.environ["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = DEAD_LOCAL_ENDPOINT
os.environ["AWS_ENDPOINT_URL"] = DEAD_LOCAL_ENDPOINT


def _memory_backed_root() -> str:
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        points = {line.split()[1]: line.split()[2] for line in mounts}
    for candidate in ("/run", "/dev/shm"):
        if points.get(candidate) in ("tmpfs", "ramfs"):
            return candidate
    skip_or_fail("a tmpfs at /run or /dev/shm")


@pytest.fixture
def tmpfs_path() -> Iterator[Any]:
    """A fresh empty folder on tmpfs (/run where it is tmpfs, else /dev/shm), removed afterwards."""
    import shutil
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp(prefix="secrets-agent-test-", dir=_memory_backed_root()))
    yield path
    shutil.rmtree(path, ignore_errors=True)
    # Where the records root reads live (the render record, what the last check found, the kept set
    # and the stale mark) when `path` is the runtime folder.
    shutil.rmtree(path.with_name(path.name + "-state"), ignore_errors=True)


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """moto's server on 127.0.0.1, started once for the session and shared by every layer (the
    system tests' machines reach it through the host network they share)."""
    from tests.integration.moto_server import moto_server

    with moto_server() as url:
        yield url


@pytest.fixture
def clock() -> ManualClock:
    """The suite's hand-moved monotonic clock (tests/timing.py), for code that takes a `clock`."""
    return ManualClock()


@pytest.fixture
def disk_path(tmp_path: Any) -> Iterator[Any]:
    """A fresh empty folder on a persistent (not memory-backed) file system: tmp_path where it is on
    disk, else below /var/tmp; removed afterwards."""
    import shutil
    import tempfile
    from pathlib import Path

    from agent.host.output import is_memory_backed

    def on_disk(folder: str) -> bool:
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return not is_memory_backed(descriptor)
        finally:
            os.close(descriptor)

    if on_disk(str(tmp_path)):
        yield tmp_path
        return
    if not (os.path.isdir("/var/tmp") and on_disk("/var/tmp")):
        skip_or_fail("a folder on a persistent file system (tmp_path and /var/tmp are both in memory)")
    path = Path(tempfile.mkdtemp(prefix="secrets-agent-test-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def _restore_umask() -> Iterator[None]:
    """The CLI sets umask 077 for its whole process, as it should; in-process tests must not
    hand that to the next test."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield
    os.umask(previous)


_MACHINE_LAYERS = ("packaging", "system")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give the machine-building tests (tests/system, tests/packaging, the `system` marker) the longer
    timeout, unless a test sets its own."""
    for item in items:
        if item.get_closest_marker("timeout") is not None:
            continue
        layer = item.path.parent.name
        if layer in _MACHINE_LAYERS or item.get_closest_marker("system") is not None:
            item.add_marker(pytest.mark.timeout(MACHINE_TIMEOUT_SECONDS))


@pytest.fixture(scope="session", params=releases_under_test(), ids=lambda release: release.suite)
def release(request: pytest.FixtureRequest) -> Release:
    """The Debian release a container test runs on: every test that asks for it (or for the system
    tests' `machine`) runs once per release, Debian 12 and 13 unless SECRETS_AGENT_TEST_RELEASES
    narrows them. Session-scoped, so pytest runs one release's tests together and each release's
    machine boots once per session."""
    chosen: Release = request.param
    return chosen
