"""A seeded fault-injection proxy for the agent's two HTTP peers: moto's server (SSM) and the fake IMDS.

It sits on 127.0.0.1 between the agent and the real server and, at a given rate, answers a request
badly instead of (or on top of) forwarding it: an error status, a dropped connection, a reset in the
middle of the body, a slow answer, or a 200 whose body is not the server's answer. Every decision
comes from `random.Random(seed)` in request order, so a failing run is replayed by its seed; the
sequence of decisions is kept and printed by `describe()`.
"""

from __future__ import annotations

import json
import random
import socket
import struct
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional

from tests.integration.moto_server import (
    CannedResponse,
    LoopbackServer,
    aws_json_error,
    forward_request,
    send_canned,
)

# The answer forwarded untouched.
PASS = "pass"
# A request for one of the proxy's denied_actions: refused as IAM refuses it, whatever the plan.
DENIED = "denied"

SSM_FAULTS = (
    "http_500",  # AWS's JSON InternalServerError
    "http_503",  # a load balancer's plain-text 503
    "throttling",  # ThrottlingException: Rate exceeded
    "drop",  # the connection closed without an answer
    "reset_mid_body",  # headers with the real Content-Length, part of the body, then RST
    "slow",  # the real answer, but only after slow_seconds
    "html_200",  # 200 with a proxy's HTML block page
    "wrong_shape",  # 200 with valid JSON that does not account for what was asked
    "truncated_json",  # 200 with the first part of the real body, Content-Length to match
)
IMDS_FAULTS = (
    "http_500",
    "drop",
    "reset_mid_body",
    "slow",
    "html_200",  # token, region, role name or credentials replaced by an HTML page
    "creds_not_json",
    "creds_missing_field",
    "creds_expired",  # Expiration in the past
    "creds_failed_code",  # Code other than Success (keys still present: they must not be used)
    "token_expired",  # every token dies just before this read reaches IMDS
)
# SSM refusing for good, as IAM and KMS word it: never retried, never an outage (never served stale).
REFUSAL_FAULTS = (
    "access_denied",  # AccessDeniedException: the role may not call the action
    "kms_denied",  # AccessDeniedException from KMS: the role may not decrypt with the key
)
# Secrets Manager's own refusals (the same JSON protocol): the secret does not exist, or its KMS key
# cannot decrypt it. Never an outage either.
SECRETS_MANAGER_REFUSAL_FAULTS = (
    "secret_not_found",  # ResourceNotFoundException
    "decryption_failure",  # DecryptionFailure
)
# The kinds that are answers which look successful: what an agent must check, not just retry.
BAD_ANSWER_FAULTS = frozenset(
    {
        "html_200",
        "wrong_shape",
        "truncated_json",
        "creds_not_json",
        "creds_missing_field",
        "creds_expired",
        "creds_failed_code",
    }
)

# A marker the agent must never repeat: it is body content, and a body may hold a secret.
HTML_MARKER = "Blocked-by-corporate-policy-7f3a"
HTML_PAGE = (
    "<!DOCTYPE html>\n<html>\n<head><title>Access denied</title></head>\n"
    f"<body><h1>{HTML_MARKER}</h1><p>The page you requested is blocked.</p></body>\n</html>\n"
).encode()
IMDS_CREDENTIALS_PREFIX = "/latest/meta-data/iam/security-credentials/"
IMDS_TOKEN_HEADER = "X-aws-ec2-metadata-token"
_SSM_ANSWERED_ACTIONS = frozenset({"GetParameters", "GetParametersByPath", "GetParameter"})


@dataclass(frozen=True)
class Exchange:
    """One request as the proxy received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def action(self) -> str:
        """The AWS action of an SSM request ("GetParameters"), "" for anything else."""
        return self.headers.get("X-Amz-Target", "").rpartition(".")[2]

    @property
    def target(self) -> str:
        """How the fault log names the request: the AWS action, else method and path."""
        return self.action or f"{self.method} {self.path}"

    def json_body(self) -> dict[str, Any]:
        """The request's JSON body (an SSM request), {} when there is none."""
        loaded = json.loads(self.body or b"{}")
        return loaded if isinstance(loaded, dict) else {}


