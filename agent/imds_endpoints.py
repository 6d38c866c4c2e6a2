"""Which IMDS address the agent talks to: imds_endpoint_mode (auto, ipv4, ipv6), as the AWS SDKs name it.

An explicit endpoint (AWS_EC2_METADATA_SERVICE_ENDPOINT, imds_endpoint) is used as it is. Otherwise
`ipv4` means http://169.254.169.254, `ipv6` http://[fd00:ec2::254] (IPv6-only subnets, IMDS with
HttpProtocolIpv6=enabled), and `auto` races one token request to each and takes the first that
answers. Nothing is remembered between runs: an instance moved to another subnet, or whose IMDS
options changed, is asked afresh.

Why a race and not an order: a host without a route to one address fails that connect at once
(ENETUNREACH), but a host with a route where IMDS does not listen on that address would make an
ordered probe wait for its timeout. Racing costs an IPv4-only host two short-lived threads and one
more TCP connection (bench/endpoint_mode.py measures it).
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import requests
import structlog

from agent.config import AgentSettings
from agent.errors import ServiceUnavailable
from agent.imds import (
    DEFAULT_TIMEOUT_SECONDS,
    MAX_TOKEN_TTL_SECONDS,
    MIN_ATTEMPT_TIMEOUT_SECONDS,
    TOKEN_PATH,
    TOKEN_TTL_HEADER,
    ImdsClient,
)
from agent.retry import Backoff, Deadline

IPV4_ENDPOINT = "http://169.254.169.254"
IPV6_ENDPOINT = "http://[fd00:ec2::254]"
ENDPOINTS_BY_MODE = {
    "ipv4": (IPV4_ENDPOINT,),
    "ipv6": (IPV6_ENDPOINT,),
    "auto": (IPV4_ENDPOINT, IPV6_ENDPOINT),
}
# A token is at most this long, in the characters IMDS uses (the client checks it again).
_MAX_TOKEN_CHARS = 4096

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
    backoff = backoff if backoff is not None else Backoff()
    last_errors: dict[str, str] = {}
    rounds = 0
    while True:
        remaining = deadline.remaining
        if remaining < MIN_ATTEMPT_TIMEOUT_SECONDS:
            break
        rounds += 1
        winner = _race_once(tried, min(timeout_seconds, remaining), last_errors)
        if winner is not None:
            endpoint, token = winner
            losers = "; ".join(f"{url}: {error}" for url, error in last_errors.items() if url != endpoint)
            why = f"{explain(settings)}: answered first" + (f" ({losers})" if losers else "")
            logger.debug("imds_endpoint_chosen", endpoint=endpoint, rounds=rounds)
            return ImdsChoice(endpoint, why, token)
        if not backoff.wait(deadline):
            break
    errors = "; ".join(f"{url}: {last_errors.get(url, 'not tried')}" for url in tried)
    raise ServiceUnavailable(
        f"no IMDS address answered within {deadline.seconds:g} s ({explain(settings)}; {rounds} "
        f"{'round' if rounds == 1 else 'rounds'}; {errors}): {_RACE_FIX}"
    )


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

_Outcome = tuple[str, Optional[int], str]  # endpoint, HTTP status (None: no answer), token or error


def _race_once(
    endpoints: tuple[str, ...], timeout: float, last_errors: dict[str, str]
) -> Optional[tuple[str, Optional[str]]]:
    """One token request to each endpoint at once: (endpoint, token) of the first 200.

    An address that answers anything else (403: IMDS disabled, 5xx) is taken when no other gives a
    token, so that the client names IMDS's own refusal. None when none answered at all.
    """
    outcomes: queue.Queue[_Outcome] = queue.Queue()
    for endpoint in endpoints:
        threading.Thread(
            target=_ask_token, args=(endpoint, timeout, outcomes), name="imds-race", daemon=True
        ).start()
    answered: Optional[str] = None
    for _ in endpoints:
        try:
            endpoint, status, text = outcomes.get(timeout=timeout + 1.0)
        except queue.Empty:  # pragma: no cover - every attempt ends within its own timeout
            break
        if status == 200 and text:
            return endpoint, text
        if status is None:
            last_errors[endpoint] = text
        else:
            last_errors[endpoint] = f"HTTP {status}"
            answered = answered or endpoint
    return (answered, None) if answered is not None else None


def _ask_token(endpoint: str, timeout: float, outcomes: queue.Queue[_Outcome]) -> None:
    """PUT a token request at `endpoint` once; report (endpoint, status, token or error)."""
    started = time.monotonic()
    session = requests.Session()
    # Never a proxy (or .netrc) for a link-local address, as in agent/imds.py.
    session.trust_env = False
    try:
        with session.put(
            endpoint + TOKEN_PATH,
            headers={TOKEN_TTL_HEADER: str(MAX_TOKEN_TTL_SECONDS)},
            timeout=timeout,
            allow_redirects=False,
            proxies={"http": None, "https": None, "all": None},  # type: ignore[dict-item]
        ) as response:
            status = response.status_code
            token = response.content.decode("ascii", errors="replace").strip()
    except requests.RequestException as exc:
        outcomes.put((endpoint, None, _short_error(exc)))
        return
    finally:
        session.close()
    logger.debug(
        "imds_race_answer",
        endpoint=endpoint,
        status=status,
        elapsed_ms=round((time.monotonic() - started) * 1000, 1),
    )
    # A 200 that does not look like a token still shows the address answers; the client then asks
    # again and judges the answer itself.
    outcomes.put((endpoint, status, token if status == 200 and _looks_like_token(token) else ""))


def _looks_like_token(text: str) -> bool:
    return 0 < len(text) <= _MAX_TOKEN_CHARS and text.isascii() and text.isprintable() and " " not in text


def _short_error(exc: requests.RequestException) -> str:
    if isinstance(exc, requests.ConnectTimeout):
        return "no connection before the timeout"
    if isinstance(exc, requests.Timeout):
        return "no answer before the timeout"
    text = str(exc)
    for words in ("Network is unreachable", "Connection refused", "No route to host", "Cannot assign"):
        if words in text:
            return words.lower()
    return f"connection failed ({type(exc).__name__})"
