"""The IMDSv2 client against the project's strict fake IMDS over HTTP on 127.0.0.1, and the fake's rules."""

from __future__ import annotations

import json
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from structlog.testing import capture_logs

from agent.aws.imds import ImdsClient, RoleCredentials
from agent.aws.retry import Backoff, Deadline
from agent.errors import ConfigError, CredentialsError, ServiceUnavailable
from devtools.fakeimds import (
    FAKE_ACCESS_KEY_ID,
    FAKE_SECRET_ACCESS_KEY,
    FAKE_SESSION_TOKEN,
    ROLE_LIST_PATH,
    FakeImds,
)
from tests.timing import ManualClock, assert_ended_by, read_line

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKEN_PATH = "/latest/api/token"
REGION_PATH = "/latest/meta-data/placement/region"
TTL = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN = "X-aws-ec2-metadata-token"


@pytest.fixture
def fake() -> Iterator[FakeImds]:
    with FakeImds(region="eu-west-1", role="app-role") as server:
        yield server


@pytest.fixture
def raw() -> Iterator[requests.Session]:
    session = requests.Session()
    session.trust_env = False
    yield session
    session.close()


def make_client(url: str, deadline_seconds: float = 3.0, **kwargs: Any) -> ImdsClient:
    jitter = random.Random(7)  # noqa: S311  (backoff jitter, not cryptography)
    kwargs.setdefault("backoff", Backoff(cap=0.2, rng=jitter))
    return ImdsClient(url, Deadline(deadline_seconds), **kwargs)


def get_token(raw: requests.Session, url: str, ttl: str = "60") -> str:
    response = raw.put(url + TOKEN_PATH, headers={TTL: ttl}, timeout=2)
    assert response.status_code == 200
    return response.text


def closed_port() -> tuple[socket.socket, int]:
    """A bound, never-listening port: connecting to it is refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock, sock.getsockname()[1]


# -- the client --------------------------------------------------------------------------


def test_region_and_credentials_come_from_imds(fake: FakeImds) -> None:
    """The client returns the fake's region and the role's credentials."""
    with make_client(fake.url) as client:
        region = client.region()
        creds = client.role_credentials()
    assert region == "eu-west-1"
    assert creds.role == "app-role"
    assert creds.access_key_id == FAKE_ACCESS_KEY_ID
    assert creds.secret_access_key == FAKE_SECRET_ACCESS_KEY
    assert creds.token == FAKE_SESSION_TOKEN
    assert creds.expiration is not None
    assert creds.expiration.endswith("Z")


def test_normal_flow_takes_four_requests_on_one_connection(fake: FakeImds) -> None:
    """Region plus credentials cost one token, three reads and a single kept-alive connection."""
    with make_client(fake.url) as client:
        client.region()
        client.role_credentials()
    assert [(r.method, r.path, r.status) for r in fake.requests] == [
        ("PUT", TOKEN_PATH, 200),
        ("GET", REGION_PATH, 200),
        ("GET", ROLE_LIST_PATH, 200),
        ("GET", ROLE_LIST_PATH + "app-role", 200),
    ]
    assert all(r.had_token for r in fake.requests if r.method == "GET")
    assert fake.connections_accepted == 1


def test_token_is_reused_across_calls(fake: FakeImds) -> None:
    """Repeated reads reuse the one token instead of asking for a new one each time."""
    with make_client(fake.url) as client:
        for _ in range(3):
            client.role_credentials()
    assert fake.count("PUT") == 1
    assert fake.count("GET") == 6


def test_expired_token_is_renewed_once(fake: FakeImds) -> None:
    """A 401 on an expired token makes the client fetch one new token and retry the read."""
    with make_client(fake.url) as client:
        client.region()
        fake.expire_tokens()
        creds = client.role_credentials()
    assert creds.role == "app-role"
    assert fake.count("PUT") == 2
    assert [r.status for r in fake.requests if r.method == "GET"] == [200, 401, 200, 200]


def test_token_expiring_by_the_clock_is_renewed(clock: ManualClock) -> None:
    """A token whose lifetime ran out on the server's clock is replaced transparently."""
    with FakeImds(token_lifetime_seconds=5.0, clock=clock) as fake, make_client(fake.url) as client:
        client.region()
        clock.now += 5.0
        assert client.region() == "eu-west-1"
    assert fake.count("PUT") == 2
    assert fake.count("GET", REGION_PATH) == 3


