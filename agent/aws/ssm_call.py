"""One SSM API call under the agent's retry loop: botocore's exceptions read in one place (as retry
classes or the agent's errors), SSM's throttling paced across calls and reported to the operator.
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Callable, Optional, TypeVar
from urllib.parse import urlsplit

import structlog
import urllib3.exceptions
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from agent.aws.answers import describe_http
from agent.aws.clients import credential_failure
from agent.aws.endpoints import ENDPOINT_SETTING, resolved_endpoint
from agent.aws.retry import Backoff, Deadline, Failure, Kind, NotServiceAnswer, RetryLoop, ThrottleMemory
from agent.aws.ssm_errors import (
    THROTTLING_ERROR_CODES,
    error_code,
    error_message,
    is_foreign_error,
    is_retryable_error,
    map_client_error,
)
from agent.errors import AgentError, ConfigError, ServiceUnavailable

_log = structlog.get_logger()

# While throttled, one journal line (and one systemd status) at most this often: enough to show an
# operator the agent is waiting, not hung.
THROTTLED_REPORT_INTERVAL_SECONDS = 10.0

# Failures below botocore's own types: a body cut short mid-read (urllib3's ProtocolError,
# http.client's IncompleteRead) escapes botocore unwrapped when it makes no retries of its own.
_NETWORK_ERRORS = (
    BotoConnectionError,
    HTTPClientError,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
)
# What botocore's parser raises on a 200 whose JSON has the wrong shape (a string where SSM's model
# says list): the body is not SSM's answer. Counted only when raised inside botocore's parser, so a
# bug elsewhere is never mistaken for a bad answer.
_PARSE_ERRORS = (AttributeError, TypeError, ValueError, KeyError)
_BOTOCORE_PARSER_MODULE = "botocore.parsers"

# getaddrinfo's "this name does not exist" (NXDOMAIN: "Name or service not known") and "it holds no
# address" (NODATA): unlike "try again" (SERVFAIL, a resolver that does not answer), the DNS answered.
_NO_SUCH_NAME = frozenset({socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)})

_T = TypeVar("_T")

_NOT_SSM_FIX = (
    "check ssm_endpoint in agent.toml or AWS_ENDPOINT_URL_SSM / AWS_ENDPOINT_URL, and any proxy "
    "between this host and SSM (a TLS-inspecting proxy answers with a page of its own)"
)


class SsmCaller:
    """Runs SSM API calls on one botocore client, sharing what it learns of throttling between calls.

    `calls_planned` and `calls_done` (kept by the client that plans the calls) let a throttled
    report say how much is left. Secrets Manager's caller (agent/aws/secretsmanager.py) is this one
    with its own service name, error translation and advice: the class attributes and the two
    methods `_map_error` and `_throttled_fix`.
    """

    service = "SSM"
    iam_prefix = "ssm"
    event_prefix = "ssm"
    not_service_fix = _NOT_SSM_FIX

    def __init__(
        self,
        client: Any,
        deadline: Deadline,
        *,
        backoff_factory: Callable[[], Backoff] = Backoff,
        role: Optional[str] = None,
        on_status: Callable[[str], None] = lambda _text: None,
        endpoint_url: Optional[str] = None,
    ) -> None:
        self._client = client
        # Where the requests go: the endpoint the operator named (`endpoint_url`, whose host can be a
        # typo), else the one botocore's endpoint rules give (dual-stack, FIPS); messages name it.
        self.endpoint: str = endpoint_url or resolved_endpoint(client)
        self._is_explicit_endpoint = endpoint_url is not None
        self._deadline = deadline
        self._backoff_factory = backoff_factory
        self._role = role
        self._on_status = on_status
        # What this process knows of the fleet's throttling, kept from one call to the next.
        self._throttle_memory = ThrottleMemory()
        self._throttled_since: Optional[float] = None
        self._throttled_answers = 0
        self._reported_at = 0.0
        self.calls_planned = 0
        self.calls_done = 0
        # Seconds spent in throttled episodes that ended (a call got through), for the metrics.
        self._throttled_seconds_ended = 0.0
        # Secrets Manager's single calls run on a few threads at once: the counters stay exact.
        self._lock = threading.Lock()

    @property
    def throttled_seconds(self) -> float:
        """Seconds these calls have waited while SSM throttled them, the episode under way included."""
        ongoing = 0.0 if self._throttled_since is None else time.monotonic() - self._throttled_since
        return self._throttled_seconds_ended + ongoing

    def call(
        self,
        action: str,
        names: Sequence[str],
        request: dict[str, Any],
        check: Callable[[Any], _T],
        *,
        stop_at_throttled: Optional[int] = None,
    ) -> _T:
        """Run one API call and return `check` of its answer, retrying throttling, 5xx, network errors
        and answers that are not the service's until the deadline.

        `stop_at_throttled` = n raises StoppedThrottled at the n-th throttled answer instead of
        waiting once more: for a caller with another way round the throttle (Secrets Manager's single
        calls)."""
        method = getattr(self._client, _snake_case(action))
        backoff = self._backoff_factory()
        backoff.memory = self._throttle_memory
        throttled = 0

        def classify(error: Exception) -> Optional[Failure]:
            nonlocal throttled
            failure = self._classify(error, action, names)
            if stop_at_throttled is not None and failure is not None and failure.kind is Kind.THROTTLED:
                throttled += 1
                if throttled >= stop_at_throttled:
                    self._deadline.note_answer()
                    raise StoppedThrottled(failure.error) from None
            return failure

        loop: RetryLoop[Any] = RetryLoop(
            deadline=self._deadline,
            backoff=backoff,
            classify=classify,
            give_up=lambda done: self._gave_up(action, done),
            on_failure=lambda failure, attempt: self._failed(action, failure, attempt),
        )
        started = time.perf_counter()
        result = loop.run(lambda: method(**request), lambda response: _believe(check, response))
        self._let_through(action, names, loop.attempts, started)
        return result

    def _classify(self, error: Exception, action: str, names: Sequence[str]) -> Optional[Failure]:
        """The one place botocore's exceptions are read: a Failure to retry, None for what is not
        botocore's (raised as is), or the agent's error for a call SSM refused for good."""
        if isinstance(error, ClientError):
            code = error_code(error)
            if is_foreign_error(error):
                return Failure(Kind.NOT_ANSWER, f"HTTP {code}, no {self.service} error in the body")
            if code in THROTTLING_ERROR_CODES:
                return Failure(Kind.THROTTLED, code)
            if is_retryable_error(error):
                return Failure(Kind.OUTAGE, code)
            self._deadline.note_answer()
            raise RejectedCall(code, error_message(error), self._map_error(error, action, names)) from None
        if isinstance(error, _NETWORK_ERRORS):
            lookup = _name_lookup_error(error)
            if lookup is not None:
                return self._lookup_failed(lookup)
            # EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError,
            # a body cut short: refused or slow connects, answers that never come or never end.
            return Failure(Kind.OUTAGE, type(error).__name__)
        failure = credential_failure(error, f"{self.iam_prefix}:{action}")
        if failure is not None:
            raise failure from None
        if isinstance(error, BotoCoreError):
            raise AgentError(
                f"{self.iam_prefix}:{action} failed before reaching {self.service}: {type(error).__name__}"
            ) from None
        if isinstance(error, _PARSE_ERRORS) and _raised_in(_BOTOCORE_PARSER_MODULE, error.__traceback__):
            return Failure(
                Kind.NOT_ANSWER,
                f"a body botocore could not read as {self.service}'s ({type(error).__name__})",
            )
        return None

    def _lookup_failed(self, lookup: socket.gaierror) -> Failure:
        """The endpoint's name did not resolve: an outage (retried, and a start may serve the kept set),
        except a name the operator wrote that the DNS says does not exist, which is a settings error.

        AWS's own names are built by botocore for a region its endpoint data knows (checked when the
        client is built), so "does not exist" there is AWS's DNS failing, as in us-east-1 in October
        2025; an explicit endpoint's host can be a typo, or a VPC endpoint that was deleted."""
        host = urlsplit(self.endpoint).hostname or self.endpoint
        reason = lookup.strerror or str(lookup)
        if self._is_explicit_endpoint and lookup.errno in _NO_SUCH_NAME:
            raise ConfigError(
                f"{self.service}'s endpoint {self.endpoint} names a host the DNS says does not exist "
                f"({host}: {reason}): fix {ENDPOINT_SETTING[self.iam_prefix]} or AWS_ENDPOINT_URL"
            ) from None
        return Failure(Kind.OUTAGE, f"DNS lookup of {host} failed ({reason})")

    def _map_error(self, error: ClientError, action: str, names: Sequence[str]) -> AgentError:
        """The agent's error for a call the service refused for good."""
        return map_client_error(error, action=action, names=names, role=self._role, endpoint=self.endpoint)

    def _throttled_fix(self) -> str:
        """What an operator can do when the throttled budget ran out."""
        return (
            "the account's Parameter Store throughput (shared by every instance "
            "and tool in the account and region) is exhausted; raise throttle_deadline_seconds, "
            "enable higher throughput (aws ssm update-service-setting --setting-id "
            "/ssm/parameter-store/high-throughput-enabled --setting-value true) or stagger the boot"
        )

    def _failed(self, action: str, failure: Failure, attempt: int) -> None:
        if failure.kind is Kind.THROTTLED:
            self._throttled(action)
            return
        error = failure.error
        if failure.kind is Kind.NOT_ANSWER:
            error = f"an answer that is not {self.service}'s: " + error
        _log.warning(
            f"{self.event_prefix}_retry",
            action=action,
            attempt=attempt,
            error=error,
            remaining_seconds=round(self._deadline.remaining, 2),
        )

    def _let_through(self, action: str, names: Sequence[str], attempts: int, started: float) -> None:
        with self._lock:
            self._let_through_locked(action, names, attempts, started)

    def _let_through_locked(self, action: str, names: Sequence[str], attempts: int, started: float) -> None:
        self._deadline.note_answer()
        self._throttle_memory.let_through()
        self.calls_done += 1
        if self._throttled_since is not None:
            self._throttled_seconds_ended += time.monotonic() - self._throttled_since
            _log.info(
                f"{self.event_prefix}_throttle_passed",
                action=action,
                throttled_seconds=round(time.monotonic() - self._throttled_since, 1),
                throttled_answers=self._throttled_answers,
                calls_left=max(0, self.calls_planned - self.calls_done),
            )
            self._throttled_since = None
            self._throttled_answers = 0
            self._on_status(f"{self.service} let the call through; fetching")
        _log.debug(
            f"{self.event_prefix}_call",
            action=action,
            names=list(names),
            attempts=attempts,
            elapsed_ms=round((time.perf_counter() - started) * 1000, 1),
        )

    def _throttled(self, action: str) -> None:
        """The service is up and busy: count it, keep the outage deadline from running out, and say so
        at most every THROTTLED_REPORT_INTERVAL_SECONDS."""
        with self._lock:
            self._throttled_locked(action)

    def _throttled_locked(self, action: str) -> None:
        self._deadline.note_answer()
        now = time.monotonic()
        if self._throttled_since is None:
            self._throttled_since = now
        self._throttled_answers += 1
        if now - self._reported_at < THROTTLED_REPORT_INTERVAL_SECONDS and self._throttled_answers > 1:
            return
        self._reported_at = now
        waited = round(now - self._throttled_since, 1)
        calls_left = max(1, self.calls_planned - self.calls_done)
        budget_left = round(self._deadline.budget_remaining)
        _log.warning(
            f"{self.event_prefix}_throttled",
            action=action,
            throttled_seconds=waited,
            throttled_answers=self._throttled_answers,
            calls_left=calls_left,
            budget_left_seconds=budget_left,
        )
        self._on_status(
            f"{self.service} is throttling (fleet boot?): waiting {waited:g} s so far, {calls_left} "
            f"{'call' if calls_left == 1 else 'calls'} left, giving up in {budget_left} s"
        )

    def _gave_up(self, action: str, loop: RetryLoop[Any]) -> ServiceUnavailable:
        last = loop.last or Failure(Kind.OUTAGE, "no attempt")
        if last.kind is Kind.NOT_ANSWER:
            return ServiceUnavailable(
                f"{self.service} at {self.endpoint} gave no valid answer to {self.iam_prefix}:{action} "
                f"within the {self._deadline.seconds:g} s deadline ({loop.attempts} attempts): the last "
                f"answer was not {self.service}'s: {last.error}; {self.not_service_fix}"
            )
        if last.kind is Kind.THROTTLED:
            return ServiceUnavailable(
                f"{self.service} at {self.endpoint} kept throttling {self.iam_prefix}:{action} "
                f"({last.error}) until the {self._deadline.budget_seconds:g} s throttled budget ran out "
                f"({self._throttled_answers} throttled answers): {self._throttled_fix()}"
            )
        return ServiceUnavailable(
            f"{self.service} at {self.endpoint} did not answer {self.iam_prefix}:{action} within the "
            f"{self._deadline.seconds:g} s deadline ({loop.attempts} attempts, last error {last.error}): "
            f"check the network path to {self.service} (DNS, VPC endpoint, NAT, security groups), or raise "
            "deadline_seconds"
        )


