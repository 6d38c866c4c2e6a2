"""Which IMDS address the agent talks to: imds_endpoint_mode (auto, ipv4, ipv6), as the AWS SDKs name it.

An explicit endpoint (AWS_EC2_METADATA_SERVICE_ENDPOINT, imds_endpoint) is used as it is. Otherwise
`ipv4` means http://169.254.169.254, `ipv6` http://[fd00:ec2::254] (IPv6-only subnets, IMDS with
HttpProtocolIpv6=enabled), and `auto` races one token request to each and takes the first that
answers. Nothing is remembered between runs: an instance moved to another subnet, or whose IMDS
options changed, is asked afresh.

Why a race and not an order: a host without a route to one address fails that connect at once
(ENETUNREACH), but a host with a route where IMDS does not listen on that address would make an
ordered probe wait for its timeout. Racing costs an IPv4-only host one failed connect() and one
more TCP connection (bench/endpoint_mode.py measures it). No proxy is ever involved: the race
speaks HTTP on its own sockets, and the client never reads proxy settings for IMDS.
"""

from __future__ import annotations

import errno
import http.client
import io
import os
import selectors
import socket
import time
from dataclasses import dataclass, field
from typing import Optional
from urllib.parse import urlsplit

import structlog

from agent.aws.imds import (
    DEFAULT_TIMEOUT_SECONDS,
    MAX_TOKEN_TTL_SECONDS,
    MIN_ATTEMPT_TIMEOUT_SECONDS,
    TOKEN_PATH,
    TOKEN_TTL_HEADER,
    ImdsClient,
)
from agent.aws.retry import Backoff, Deadline, Failure, Kind, RetryLoop
from agent.config import AgentSettings
from agent.errors import ServiceUnavailable

IPV4_ENDPOINT = "http://169.254.169.254"
IPV6_ENDPOINT = "http://[fd00:ec2::254]"
ENDPOINTS_BY_MODE = {
    "ipv4": (IPV4_ENDPOINT,),
    "ipv6": (IPV6_ENDPOINT,),
    "auto": (IPV4_ENDPOINT, IPV6_ENDPOINT),
}
# A token is at most this long, in the characters IMDS uses (the client checks it again).
_MAX_TOKEN_CHARS = 4096
# A token answer is a few hundred bytes; a peer sending more is not IMDS.
_MAX_ANSWER_BYTES = 16384
_RECV_BYTES = 4096

_RACE_FIX = (
    "enable the instance metadata service and the address this subnet can reach (`aws ec2 "
    "modify-instance-metadata-options --instance-id <instance-id> --http-endpoint enabled "
    "--http-tokens required`, and `--http-protocol-ipv6 enabled` on IPv6-only subnets), or set "
    "imds_endpoint_mode / AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE, or imds_endpoint"
)

logger = structlog.get_logger()


@dataclass(frozen=True)
class ImdsChoice:
    """The IMDS address to use, why, and the token the race already obtained there (if any)."""

    endpoint: str
    why: str
    token: Optional[str] = field(default=None, repr=False)


def candidates(settings: AgentSettings) -> tuple[str, ...]:
    """The addresses to try: the explicit endpoint alone, else those of imds_endpoint_mode."""
    if settings.imds_endpoint_is_explicit:
        return (settings.imds_endpoint,)
    return ENDPOINTS_BY_MODE[settings.imds_endpoint_mode.value]


def explain(settings: AgentSettings) -> str:
    """Where the choice of addresses comes from, for doctor and errors."""
    if settings.imds_endpoint_is_explicit:
        return "an explicit endpoint (AWS_EC2_METADATA_SERVICE_ENDPOINT or imds_endpoint), which wins"
    return settings.imds_endpoint_mode.describe("imds_endpoint_mode")