def test_fresh_tokens_refused_until_the_deadline_are_named() -> None:
    """When even fresh tokens are refused, the client retries with new ones, then exit 7 names why."""
    with (
        FakeImds(token_lifetime_seconds=0.0) as fake,
        make_client(fake.url, deadline_seconds=0.5) as client,
        pytest.raises(ServiceUnavailable, match="refused a fresh session token") as caught,
    ):
        client.region()
    assert fake.count("PUT") > 2  # renewed again and again, not given up after one renewal
    assert not any(token in str(caught.value) for token in fake.issued_tokens)


def test_a_token_refused_twice_then_accepted_is_fine() -> None:
    """Tokens that expire twice in a row (IMDS restarting) are renewed, and the read then succeeds."""
    with FakeImds(token_lifetime_seconds=0.0) as fake, make_client(fake.url, deadline_seconds=3.0) as client:
        threading.Timer(0.3, lambda: setattr(fake, "token_lifetime_seconds", None)).start()
        assert client.region() == "eu-west-1"
    assert fake.count("PUT") > 2


def test_disabled_imds_fails_at_once_with_the_fix() -> None:
    """A 403 (IMDS turned off) is a CredentialsError naming the endpoint and the CLI fix, without retries."""
    with (
        FakeImds(disabled=True) as fake,
        make_client(fake.url, deadline_seconds=5.0) as client,
        pytest.raises(CredentialsError) as caught,
    ):
        client.role_credentials()
    message = str(caught.value)
    assert "IMDS is disabled or blocked" in message
    assert f"403 from {fake.url}" in message
    assert "modify-instance-metadata-options" in message
    assert "--http-endpoint enabled" in message
    assert caught.value.exit_code == 6
    # At once: one request, no retry (how fast that is, is not this test's business).
    assert fake.count() == 1


def test_no_role_attached_is_explained() -> None:
    """With no instance profile the client says so and how to attach one."""
    with FakeImds(role=None) as fake, make_client(fake.url) as client:
        assert client.region() == "eu-west-1"
        with pytest.raises(CredentialsError, match="no IAM role is attached to this instance") as caught:
            client.role_credentials()
    assert "associate-iam-instance-profile" in str(caught.value)
    assert fake.count("GET", ROLE_LIST_PATH) == 1


def test_unsuccessful_credentials_code_is_retried_then_named() -> None:
    """A document whose Code is not Success is retried to the deadline, then named with its code (exit 7)."""
    with FakeImds(credentials_code="AssumeRoleUnauthorizedAccess") as fake:
        client = make_client(fake.url, deadline_seconds=0.5)
        with pytest.raises(ServiceUnavailable, match="Code=AssumeRoleUnauthorizedAccess") as caught:
            client.role_credentials()
        client.close()
    assert caught.value.exit_code == 7
    assert fake.count("GET", ROLE_LIST_PATH + "app-role") > 1


