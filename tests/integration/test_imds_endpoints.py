"""imds_endpoint_mode against the strict fake IMDS over real HTTP: auto races a token request to each
address and keeps the first that answers, an explicit endpoint wins over every mode.

The modes' real addresses (169.254.169.254, [fd00:ec2::254]) are never contacted here: the tests put
the fakes' loopback addresses in the agent's table of addresses per mode (its own data); the
system tests (tests/system/test_endpoint_modes.py) run the real addresses in network namespaces.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.aws import imds_endpoints
from agent.aws.imds import REGION_PATH, TOKEN_PATH
from agent.aws.imds_endpoints import candidates, choose_endpoint, open_client
from agent.aws.retry import Backoff, Deadline
from agent.config import AgentSettings, load_agent_settings
from agent.errors import ServiceUnavailable
from devtools.fakeimds import FakeImds
from tests.prerequisites import skip_or_fail
from tests.timing import assert_ended_by

NOWHERE = "http://127.0.0.1:9"


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.fixture
def fake() -> Iterator[FakeImds]:
    with FakeImds(region="eu-west-1", role="app-role") as server:
        yield server


@pytest.fixture
def fake6() -> Iterator[FakeImds]:
    if not _has_ipv6_loopback():
        skip_or_fail("an IPv6 loopback (::1) on this host")
    with FakeImds(host="::1", region="eu-west-1", role="app-role") as server:
        yield server


def _auto(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *addresses: str) -> AgentSettings:
    """Default settings (mode auto), with `addresses` standing in for the two real ones."""
    monkeypatch.setitem(imds_endpoints.ENDPOINTS_BY_MODE, "auto", tuple(addresses))
    return load_agent_settings({}, config_dir=str(tmp_path))


def test_auto_takes_the_address_that_answers_and_reuses_its_token(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake6: FakeImds
) -> None:
    """IPv4 refused, IPv6 answering (an IPv6-only subnet): the IPv6 address is chosen, its token is
    used for the reads, and no second token is asked for."""
    settings = _auto(monkeypatch, tmp_path, NOWHERE, fake6.url)
    client = open_client(settings, Deadline(5))
    try:
        assert client.endpoint == fake6.url
        assert client.region() == "eu-west-1"
        assert client.role_credentials().role == "app-role"
    finally:
        client.close()
    assert fake6.count("PUT") == 1


def test_auto_with_both_answering_takes_one_of_them_and_names_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake: FakeImds, fake6: FakeImds
) -> None:
    """Both addresses answer (a dual-stack subnet): one is chosen, and the reason names the mode."""
    settings = _auto(monkeypatch, tmp_path, fake.url, fake6.url)
    choice = choose_endpoint(settings, Deadline(5))
    assert choice.endpoint in (fake.url, fake6.url)
    assert choice.why.startswith("imds_endpoint_mode = auto (default): answered first")
    assert choice.token in fake.issued_tokens + fake6.issued_tokens


def test_a_token_beats_a_refusal(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake: FakeImds) -> None:
    """An address answering 403 (IMDS disabled there) loses to one that grants a token."""
    with FakeImds(disabled=True) as disabled:
        settings = _auto(monkeypatch, tmp_path, disabled.url, fake.url)
        assert choose_endpoint(settings, Deadline(5)).endpoint == fake.url


def test_a_refusal_alone_is_taken_so_the_client_names_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Only a disabled IMDS answers: it is chosen (no token), and the client then reports IMDS's 403."""
    with FakeImds(disabled=True) as disabled:
        settings = _auto(monkeypatch, tmp_path, NOWHERE, disabled.url)
        choice = choose_endpoint(settings, Deadline(5))
    assert (choice.endpoint, choice.token) == (disabled.url, None)