def every_request(exchange: Exchange) -> bool:
    """Fault any request."""
    return True


def get_parameter_calls(exchange: Exchange) -> bool:
    """Fault only GetParameter, the one-name call."""
    return exchange.action == "GetParameter"


def later_path_pages(exchange: Exchange) -> bool:
    """Fault only GetParametersByPath pages after the first (requests carrying a NextToken)."""
    return exchange.action == "GetParametersByPath" and "NextToken" in exchange.json_body()


@dataclass(frozen=True)
class FaultPlan:
    """What to inject: each request that `applies` to is faulted with probability `rate`, the kind
    drawn uniformly from `kinds` (those that fit the request)."""

    kinds: Sequence[str] = ()
    rate: float = 0.0
    seed: int = 0
    applies: Callable[[Exchange], bool] = every_request


@dataclass(frozen=True)
class Injection:
    """One decision: the request's number, what it was, the fault given ("pass" for none), and when
    the request arrived (time.monotonic())."""

    index: int
    target: str
    fault: str
    at: float = field(default_factory=time.monotonic, compare=False)


@dataclass
class _Reply:
    """What the handler sends: `response` None drops the connection; `cut_at` resets it after that
    many body bytes."""

    response: Optional[CannedResponse]
    cut_at: Optional[int] = None


def _fits(kind: str, exchange: Exchange) -> bool:
    """True when `kind` means something for this request (credentials faults only on the document)."""
    if kind == "wrong_shape":
        return exchange.action in _SSM_ANSWERED_ACTIONS
    if kind.startswith("creds_"):
        # The role's document, not the listing of role names at the prefix itself.
        path = exchange.path
        return (
            exchange.method == "GET"
            and path.startswith(IMDS_CREDENTIALS_PREFIX)
            and path != IMDS_CREDENTIALS_PREFIX
        )
    if kind == "token_expired":
        return exchange.method == "GET" and IMDS_TOKEN_HEADER.lower() in {h.lower() for h in exchange.headers}
    return True