_FULL_DOCUMENT = {
    "Code": "Success",
    "AccessKeyId": FAKE_ACCESS_KEY_ID,
    "SecretAccessKey": FAKE_SECRET_ACCESS_KEY,
    "Token": FAKE_SESSION_TOKEN,
    "Expiration": "2099-01-01T00:00:00Z",
}


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ('{"Code": "Success", "SecretAccessKey": "' + FAKE_SECRET_ACCESS_KEY, "not JSON"),
        (json.dumps([_FULL_DOCUMENT]), "not an object"),
        (json.dumps({**_FULL_DOCUMENT, "SecretAccessKey": ""}), "lacks SecretAccessKey"),
        (json.dumps({k: v for k, v in _FULL_DOCUMENT.items() if k != "Expiration"}), "lacks Expiration"),
        (json.dumps({**_FULL_DOCUMENT, "Expiration": "soon"}), "unreadable Expiration"),
        (
            json.dumps({**_FULL_DOCUMENT, "Expiration": "2020-01-01T00:00:00Z"}),
            "expired at 2020-01-01T00:00:00Z",
        ),
    ],
)
def test_bad_credentials_documents_are_retried_then_named_without_quoting(document: str, reason: str) -> None:
    """A document that is not whole, usable credentials is never used: retried, then exit 7 naming why."""
    with (
        FakeImds(raw_credentials_document=document) as fake,
        make_client(fake.url, deadline_seconds=0.5) as client,
        pytest.raises(ServiceUnavailable, match=reason) as caught,
    ):
        client.role_credentials()
    assert caught.value.exit_code == 7
    assert fake.count("GET", ROLE_LIST_PATH + "app-role") > 1
    assert FAKE_SECRET_ACCESS_KEY not in str(caught.value)
    assert FAKE_SESSION_TOKEN not in str(caught.value)


@pytest.mark.parametrize("garbled", [1, 2, 3, 4])
def test_a_proxy_page_in_place_of_any_answer_is_retried(garbled: int) -> None:
    """HTML pages with HTTP 200 in place of the token, region, role list or document are never believed."""
    with FakeImds(garble_next_n=garbled) as fake, make_client(fake.url) as client:
        region = client.region()
        creds = client.role_credentials()
    assert (region, creds.role, creds.secret_access_key) == ("eu-west-1", "app-role", FAKE_SECRET_ACCESS_KEY)
    assert fake.count() >= 4 + garbled


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        (TOKEN_PATH, "not a session token"),
        (REGION_PATH, "not a region name"),
    ],
)
def test_a_proxy_page_past_the_deadline_is_named(path: str, reason: str) -> None:
    """An endpoint that only ever answers with a page is exit 7 naming the request, never quoting it."""
    with (
        FakeImds(garble_next_n=10_000, garble_path=path) as fake,
        make_client(fake.url, deadline_seconds=0.5) as client,
        pytest.raises(ServiceUnavailable, match=reason) as caught,
    ):
        client.region()
    message = str(caught.value)
    assert path in message
    assert "blocked" not in message
    assert "AWS_EC2_METADATA_SERVICE_ENDPOINT" in message


def test_server_errors_are_retried_until_success() -> None:
    """503s from IMDS are retried with backoff and the flow then succeeds."""
    with FakeImds(fail_next_n=3) as fake, make_client(fake.url) as client:
        assert client.region() == "eu-west-1"
    assert [r.status for r in fake.requests] == [503, 503, 503, 200, 200]


def test_late_imds_is_waited_for() -> None:
    """When IMDS starts listening only after 1.5 s, the client keeps retrying and succeeds."""
    with FakeImds(start_after_seconds=1.5) as fake, make_client(fake.url, deadline_seconds=5.0) as client:
        started = time.monotonic()
        creds = client.role_credentials()
        elapsed = time.monotonic() - started
    assert creds.role == "app-role"
    assert elapsed >= 1.3
    assert_ended_by(elapsed, 1.5)


def test_imds_down_past_the_deadline_is_service_unavailable() -> None:
    """IMDS refusing connections for longer than the deadline ends in ServiceUnavailable soon after it."""
    with FakeImds(start_after_seconds=30.0) as fake:
        client = make_client(fake.url, deadline_seconds=1.5)
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable) as caught:
            client.role_credentials()
        elapsed = time.monotonic() - started
        client.close()
    message = str(caught.value)
    assert message.startswith(f"IMDS at {fake.url} did not answer within 1.5 s")
    assert "connection refused" in message
    assert "hop limit" in message
    assert caught.value.exit_code == 7
    assert elapsed >= 1.4
    assert_ended_by(elapsed, 1.5)