def test_auto_keeps_trying_until_imds_comes_up(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """At boot IMDS may answer late: the race is run again (with backoff) until one address answers."""
    with FakeImds(start_after_seconds=0.5) as late:
        settings = _auto(monkeypatch, tmp_path, NOWHERE, late.url)
        choice = choose_endpoint(settings, Deadline(10), backoff=Backoff(base=0.05, cap=0.2))
    assert choice.endpoint == late.url


def test_nothing_answering_fails_within_the_deadline_naming_each_address(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No address answers: ServiceUnavailable (exit 7) within the deadline, naming every address, its
    error, the mode and the fixes (IPv6 endpoint, mode, explicit endpoint)."""
    settings = _auto(monkeypatch, tmp_path, NOWHERE, "http://127.0.0.1:7")
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable) as failed:
        choose_endpoint(settings, Deadline(1.5), backoff=Backoff(base=0.05, cap=0.2))
    assert_ended_by(time.monotonic() - started, 1.5)
    message = failed.value.message
    assert "http://127.0.0.1:9: connection refused" in message
    assert "http://127.0.0.1:7: connection refused" in message
    assert "imds_endpoint_mode = auto (default)" in message
    assert "--http-protocol-ipv6 enabled" in message


@pytest.mark.parametrize("mode", ["auto", "ipv4", "ipv6", "IPv6"])
@pytest.mark.parametrize("how", ["AWS_EC2_METADATA_SERVICE_ENDPOINT", "imds_endpoint"])
def test_explicit_imds_endpoint_wins_over_every_mode(
    tmp_path: Path, fake: FakeImds, mode: str, how: str
) -> None:
    """An explicit endpoint (variable or agent.toml) is the only address asked, whatever the mode
    (from the environment or the file)."""
    env = {"AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE": mode}
    if how == "imds_endpoint":
        (tmp_path / "agent.toml").write_text(f'imds_endpoint = "{fake.url}"\nimds_endpoint_mode = "ipv6"\n')
    else:
        env[how] = fake.url
    settings = load_agent_settings(env, config_dir=str(tmp_path))
    assert candidates(settings) == (fake.url,)
    client = open_client(settings, Deadline(5))
    try:
        assert client.region() == "eu-west-1"
    finally:
        client.close()
    assert {request.path for request in fake.requests} == {TOKEN_PATH, REGION_PATH}


@pytest.mark.parametrize(
    ("env", "toml", "expected"),
    [
        ({}, "", ("http://169.254.169.254", "http://[fd00:ec2::254]")),
        ({}, 'imds_endpoint_mode = "ipv6"\n', ("http://[fd00:ec2::254]",)),
        (
            {"AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE": "IPv4"},
            'imds_endpoint_mode = "ipv6"\n',
            ("http://169.254.169.254",),
        ),
    ],
)
def test_mode_picks_the_addresses_and_the_environment_wins(
    tmp_path: Path, env: dict[str, str], toml: str, expected: tuple[str, ...]
) -> None:
    """auto (the default) asks both addresses, ipv4 / ipv6 one; the environment wins over agent.toml."""
    (tmp_path / "agent.toml").write_text(toml)
    assert candidates(load_agent_settings(env, config_dir=str(tmp_path))) == expected


class _Trickler:
    """A peer that accepts every connection and sends a valid token answer one byte at a time, a
    byte every `interval` seconds (a metadata proxy or a redirect that drips), counting what it sent."""

    ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 21\r\nConnection: close\r\n\r\nAQAEAtrickledtoken==="

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.sent = 0
        self.finished = threading.Event()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with self._server:
            self._server.settimeout(0.2)
            while not self._stop.is_set():
                try:
                    peer, _ = self._server.accept()
                except OSError:
                    continue
                threading.Thread(target=self._drip, args=(peer,), daemon=True).start()

    def _drip(self, peer: socket.socket) -> None:
        with peer:
            for byte in self.ANSWER:
                if self._stop.wait(self.interval):
                    return
                try:
                    peer.sendall(bytes([byte]))
                except OSError:
                    return
                self.sent += 1
            self.finished.set()

    def close(self) -> None:
        self._stop.set()


def test_a_trickling_peer_cannot_stretch_the_race_past_its_deadline(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A peer that accepts and sends its answer a byte at a time, each byte well within the timeout,
    gets no more than the race's one deadline: the race gives up (exit 7) while the peer is still
    dripping, instead of waiting for the whole answer and taking its token."""
    trickler = _Trickler(interval=0.1)  # the whole answer takes about 8 s
    try:
        settings = _auto(monkeypatch, tmp_path, NOWHERE, trickler.url)
        with pytest.raises(ServiceUnavailable) as failed:
            choose_endpoint(settings, Deadline(1.0), timeout_seconds=0.5, backoff=Backoff(base=0.05, cap=0.1))
        assert not trickler.finished.is_set()
        assert trickler.sent < len(_Trickler.ANSWER)
        assert f"{trickler.url}: no answer before the timeout" in failed.value.message
    finally:
        trickler.close()
    # Control: with the same peer dripping fast enough, the race takes its token.
    fast = _Trickler(interval=0.001)
    try:
        choice = choose_endpoint(
            _auto(monkeypatch, tmp_path, NOWHERE, fast.url),
            Deadline(10),
            timeout_seconds=5,
            backoff=Backoff(base=0.05),
        )
        assert (choice.endpoint, choice.token) == (fast.url, "AQAEAtrickledtoken===")
    finally:
        fast.close()