def _name_lookup_error(error: BaseException) -> Optional[socket.gaierror]:
    """The failed getaddrinfo under a connection error, or None: botocore keeps urllib3's error in
    `kwargs["error"]`, which holds the gaierror as its cause (urllib3 2) or context (urllib3 1.26)."""
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, socket.gaierror):
            return current
        kwargs = getattr(current, "kwargs", None)
        nested = kwargs.get("error") if isinstance(kwargs, dict) else None
        linked = (nested, current.__cause__, current.__context__)
        pending += [link for link in linked if isinstance(link, BaseException)]
    return None


def _believe(check: Callable[[Any], _T], response: Any) -> _T:
    """`check` of an answer; an answer it does not believe is described by its status and type."""
    try:
        return check(response)
    except NotServiceAnswer as bad:
        raise NotServiceAnswer(f"{bad.reason} ({describe_http(response)})") from None


def _raised_in(module: str, traceback: Optional[TracebackType]) -> bool:
    """True when a frame of `traceback` runs code of `module`."""
    while traceback is not None:
        if traceback.tb_frame.f_globals.get("__name__") == module:
            return True
        traceback = traceback.tb_next
    return False


class StoppedThrottled(Exception):
    """The service throttled a call made with stop_at_throttled: the caller takes another way."""


class RejectedCall(Exception):
    """A call SSM refused for good; carries the code for callers that treat some codes as answers."""

    def __init__(self, code: str, message: str, mapped: AgentError) -> None:
        super().__init__(code)
        self.code = code
        self.message = message
        self.mapped = mapped


def _snake_case(action: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", action).lower()