def choose_endpoint(
    settings: AgentSettings,
    deadline: Deadline,
    *,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    backoff: Optional[Backoff] = None,
) -> ImdsChoice:
    """The IMDS address this run uses; with more than one candidate, the first to answer a token request.

    Raises ServiceUnavailable naming every address and its last error when none answers before
    the deadline.
    """
    tried = candidates(settings)
    if len(tried) == 1:
        return ImdsChoice(tried[0], explain(settings))
    last_errors: dict[str, str] = {}

    def one_round() -> tuple[str, Optional[str]]:
        winner = _race_once(tried, min(timeout_seconds, deadline.remaining), last_errors)
        if winner is None:
            raise _NoAddressAnswered(
                "; ".join(f"{url}: {last_errors.get(url, 'not tried')}" for url in tried)
            )
        return winner

    def give_up(loop: RetryLoop[tuple[str, Optional[str]]]) -> ServiceUnavailable:
        errors = "; ".join(f"{url}: {last_errors.get(url, 'not tried')}" for url in tried)
        rounds = f"{loop.attempts} {'round' if loop.attempts == 1 else 'rounds'}"
        return ServiceUnavailable(
            f"no IMDS address answered within {deadline.seconds:g} s ({explain(settings)}; {rounds}; "
            f"{errors}): {_RACE_FIX}"
        )

    loop: RetryLoop[tuple[str, Optional[str]]] = RetryLoop(
        deadline=deadline,
        backoff=backoff if backoff is not None else Backoff(),
        classify=lambda error: (
            Failure(Kind.OUTAGE, str(error), "PUT " + TOKEN_PATH)
            if isinstance(error, _NoAddressAnswered)
            else None
        ),
        give_up=give_up,
        on_failure=lambda failure, attempt: logger.debug(
            "imds_race_failed", attempt=attempt, error=failure.error
        ),
        min_attempt_seconds=MIN_ATTEMPT_TIMEOUT_SECONDS,
    )
    endpoint, token = loop.run(one_round, lambda winner: winner)
    losers = "; ".join(f"{url}: {error}" for url, error in last_errors.items() if url != endpoint)
    logger.debug("imds_endpoint_chosen", endpoint=endpoint, rounds=loop.attempts)
    why = f"{explain(settings)}: answered first" + (f" ({losers})" if losers else "")
    return ImdsChoice(endpoint, why, token)


class _NoAddressAnswered(Exception):
    """A round of the race in which no address answered at all (the message lists each one's error)."""


def open_client(
    settings: AgentSettings, deadline: Deadline, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
) -> ImdsClient:
    """An ImdsClient on the chosen address, holding the token the race obtained (no second request)."""
    return client_for(
        choose_endpoint(settings, deadline, timeout_seconds=timeout_seconds), deadline, timeout_seconds
    )


def client_for(
    choice: ImdsChoice, deadline: Deadline, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
) -> ImdsClient:
    """An ImdsClient on `choice`'s address, with the token the race obtained there, if any."""
    client = ImdsClient(choice.endpoint, deadline, timeout_seconds=timeout_seconds)
    if choice.token is not None:
        client.adopt_token(choice.token)
    return client


# -- the race ------------------------------------------------------------------------------------
#
# One thread, no HTTP library: a non-blocking connect to every address at once, the token request
# sent on whichever connects, the first 200 wins. An address without a route fails in connect()
# itself (ENETUNREACH), so an IPv4-only host pays one failed system call for the IPv6 address.


@dataclass
class _Attempt:
    endpoint: str
    sock: socket.socket
    request: bytes
    is_sent: bool = False
    received: bytearray = field(default_factory=bytearray)


def _race_once(
    endpoints: tuple[str, ...], timeout: float, last_errors: dict[str, str]
) -> Optional[tuple[str, Optional[str]]]:
    """One token request to each endpoint at once: (endpoint, token) of the first 200.

    An address that answers anything else (403: IMDS disabled, 5xx) is taken when no other gives a
    token, so that the client names IMDS's own refusal. None when none answered at all.
    """
    ends_at = time.monotonic() + timeout
    answered: Optional[str] = None
    with selectors.DefaultSelector() as selector:
        for endpoint in endpoints:
            attempt = _connect(endpoint, last_errors)
            if attempt is not None:
                selector.register(attempt.sock, selectors.EVENT_WRITE, attempt)
        try:
            while selector.get_map():
                remaining = ends_at - time.monotonic()
                events = selector.select(remaining) if remaining > 0 else []
                if not events:
                    for key in list(selector.get_map().values()):
                        last_errors[key.data.endpoint] = "no answer before the timeout"
                    break
                for key, _mask in events:
                    attempt = key.data
                    if not attempt.is_sent:
                        if _send(attempt, last_errors):
                            selector.modify(attempt.sock, selectors.EVENT_READ, attempt)
                        else:
                            selector.unregister(attempt.sock)
                            attempt.sock.close()
                        continue
                    # Read what arrived, never waiting: one deadline for the whole race, which a
                    # peer that accepts and trickles bytes (a metadata proxy) cannot stretch.
                    is_done = _receive(attempt, last_errors)
                    if not is_done:
                        continue
                    selector.unregister(attempt.sock)
                    attempt.sock.close()
                    status, token = _parse_answer(attempt, last_errors)
                    if status == 200 and token:
                        return attempt.endpoint, token
                    if status is not None:
                        answered = answered or attempt.endpoint
        finally:
            for key in list(selector.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]
    return (answered, None) if answered is not None else None