def test_slow_imds_times_out_per_attempt() -> None:
    """An IMDS slower than the per-request timeout is retried, then reported as not answering."""
    with FakeImds(delay_seconds=1.0) as fake:
        client = make_client(fake.url, deadline_seconds=0.8, timeout_seconds=0.25)
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable) as caught:
            client.region()
        elapsed = time.monotonic() - started
        client.close()
    assert_ended_by(elapsed, 0.8)
    # The last attempt's timeout: 0.25 s, or less when the deadline left less than that.
    reported = re.search(r"no answer within (0\.[0-9]+) s", str(caught.value))
    assert reported is not None, str(caught.value)
    assert 0 < float(reported.group(1)) <= 0.25


def test_proxy_environment_is_ignored(fake: FakeImds, monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP_PROXY and friends pointing at a dead proxy do not affect IMDS calls."""
    dead, dead_port = closed_port()
    try:
        for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{dead_port}")
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        # The environment really does send ordinary requests calls to the dead proxy.
        with pytest.raises(requests.exceptions.ProxyError):
            requests.put(fake.url + TOKEN_PATH, headers={TTL: "60"}, timeout=2)
        with make_client(fake.url) as client:
            assert client.role_credentials().role == "app-role"
    finally:
        dead.close()


def test_proxies_on_a_callers_session_are_ignored(fake: FakeImds) -> None:
    """Even a session the caller configured with a proxy talks to IMDS directly."""
    dead, dead_port = closed_port()
    session = requests.Session()
    session.proxies = {"http": f"http://127.0.0.1:{dead_port}", "all": f"http://127.0.0.1:{dead_port}"}
    try:
        client = make_client(fake.url, session=session)
        assert client.region() == "eu-west-1"
        client.close()
    finally:
        session.close()
        dead.close()


def test_credentials_repr_hides_secrets(fake: FakeImds) -> None:
    """repr and str of RoleCredentials show the role and key hint but never the secret or token."""
    with make_client(fake.url) as client:
        creds = client.role_credentials()
    for text in (repr(creds), str(creds), f"{creds}", repr([creds])):
        assert FAKE_SECRET_ACCESS_KEY not in text
        assert FAKE_SESSION_TOKEN not in text
        assert "app-role" in text
    direct = RoleCredentials("r", "AKIAEXAMPLEKEY123456", "s3cr3t-value", "t0ken-value", None)
    assert "s3cr3t-value" not in repr(direct)
    assert "t0ken-value" not in repr(direct)


def test_logs_hold_no_token_or_secret() -> None:
    """Log events across a renewal and a full credentials fetch carry no token and no secret."""
    with FakeImds() as fake, capture_logs() as events, make_client(fake.url) as client:
        client.region()
        fake.expire_tokens()
        client.role_credentials()
    assert events
    logged = json.dumps(events, default=str)
    for secret in (*fake.issued_tokens, FAKE_SECRET_ACCESS_KEY, FAKE_SESSION_TOKEN):
        assert secret not in logged


def test_endpoint_must_be_an_http_url() -> None:
    """A malformed endpoint is a ConfigError naming the setting to fix."""
    with pytest.raises(ConfigError, match="AWS_EC2_METADATA_SERVICE_ENDPOINT"):
        ImdsClient("169.254.169.254", Deadline(1.0))


# -- the fake's own strictness, checked with raw HTTP -------------------------------------


@pytest.mark.parametrize("ttl", ["1", "21600"])
def test_fake_issues_tokens_for_ttls_in_range(fake: FakeImds, raw: requests.Session, ttl: str) -> None:
    """PUT /latest/api/token with a TTL of 1..21600 returns a token and echoes the TTL."""
    response = raw.put(fake.url + TOKEN_PATH, headers={TTL: ttl}, timeout=2)
    assert response.status_code == 200
    assert len(response.text) >= 32
    assert response.headers[TTL] == ttl


@pytest.mark.parametrize("ttl", [None, "0", "21601", "-5", "1.5", "abc", ""])
def test_fake_rejects_bad_ttls(fake: FakeImds, raw: requests.Session, ttl: str | None) -> None:
    """A token request whose TTL is missing, out of range or not an integer is a 400."""
    headers = {} if ttl is None else {TTL: ttl}
    assert raw.put(fake.url + TOKEN_PATH, headers=headers, timeout=2).status_code == 400


def test_fake_refuses_tokens_through_a_proxy(fake: FakeImds, raw: requests.Session) -> None:
    """A token request carrying X-Forwarded-For is a 403."""
    headers = {TTL: "60", "X-Forwarded-For": "10.0.0.1"}
    assert raw.put(fake.url + TOKEN_PATH, headers=headers, timeout=2).status_code == 403


def test_fake_token_path_only_takes_put(fake: FakeImds, raw: requests.Session) -> None:
    """GET or POST on the token path is a 405."""
    assert raw.get(fake.url + TOKEN_PATH, headers={TTL: "60"}, timeout=2).status_code == 405
    assert raw.post(fake.url + TOKEN_PATH, headers={TTL: "60"}, timeout=2).status_code == 405


def test_fake_has_no_imdsv1_fallback(fake: FakeImds, raw: requests.Session) -> None:
    """Reads without a token, or with an unknown one, are 401 whatever the path."""
    for path in (REGION_PATH, ROLE_LIST_PATH, ROLE_LIST_PATH + "app-role", "/no/such/path"):
        assert raw.get(fake.url + path, timeout=2).status_code == 401
        assert raw.get(fake.url + path, headers={TOKEN: "forged"}, timeout=2).status_code == 401


def test_fake_serves_metadata_with_a_token(fake: FakeImds, raw: requests.Session) -> None:
    """With a valid token the fake serves the region, the role and a complete credentials document."""
    headers = {TOKEN: get_token(raw, fake.url)}
    assert raw.get(fake.url + REGION_PATH, headers=headers, timeout=2).text == "eu-west-1"
    assert raw.get(fake.url + ROLE_LIST_PATH, headers=headers, timeout=2).text == "app-role"
    document = raw.get(fake.url + ROLE_LIST_PATH + "app-role", headers=headers, timeout=2).json()
    assert set(document) == {
        "Code",
        "LastUpdated",
        "Type",
        "AccessKeyId",
        "SecretAccessKey",
        "Token",
        "Expiration",
    }
    assert document["Code"] == "Success"
    assert document["Type"] == "AWS-HMAC"
    assert raw.get(fake.url + "/latest/meta-data/nope", headers=headers, timeout=2).status_code == 404
    assert raw.get(fake.url + ROLE_LIST_PATH + "other", headers=headers, timeout=2).status_code == 404


def test_fake_tokens_expire_by_the_clock(raw: requests.Session, clock: ManualClock) -> None:
    """A token stops working once its TTL has passed on the server's clock."""
    with FakeImds(clock=clock) as fake:
        headers = {TOKEN: get_token(raw, fake.url, ttl="10")}
        clock.now += 9.9
        assert raw.get(fake.url + REGION_PATH, headers=headers, timeout=2).status_code == 200
        clock.now += 0.1
        assert raw.get(fake.url + REGION_PATH, headers=headers, timeout=2).status_code == 401


def test_fake_expire_tokens_invalidates_all(fake: FakeImds, raw: requests.Session) -> None:
    """expire_tokens() turns every issued token into a 401."""
    headers = {TOKEN: get_token(raw, fake.url)}
    fake.expire_tokens()
    assert raw.get(fake.url + REGION_PATH, headers=headers, timeout=2).status_code == 401


def test_fake_without_role_has_no_credentials_entry(raw: requests.Session) -> None:
    """With no role attached the credentials listing is a 404."""
    with FakeImds(role=None) as fake:
        headers = {TOKEN: get_token(raw, fake.url)}
        assert raw.get(fake.url + ROLE_LIST_PATH, headers=headers, timeout=2).status_code == 404


def test_fake_disabled_forbids_everything(raw: requests.Session) -> None:
    """A disabled fake answers 403 to token requests and reads alike."""
    with FakeImds(disabled=True) as fake:
        assert raw.put(fake.url + TOKEN_PATH, headers={TTL: "60"}, timeout=2).status_code == 403
        assert raw.get(fake.url + REGION_PATH, headers={TOKEN: "x"}, timeout=2).status_code == 403


def test_fake_fails_the_next_n_requests(raw: requests.Session) -> None:
    """fail_next_n answers that many requests with 503 and then serves normally."""
    with FakeImds(fail_next_n=2) as fake:
        statuses = [raw.put(fake.url + TOKEN_PATH, headers={TTL: "60"}, timeout=2) for _ in range(3)]
    assert [response.status_code for response in statuses] == [503, 503, 200]


def test_fake_delays_responses(raw: requests.Session) -> None:
    """delay_seconds holds every response back by that long."""
    with FakeImds(delay_seconds=0.3) as fake:
        started = time.monotonic()
        raw.put(fake.url + TOKEN_PATH, headers={TTL: "60"}, timeout=2)
        assert time.monotonic() - started >= 0.3


def test_fake_refuses_connections_until_started(raw: requests.Session) -> None:
    """With start_after_seconds the port is taken at once but refuses connections until then."""
    with FakeImds(start_after_seconds=0.3) as fake:
        with pytest.raises(requests.ConnectionError, match="Connection refused"):
            raw.put(fake.url + TOKEN_PATH, headers={TTL: "60"}, timeout=2)
        time.sleep(0.3 + 0.2)
        assert raw.put(fake.url + TOKEN_PATH, headers={TTL: "60"}, timeout=2).status_code == 200


def test_fake_counts_requests(fake: FakeImds, raw: requests.Session) -> None:
    """count() filters recorded requests by method and path prefix."""
    headers = {TOKEN: get_token(raw, fake.url)}
    raw.get(fake.url + REGION_PATH, headers=headers, timeout=2)
    raw.get(fake.url + ROLE_LIST_PATH, timeout=2)
    assert fake.count() == 3
    assert fake.count("GET") == 2
    assert fake.count(path_prefix="/latest/meta-data/") == 2
    assert fake.count("GET", ROLE_LIST_PATH) == 1
    assert [r.status for r in fake.requests] == [200, 200, 401]


def test_fake_stop_drops_kept_alive_connections(raw: requests.Session) -> None:
    """After stop() a client's pooled connection no longer reaches the fake."""
    fake = FakeImds()
    url = fake.start()
    headers = {TOKEN: get_token(raw, url)}
    fake.stop()
    with pytest.raises(requests.ConnectionError):
        raw.get(url + REGION_PATH, headers=headers, timeout=2)


def test_fake_cli_prints_its_url_and_stops_on_sigterm(raw: requests.Session) -> None:
    """`python -m devtools.fakeimds` prints a working URL on one line and exits 0 on SIGTERM."""
    command = [
        sys.executable,
        "-m",
        "devtools.fakeimds",
        "--port",
        "0",
        "--region",
        "ap-south-1",
        "--role",
        "cli",
    ]
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        url = read_line(process.stdout, 30.0, "the fake's URL line").strip()
        assert url.startswith("http://127.0.0.1:")
        headers = {TOKEN: get_token(raw, url)}
        assert raw.get(url + REGION_PATH, headers=headers, timeout=2).text == "ap-south-1"
        assert raw.get(url + ROLE_LIST_PATH, headers=headers, timeout=2).text == "cli"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
