"""How the one reader of botocore's exceptions (SsmCaller._classify) reads a failed name lookup, in the
shapes botocore leaves it with urllib3 2 (the venv, the wheel) and urllib3 1.26 (Debian 12's .deb).

tests/integration/test_faults.py meets the same failures from glibc's real resolver; these cases pin
down the urllib3 1.26 shape, which the venv cannot produce.
"""

from __future__ import annotations

import socket
from typing import Any, Callable

import pytest
import urllib3.exceptions
from botocore.config import Config
from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError

from agent.aws.clients import create_client
from agent.aws.retry import Deadline, Kind
from agent.aws.ssm_call import SsmCaller
from agent.errors import ConfigError

HOST = "ssm.typo.test"
URL = f"http://{HOST}:443"


def _urllib3_2(lookup: socket.gaierror) -> BaseException:
    """urllib3 2: NameResolutionError raised `from` the gaierror."""
    try:
        raise urllib3.exceptions.NameResolutionError(HOST, None, lookup) from lookup
    except urllib3.exceptions.NameResolutionError as error:
        return error


def _urllib3_1_26(lookup: socket.gaierror) -> BaseException:
    """urllib3 1.26: NewConnectionError raised while handling the gaierror (its context)."""
    try:
        try:
            raise lookup
        except OSError:
            raise urllib3.exceptions.NewConnectionError(None, "Failed to establish a new connection")  # noqa: B904
    except urllib3.exceptions.NewConnectionError as error:
        return error


SHAPES: dict[str, Callable[[socket.gaierror], BaseException]] = {
    "urllib3-2": _urllib3_2,
    "urllib3-1.26": _urllib3_1_26,
}


def _caller(*, explicit: bool) -> SsmCaller:
    client = create_client(
        "ssm", region="eu-west-1", endpoint_url=URL, credentials=("testing", "testing", ""), config=Config()
    )
    return SsmCaller(client, Deadline(1.0), endpoint_url=URL if explicit else None)


def _classify(caller: SsmCaller, error: Exception) -> Any:
    return caller._classify(error, "GetParameters", ["/x"])


def _lookup(code: int, text: str) -> socket.gaierror:
    return socket.gaierror(code, text)


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize(
    ("code", "text", "explicit", "expected"),
    [
        (socket.EAI_AGAIN, "Temporary failure in name resolution", True, "outage"),
        (socket.EAI_AGAIN, "Temporary failure in name resolution", False, "outage"),
        (socket.EAI_NONAME, "Name or service not known", False, "outage"),
        (socket.EAI_NONAME, "Name or service not known", True, "settings"),
        (socket.EAI_NODATA, "No address associated with hostname", True, "settings"),
    ],
)
def test_a_failed_lookup_is_an_outage_unless_an_explicit_host_does_not_exist(
    shape: str, code: int, text: str, explicit: bool, expected: str
) -> None:
    """A lookup that failed for now is an outage naming the host; a host that does not exist is a
    settings error (exit 2) naming the setting when the operator wrote it, an outage when AWS did."""
    error = EndpointConnectionError(endpoint_url=URL, error=SHAPES[shape](_lookup(code, text)))
    caller = _caller(explicit=explicit)
    if expected == "settings":
        with pytest.raises(ConfigError) as raised:
            _classify(caller, error)
        assert raised.value.exit_code == 2
        assert f"{HOST}: {text}" in raised.value.message
        assert "ssm_endpoint" in raised.value.message
        return
    failure = _classify(caller, error)
    assert failure.kind is Kind.OUTAGE
    assert failure.error == f"DNS lookup of {HOST} failed ({text})"


def test_a_connection_error_without_a_lookup_stays_a_plain_outage() -> None:
    """Control: a connect timeout (no gaierror anywhere in its chain) is the outage it always was."""
    failure = _classify(_caller(explicit=True), ConnectTimeoutError(endpoint_url=URL))
    assert failure.kind is Kind.OUTAGE
    assert failure.error == "ConnectTimeoutError"