def _connect(endpoint: str, last_errors: dict[str, str]) -> Optional[_Attempt]:
    parts = urlsplit(endpoint)
    host, port = parts.hostname or "", parts.port or 80
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        last_errors[endpoint] = _short_error(exc)
        return None
    sock.setblocking(False)
    code = sock.connect_ex(address)
    if code not in (0, errno.EINPROGRESS):
        sock.close()
        last_errors[endpoint] = os.strerror(code).lower()
        return None
    request = (
        f"PUT {TOKEN_PATH} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"{TOKEN_TTL_HEADER}: {MAX_TOKEN_TTL_SECONDS}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    ).encode("ascii")
    return _Attempt(endpoint, sock, request)


def _send(attempt: _Attempt, last_errors: dict[str, str]) -> bool:
    code = attempt.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if code != 0:
        last_errors[attempt.endpoint] = os.strerror(code).lower()
        return False
    try:
        attempt.sock.sendall(attempt.request)
    except OSError as exc:
        last_errors[attempt.endpoint] = _short_error(exc)
        return False
    attempt.is_sent = True
    return True


def _receive(attempt: _Attempt, last_errors: dict[str, str]) -> bool:
    """Take what the socket holds now (it is readable); True once the answer is whole, the peer
    closed, it sent too much, or the read failed (then `last_errors` says why)."""
    try:
        chunk = attempt.sock.recv(_RECV_BYTES)
    except BlockingIOError:
        return False
    except OSError as exc:
        last_errors[attempt.endpoint] = _short_error(exc)
        attempt.received.clear()
        return True
    attempt.received += chunk
    return not chunk or len(attempt.received) > _MAX_ANSWER_BYTES or _is_whole(bytes(attempt.received))


def _is_whole(data: bytes) -> bool:
    """True when `data` holds the headers and as many body bytes as Content-Length says."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            try:
                return len(body) >= int(value.strip())
            except ValueError:
                return True  # not HTTP as IMDS speaks it: parse what came and refuse it
    return False  # no length: the answer ends when the peer closes (Connection: close)


class _Received:
    """What http.client needs of a socket to parse an answer already read."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def makefile(self, _mode: str) -> io.BytesIO:
        return io.BytesIO(self._data)


def _parse_answer(attempt: _Attempt, last_errors: dict[str, str]) -> tuple[Optional[int], str]:
    """The status and (on a 200 that looks like one) the token; (None, "") when no answer came."""
    if not attempt.received:
        last_errors.setdefault(attempt.endpoint, "the connection closed without an answer")
        return None, ""
    response = http.client.HTTPResponse(_Received(bytes(attempt.received)))  # type: ignore[arg-type]
    try:
        response.begin()
        body = response.read(_MAX_TOKEN_CHARS + 1)
    except (OSError, http.client.HTTPException) as exc:
        last_errors[attempt.endpoint] = _short_error(exc)
        return None, ""
    finally:
        response.close()
    last_errors[attempt.endpoint] = f"HTTP {response.status}"
    logger.debug("imds_race_answer", endpoint=attempt.endpoint, status=response.status)
    token = body.decode("ascii", errors="replace").strip()
    # A 200 that does not look like a token still shows the address answers; the client then asks
    # again and judges the answer itself.
    return response.status, token if response.status == 200 and _looks_like_token(token) else ""


def _looks_like_token(text: str) -> bool:
    return 0 < len(text) <= _MAX_TOKEN_CHARS and text.isascii() and text.isprintable() and " " not in text


def _short_error(exc: Exception) -> str:
    if isinstance(exc, socket.timeout):
        return "no answer before the timeout"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return f"no valid answer ({type(exc).__name__})"
