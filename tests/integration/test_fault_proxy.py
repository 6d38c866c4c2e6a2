"""The fault proxy itself: each fault is what its name says on the wire, and a seed replays a run."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest

from devtools.fakeimds import FakeImds
from tests.integration.faults import HTML_MARKER, FaultPlan, FaultProxy, Injection
from tests.integration.moto_server import admin_ssm_client

NAMES = ["/proxy/a", "/proxy/b", "/proxy/c"]


@pytest.fixture
def ssm_proxy(clean_moto_url: str) -> Iterator[FaultProxy]:
    """A fault proxy in front of moto holding three parameters."""
    admin = admin_ssm_client(clean_moto_url)
    for name in NAMES:
        admin.put_parameter(Name=name, Value=f"value of {name}", Type="String")
    with FaultProxy(clean_moto_url) as proxy:
        yield proxy


@pytest.fixture
def imds_proxy() -> Iterator[FaultProxy]:
    """A fault proxy in front of the fake IMDS."""
    with FakeImds() as imds, FaultProxy(imds.url, expire_tokens=imds.expire_tokens) as proxy:
        yield proxy


def _connect(proxy: FaultProxy) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", int(proxy.url.rsplit(":", 1)[1]), timeout=5)


def _request_parameters(connection: http.client.HTTPConnection) -> http.client.HTTPResponse:
    """Send one raw GetParameters call (moto reads the region from the credential scope)."""
    connection.request(
        "POST",
        "/",
        body=json.dumps({"Names": NAMES, "WithDecryption": True}),
        headers={
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": "AmazonSSM.GetParameters",
            "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20260101/eu-west-1/ssm/aws4_request, "
            "SignedHeaders=host, Signature=0",
        },
    )
    return connection.getresponse()


def _get_parameters(proxy: FaultProxy) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One GetParameters call through the proxy: status, headers and the body as read."""
    connection = _connect(proxy)
    try:
        response = _request_parameters(connection)
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def _put_token(proxy: FaultProxy) -> tuple[int, bytes]:
    connection = _connect(proxy)
    try:
        connection.request("PUT", "/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _answered_names(body: bytes) -> list[str]:
    answer: dict[str, Any] = json.loads(body)
    return sorted(
        [str(p["Name"]) for p in answer.get("Parameters", [])] + list(answer.get("InvalidParameters", []))
    )


def test_a_seed_replays_the_same_faults(imds_proxy: FaultProxy) -> None:
    """The same plan over the same requests gives the same decisions, and another seed other ones."""

    def decisions(seed: int) -> list[Injection]:
        imds_proxy.plan = FaultPlan(kinds=("http_500", "html_200"), rate=0.5, seed=seed)
        for _ in range(30):
            _put_token(imds_proxy)
        return imds_proxy.injections

    first, again, other = decisions(42), decisions(42), decisions(43)
    assert first == again
    assert first != other
    assert {i.fault for i in first} == {"pass", "http_500", "html_200"}


def test_forwarded_answers_are_the_servers(ssm_proxy: FaultProxy) -> None:
    """With no fault the proxy hands on moto's answer whole."""
    status, _, body = _get_parameters(ssm_proxy)
    assert status == 200
    assert _answered_names(body) == NAMES
    assert ssm_proxy.faults_given() == []


def test_wrong_shape_leaves_one_name_out_of_both_lists(ssm_proxy: FaultProxy) -> None:
    """A wrong-shape answer is valid JSON, status 200, missing one of the names asked for."""
    ssm_proxy.plan = FaultPlan(kinds=("wrong_shape",), rate=1.0, seed=1)
    status, _, body = _get_parameters(ssm_proxy)
    assert status == 200
    answered = _answered_names(body)
    assert len(answered) == len(NAMES) - 1
    assert set(answered) < set(NAMES)


def test_truncated_json_is_a_complete_message_with_a_cut_body(ssm_proxy: FaultProxy) -> None:
    """A truncated body arrives whole as HTTP (Content-Length matches) but is not JSON."""
    ssm_proxy.plan = FaultPlan(kinds=("truncated_json",), rate=1.0, seed=2)
    status, headers, body = _get_parameters(ssm_proxy)
    assert status == 200
    assert len(body) == int(headers["Content-Length"])
    with pytest.raises(ValueError, match=r"Expecting|Unterminated|Extra data|Invalid"):
        json.loads(body)


def test_html_200_is_a_page(ssm_proxy: FaultProxy) -> None:
    """An HTML fault is a 200 carrying a block page, not SSM's JSON."""
    ssm_proxy.plan = FaultPlan(kinds=("html_200",), rate=1.0, seed=3)
    status, headers, body = _get_parameters(ssm_proxy)
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert HTML_MARKER.encode() in body


def test_reset_mid_body_cuts_the_body_short_of_its_length(ssm_proxy: FaultProxy) -> None:
    """A reset sends the real Content-Length and part of the body, then aborts the connection."""
    ssm_proxy.plan = FaultPlan(kinds=("reset_mid_body",), rate=1.0, seed=4)
    connection = _connect(ssm_proxy)
    try:
        response = _request_parameters(connection)
        assert response.status == 200
        assert int(response.headers["Content-Length"]) > 2
        # The RST reaches the client while it reads the body: ECONNRESET, or EOF before the length.
        with pytest.raises((ConnectionResetError, http.client.IncompleteRead)):
            response.read()
    finally:
        connection.close()


def test_drop_closes_without_an_answer(ssm_proxy: FaultProxy) -> None:
    """A dropped connection gives no status line at all."""
    ssm_proxy.plan = FaultPlan(kinds=("drop",), rate=1.0, seed=5)
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
        _get_parameters(ssm_proxy)


@pytest.mark.parametrize(
    ("kind", "expect"),
    [
        ("http_500", lambda status, body: status == 500 and b"InternalServerError" in body),
        ("http_503", lambda status, body: status == 503),
        ("throttling", lambda status, body: status == 400 and b"ThrottlingException" in body),
    ],
)
def test_error_statuses_are_canned(ssm_proxy: FaultProxy, kind: str, expect: Any) -> None:
    """Error faults answer with their status and, for AWS's errors, AWS's JSON error shape."""
    ssm_proxy.plan = FaultPlan(kinds=(kind,), rate=1.0, seed=6)
    status, _, body = _get_parameters(ssm_proxy)
    assert expect(status, body)


def _credentials_document(proxy: FaultProxy) -> bytes:
    token = _put_token(proxy)[1].decode()
    connection = _connect(proxy)
    try:
        connection.request(
            "GET",
            "/latest/meta-data/iam/security-credentials/app-role",
            headers={"X-aws-ec2-metadata-token": token},
        )
        response = connection.getresponse()
        assert response.status == 200
        return response.read()
    finally:
        connection.close()


def _is_spoilt(kind: str, body: bytes) -> bool:
    try:
        document = json.loads(body)
    except ValueError:
        return kind == "creds_not_json"
    if kind == "creds_missing_field":
        return not {"AccessKeyId", "SecretAccessKey", "Token"} <= set(document)
    if kind == "creds_expired":
        return str(document["Expiration"]) < datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return kind == "creds_failed_code" and document["Code"] != "Success"


@pytest.mark.parametrize(
    "kind", ["creds_not_json", "creds_missing_field", "creds_expired", "creds_failed_code"]
)
def test_credentials_faults_spoil_only_the_document(imds_proxy: FaultProxy, kind: str) -> None:
    """Each credentials fault spoils the role's document as named; the token before it passes."""
    imds_proxy.plan = FaultPlan(kinds=(kind,), rate=1.0, seed=7)
    body = _credentials_document(imds_proxy)
    assert _is_spoilt(kind, body)
    assert [i.fault for i in imds_proxy.injections] == ["pass", kind]


def test_token_expired_makes_imds_refuse_the_token(imds_proxy: FaultProxy) -> None:
    """A token-expired fault lets the read reach IMDS only after every token has died: 401."""
    token = _put_token(imds_proxy)[1].decode()
    imds_proxy.plan = FaultPlan(kinds=("token_expired",), rate=1.0, seed=8)
    connection = _connect(imds_proxy)
    connection.request(
        "GET", "/latest/meta-data/placement/region", headers={"X-aws-ec2-metadata-token": token}
    )
    assert connection.getresponse().status == 401
    connection.close()