class FaultProxy(LoopbackServer):
    """A proxy on 127.0.0.1 in front of `upstream` that injects the faults of its current plan.

    `expire_tokens` is called for a "token_expired" fault (FakeImds.expire_tokens); `slow_seconds`
    is how long a "slow" answer is held back.
    """

    def __init__(
        self,
        upstream: str,
        *,
        plan: Optional[FaultPlan] = None,
        expire_tokens: Optional[Callable[[], None]] = None,
        slow_seconds: float = 2.0,
    ) -> None:
        self.upstream = upstream
        self.expire_tokens = expire_tokens
        self.slow_seconds = slow_seconds
        # SSM actions IAM refuses (AccessDeniedException naming the action), as for a role that may
        # only call ssm:GetParameter.
        self.denied_actions: frozenset[str] = frozenset()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._plan = FaultPlan()
        self._rng = random.Random(0)  # noqa: S311  (seeded on purpose: replayable)
        self._log: list[Injection] = []
        self.plan = plan or FaultPlan()
        super().__init__(_FaultHandler, _FaultServer)
        self._server.proxy = self  # type: ignore[attr-defined]

    # -- the plan and its record -------------------------------------------------------------

    @property
    def plan(self) -> FaultPlan:
        """The plan in force; setting one restarts its random sequence and the record."""
        return self._plan

    @plan.setter
    def plan(self, plan: FaultPlan) -> None:
        known = {*SSM_FAULTS, *IMDS_FAULTS, *REFUSAL_FAULTS, *SECRETS_MANAGER_REFUSAL_FAULTS}
        unknown = set(plan.kinds) - known
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}")
        if "token_expired" in plan.kinds and self.expire_tokens is None:
            raise ValueError("token_expired needs the fake's expire_tokens")
        with self._lock:
            self._plan = plan
            self._rng = random.Random(plan.seed)  # noqa: S311
            self._log = []

    @property
    def injections(self) -> list[Injection]:
        """Every decision since the plan was set, in request order."""
        with self._lock:
            return list(self._log)

    def faults_given(self) -> list[str]:
        """The faults actually injected (passes left out)."""
        return [i.fault for i in self.injections if i.fault != PASS]

    def describe(self) -> str:
        """Seed, plan and every decision: enough to replay a failing run."""
        plan = self.plan
        steps = ", ".join(f"{i.index}:{i.target}={i.fault}" for i in self.injections) or "(no request)"
        return (
            f"{self.upstream} seed={plan.seed} rate={plan.rate} kinds={sorted(plan.kinds)} "
            f"applies={plan.applies.__name__}: {steps}"
        )

    def _decide(self, exchange: Exchange) -> tuple[str, float]:
        with self._lock:
            # All three numbers are drawn for every request, so one seed gives one sequence.
            roll, pick, variant = self._rng.random(), self._rng.random(), self._rng.random()
            plan = self._plan
            kinds = [k for k in plan.kinds if _fits(k, exchange)] if plan.applies(exchange) else []
            fault = kinds[int(pick * len(kinds))] if kinds and roll < plan.rate else PASS
            if exchange.action in self.denied_actions:
                fault = DENIED
            self._log.append(Injection(len(self._log), exchange.target, fault))
        return fault, variant

    # -- answers -----------------------------------------------------------------------------

    def _reply(self, exchange: Exchange, fault: str, variant: float) -> _Reply:
        if fault == DENIED:
            return _Reply(_access_denied(exchange.action))
        canned = _CANNED.get(fault)
        if canned is not None:
            return _Reply(canned)
        if fault == "drop":
            return _Reply(None)
        if fault == "slow" and self._stopping.wait(self.slow_seconds):
            return _Reply(None)
        if fault == "token_expired" and self.expire_tokens is not None:
            self.expire_tokens()
        real = forward_request(self.upstream, exchange.method, exchange.path, exchange.headers, exchange.body)
        if fault == "reset_mid_body":
            return _Reply(real, cut_at=_cut(real.body, variant))
        if fault == "truncated_json":
            return _Reply(_with_body(real, real.body[: _cut(real.body, variant)]))
        if fault == "wrong_shape" and real.status == 200:
            return _Reply(_with_body(real, _misshape(exchange, json.loads(real.body), variant)))
        if fault.startswith("creds_") and real.status == 200:
            return _Reply(_with_body(real, _garble_credentials(fault, real.body, variant)))
        return _Reply(real)

    # -- lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop serving, release held answers and the port."""
        self._stopping.set()
        super().stop()


_CANNED: dict[str, CannedResponse] = {
    "http_500": aws_json_error("InternalServerError", "Internal server error", status=500),
    "http_503": CannedResponse(503, b"Service Unavailable\n", (("Content-Type", "text/plain"),)),
    "throttling": aws_json_error("ThrottlingException", "Rate exceeded"),
    "html_200": CannedResponse(200, HTML_PAGE, (("Content-Type", "text/html; charset=utf-8"),)),
    "access_denied": aws_json_error(
        "AccessDeniedException",
        "User: arn:aws:sts::123456789012:assumed-role/app-role/i-0fa4e1fa4e1fa4e10 is not authorized "
        "to perform: ssm:GetParameters on resource: arn:aws:ssm:eu-west-1:123456789012:parameter/fi "
        "because no identity-based policy allows the ssm:GetParameters action",
    ),
    "kms_denied": aws_json_error(
        "AccessDeniedException",
        "User: arn:aws:sts::123456789012:assumed-role/app-role/i-0fa4e1fa4e1fa4e10 is not authorized "
        "to perform: kms:Decrypt on resource: arn:aws:kms:eu-west-1:123456789012:key/"
        "0f0e0d0c-0b0a-0908-0706-050403020100 (Service: AWSKMS; Status Code: 400; Error Code: "
        "AccessDeniedException)",
    ),
    "secret_not_found": aws_json_error(
        "ResourceNotFoundException", "Secrets Manager can't find the specified secret."
    ),
    "decryption_failure": aws_json_error(
        "DecryptionFailure",
        "Secrets Manager can't decrypt the protected secret text using the provided KMS key.",
    ),
}


def _access_denied(action: str) -> CannedResponse:
    """IAM's refusal of `action` to the fake instance's role, as SSM words it."""
    return aws_json_error(
        "AccessDeniedException",
        "User: arn:aws:sts::123456789012:assumed-role/app-role/i-0fa4e1fa4e1fa4e10 is not authorized "
        f"to perform: ssm:{action} on resource: arn:aws:ssm:eu-west-1:123456789012:parameter/fi "
        f"because no identity-based policy allows the ssm:{action} action",
    )


def _cut(body: bytes, variant: float) -> int:
    """A cut point strictly inside the body (at least one byte kept, at least one lost)."""
    if len(body) < 2:
        return 0
    return 1 + int(variant * (len(body) - 1))


def _with_body(real: CannedResponse, body: bytes) -> CannedResponse:
    return CannedResponse(status=real.status, body=body, headers=real.headers)


def _misshape(exchange: Exchange, answer: dict[str, Any], variant: float) -> bytes:
    """Valid JSON that is not a correct answer to this request."""
    action = exchange.action
    if action == "GetParameters":
        # A requested name disappears from both Parameters and InvalidParameters.
        for key in ("Parameters", "InvalidParameters"):
            items = answer.get(key) or []
            if items:
                del items[int(variant * len(items))]
                break
    elif action == "GetParametersByPath":
        items = answer.get("Parameters") or []
        request_token = exchange.json_body().get("NextToken")
        if request_token and (variant < 0.5 or not items):
            answer["NextToken"] = request_token  # a page token that does not advance
        elif items:
            del items[int(variant * len(items))]["Value"]  # an item without its value
        else:
            answer["Parameters"] = {"Name": "not-a-list"}
    elif action == "GetParameter" and isinstance(answer.get("Parameter"), dict):
        answer["Parameter"]["Name"] = str(answer["Parameter"].get("Name", "")) + "-other"
    return json.dumps(answer).encode()


def _garble_credentials(fault: str, body: bytes, variant: float) -> bytes:
    """IMDS's credentials document, spoilt as `fault` says."""
    if fault == "creds_not_json":
        return body[: _cut(body, variant)] + b"\n<!-- cut -->"
    document = json.loads(body)
    if fault == "creds_missing_field":
        fields = ("AccessKeyId", "SecretAccessKey", "Token")
        document.pop(fields[int(variant * len(fields))], None)
    elif fault == "creds_expired":
        past = datetime.now(timezone.utc) - timedelta(hours=1)
        document["Expiration"] = past.strftime("%Y-%m-%dT%H:%M:%SZ")
    elif fault == "creds_failed_code":
        document["Code"] = "AssumeRoleUnauthorizedAccess"
    return json.dumps(document, indent=2).encode()


class _FaultServer(ThreadingHTTPServer):
    proxy: FaultProxy

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients that time out and hang up are part of the game, not errors of the proxy.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


class _FaultHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _FaultServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        exchange = Exchange(self.command, self.path, dict(self.headers.items()), body)
        proxy = self.server.proxy
        fault, variant = proxy._decide(exchange)
        reply = proxy._reply(exchange, fault, variant)
        if reply.response is None:
            self.close_connection = True  # closed without a byte of answer
            return
        response = reply.response
        sent = response.body if reply.cut_at is None else response.body[: reply.cut_at]
        try:
            send_canned(self, response, sent)
            self.wfile.flush()
        except OSError:
            self.close_connection = True  # the client gave up (a read timeout under test)
            return
        if reply.cut_at is not None:
            self._reset()

    do_GET = do_PUT = do_POST = _handle

    def _reset(self) -> None:
        """Abort the connection with an RST: linger 0, and every handle on the socket closed."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()
        self.wfile.close()
        self.connection.close()


@dataclass
class FaultPair:
    """The SSM proxy and the IMDS proxy of one test, set and described together."""

    ssm: FaultProxy
    imds: FaultProxy

    def set(self, *, ssm: Optional[FaultPlan] = None, imds: Optional[FaultPlan] = None) -> None:
        """Put new plans in force (None: no faults on that side)."""
        self.ssm.plan = ssm or FaultPlan()
        self.imds.plan = imds or FaultPlan()

    def describe(self) -> str:
        """Both proxies' seeds, plans and decisions, for a failure message."""
        return f"SSM  {self.ssm.describe()}\nIMDS {self.imds.describe()}"
