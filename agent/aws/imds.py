"""IMDSv2 client: a session token, then the instance's region and its IAM role credentials.

IMDSv1 is never used, and no proxy is ever consulted: the metadata address is link-local,
and a proxy in the path would both break IMDSv2 and leak the credentials to the proxy.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Optional, TypeVar
from urllib.parse import urlsplit

import requests
import structlog

from agent.aws.retry import Backoff, Deadline, Failure, Kind, NotServiceAnswer, RetryLoop
from agent.errors import ConfigError, CredentialsError, ServiceUnavailable
from agent.log import REDACTOR

TOKEN_PATH = "/latest/api/token"  # noqa: S105  (a path, not a secret)
TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"  # noqa: S105
TOKEN_HEADER = "X-aws-ec2-metadata-token"  # noqa: S105
REGION_PATH = "/latest/meta-data/placement/region"
ROLE_LIST_PATH = "/latest/meta-data/iam/security-credentials/"

MAX_TOKEN_TTL_SECONDS = 21600
DEFAULT_TIMEOUT_SECONDS = 2.0
# A token is renewed this long before IMDS would expire it, so a read never races its expiry.
TOKEN_RENEW_MARGIN_SECONDS = 60.0
# Below this a request cannot complete anyway; the attempt is not worth starting.
MIN_ATTEMPT_TIMEOUT_SECONDS = 0.05

# 429 is IMDS throttling; 5xx is IMDS (or something in front of it) failing for now.
_RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})
# Passed with every request: a None entry removes that proxy whatever the session or the
# environment (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY) says.
_NO_PROXIES: dict[str, Optional[str]] = {"http": None, "https": None, "all": None}

# What IMDS's answers look like; anything else (a proxy's page, a truncated body) is not believed.
_TOKEN_RE = re.compile(r"^[A-Za-z0-9+/=_.-]{1,4096}$")
_REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$")
_ROLE_NAME_RE = re.compile(r"^[\w+=,.@-]{1,64}$")
_CREDENTIAL_FIELDS = ("AccessKeyId", "SecretAccessKey", "Token", "Expiration")

_T = TypeVar("_T")

_NOT_IMDS_FIX = (
    "check AWS_EC2_METADATA_SERVICE_ENDPOINT or imds_endpoint in agent.toml, and that nothing between "
    "the agent and IMDS answers in its place"
)

_ENABLE_IMDS_FIX = (
    "enable it with `aws ec2 modify-instance-metadata-options --instance-id <instance-id> "
    "--http-endpoint enabled --http-tokens required`, and make sure no proxy between the agent "
    "and IMDS adds an X-Forwarded-For header"
)
_REACH_IMDS_FIX = (
    "check that the instance metadata service is enabled and reachable: no firewall rule or "
    "proxy in the way, and in a container the PUT response hop limit must be at least 2 "
    "(`aws ec2 modify-instance-metadata-options --instance-id <instance-id> "
    "--http-put-response-hop-limit 2`)"
)
_ATTACH_ROLE_FIX = (
    "attach an instance profile: `aws ec2 associate-iam-instance-profile --instance-id "
    "<instance-id> --iam-instance-profile Name=<profile>`"
)

logger = structlog.get_logger()


@dataclass(frozen=True, repr=False)
class RoleCredentials:
    """Temporary credentials of the instance's IAM role, as IMDS hands them out."""

    role: str
    access_key_id: str
    secret_access_key: str
    token: str
    expiration: Optional[str]

    def __repr__(self) -> str:
        # The key id alone grants nothing, but its tail is enough to match it in CloudTrail.
        key_hint = f"...{self.access_key_id[-4:]}" if len(self.access_key_id) > 8 else "..."
        return (
            f"RoleCredentials(role={self.role!r}, access_key_id={key_hint!r}, expiration={self.expiration!r})"
        )


class ImdsClient:
    """Reads the region and role credentials from IMDSv2, retrying until the deadline.

    One token and one kept-alive connection serve every call: region plus credentials take
    four requests (token, region, role list, role document).
    """

    def __init__(
        self,
        endpoint: str,
        deadline: Deadline,
        *,
        session: Optional[requests.Session] = None,
        backoff: Optional[Backoff] = None,
        token_ttl_seconds: int = MAX_TOKEN_TTL_SECONDS,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                f"IMDS endpoint {endpoint!r} is not an http:// URL: fix "
                "AWS_EC2_METADATA_SERVICE_ENDPOINT or imds_endpoint in agent.toml"
            )
        if not 1 <= token_ttl_seconds <= MAX_TOKEN_TTL_SECONDS:
            raise ValueError(f"token_ttl_seconds must be 1..{MAX_TOKEN_TTL_SECONDS}, not {token_ttl_seconds}")
        self.endpoint = endpoint.rstrip("/")
        self._deadline = deadline
        self._backoff = backoff if backoff is not None else Backoff()
        self._token_ttl_seconds = token_ttl_seconds
        self._timeout_seconds = timeout_seconds
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            # Never read proxies (or .netrc) from the environment for a link-local address.
            session.trust_env = False
        self._session = session
        self._token: Optional[str] = None
        self._token_renew_at = 0.0

    def __enter__(self) -> ImdsClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Forget the token and close the session if this client opened it."""
        self._token = None
        if self._owns_session:
            self._session.close()

    # -- public reads ----------------------------------------------------------------------

    def region(self) -> str:
        """The instance's region, e.g. eu-west-1."""
        return self._read(REGION_PATH, self._parse_region)

    def _parse_region(self, text: Optional[str]) -> str:
        if text is None:
            raise ConfigError(
                f"IMDS at {self.endpoint} has no region for this instance (404 on {REGION_PATH}): "
                "set AWS_REGION or region in agent.toml"
            )
        region = text.strip()
        if not _REGION_RE.fullmatch(region):
            raise NotServiceAnswer("the region is not a region name")
        return region

    def role_credentials(self) -> RoleCredentials:
        """The temporary credentials of the IAM role attached to this instance."""
        role = self._read(ROLE_LIST_PATH, _parse_role_list)
        return self._read(ROLE_LIST_PATH + role, lambda text: _parse_credentials(role, text))

    def _read(self, path: str, parse: Callable[[Optional[str]], _T]) -> _T:
        """GET `path` (a token first when needed) and `parse` its body, until an answer is believed or
        the deadline passes. Only `parse`'s NotServiceAnswer is retried: any other error it raises is
        the agent's own and propagates at once."""
        request = f"GET {path}"
        loop: RetryLoop[Optional[str]] = RetryLoop(
            deadline=self._deadline,
            backoff=dataclasses.replace(self._backoff, attempt=0),
            classify=_classify,
            give_up=lambda done: self._gave_up(request, done),
            on_failure=lambda failure, attempt: _log_failure(request, failure, attempt),
            min_attempt_seconds=MIN_ATTEMPT_TIMEOUT_SECONDS,
        )
        return loop.run(lambda: self._get(path), parse)

    def _gave_up(self, request: str, loop: RetryLoop[Optional[str]]) -> ServiceUnavailable:
        tries = f"{loop.attempts} {'attempt' if loop.attempts == 1 else 'attempts'}"
        if loop.not_answer is not None:
            # An answer was not believed: that, not the outage that may have followed, is the reason.
            unbelieved = loop.not_answer.request or request
            return ServiceUnavailable(
                f"IMDS at {self.endpoint} gave no valid answer to {unbelieved} within "
                f"{self._deadline.seconds:g} s ({tries}): {loop.not_answer.error}; {_NOT_IMDS_FIX}"
            )
        last = loop.last
        where = (last.request if last else None) or request
        error = last.error if last else "no attempt: the deadline had already passed"
        logger.debug("imds_gave_up", request=where, attempts=loop.attempts, error=error)
        return ServiceUnavailable(
            f"IMDS at {self.endpoint} did not answer within {self._deadline.seconds:g} s "
            f"({tries} at {where}, last error: {error}): {_REACH_IMDS_FIX}"
        )

    # -- protocol: one attempt -------------------------------------------------------------

    def _get(self, path: str) -> Optional[str]:
        """GET `path` with a token: the body on 200, None on 404."""
        response = self._http("GET", path, {TOKEN_HEADER: self._current_token()})
        if response.status_code == 401:
            # The token expired or IMDS restarted: one new token, then one more try.
            logger.info("imds_token_rejected", path=path)
            self._token = None
            response = self._http("GET", path, {TOKEN_HEADER: self._current_token()})
            if response.status_code == 401:
                # Twice in a row: IMDS restarting, or something between rewriting requests. Not an
                # answer to believe; retried to the deadline like any other.
                self._token = None
                raise NotServiceAnswer(
                    f"IMDS refused a fresh session token (401 on GET {path}): check that nothing "
                    "between the agent and IMDS rewrites requests"
                )
        status = response.status_code
        if status == 403:
            raise self._forbidden(f"GET {path}")
        if status == 404:
            return None
        if status == 200:
            return response.content.decode("utf-8", errors="replace")
        raise CredentialsError(f"IMDS at {self.endpoint} answered {status} to GET {path}: {_REACH_IMDS_FIX}")

    def adopt_token(self, token: str) -> None:
        """Use `token`, which IMDS at this endpoint granted just now for this client's TTL (the
        endpoint race's, agent/aws/imds_endpoints.py), instead of asking for another."""
        REDACTOR.add(token)
        self._token = token
        margin = min(TOKEN_RENEW_MARGIN_SECONDS, self._token_ttl_seconds / 2)
        self._token_renew_at = time.monotonic() + self._token_ttl_seconds - margin

    def _current_token(self) -> str:
        if self._token is None or time.monotonic() >= self._token_renew_at:
            self._token = self._request_token()
            REDACTOR.add(self._token)
            logger.debug("imds_token_issued", ttl_seconds=self._token_ttl_seconds)
            margin = min(TOKEN_RENEW_MARGIN_SECONDS, self._token_ttl_seconds / 2)
            lifetime = self._token_ttl_seconds - margin
            self._token_renew_at = time.monotonic() + lifetime
        return self._token

    def _request_token(self) -> str:
        """One PUT for a session token."""
        response = self._http("PUT", TOKEN_PATH, {TOKEN_TTL_HEADER: str(self._token_ttl_seconds)})
        status = response.status_code
        if status == 403:
            raise self._forbidden(f"PUT {TOKEN_PATH}")
        if status in (404, 405):
            raise CredentialsError(
                f"IMDS at {self.endpoint} does not offer IMDSv2 session tokens ({status} on PUT "
                f"{TOKEN_PATH}): this agent only speaks IMDSv2; check the endpoint"
            )
        if status != 200:
            raise CredentialsError(
                f"IMDS at {self.endpoint} refused a session token ({status} on PUT {TOKEN_PATH}, "
                f"TTL {self._token_ttl_seconds} s): {_REACH_IMDS_FIX}"
            )
        token = response.content.decode("ascii", errors="replace").strip()
        if not _TOKEN_RE.fullmatch(token):
            raise NotServiceAnswer("the answer is not a session token", request=f"PUT {TOKEN_PATH}")
        return token

    def _forbidden(self, request: str) -> CredentialsError:
        return CredentialsError(
            f"IMDS is disabled or blocked (403 from {self.endpoint} on {request}): {_ENABLE_IMDS_FIX}"
        )

    def _http(self, method: str, path: str, headers: dict[str, str]) -> requests.Response:
        """One request, its timeout cut to what is left of the deadline. The one place requests'
        exceptions, and the statuses worth another try, are translated (into _NoAnswer)."""
        request = f"{method} {path}"
        remaining = self._deadline.remaining
        if remaining < MIN_ATTEMPT_TIMEOUT_SECONDS:
            raise _NoAnswer(request, "no attempt: the deadline had already passed")
        timeout = min(self._timeout_seconds, remaining)
        started = time.monotonic()
        try:
            response = self._session.request(
                method,
                self.endpoint + path,
                headers=headers,
                timeout=timeout,
                allow_redirects=False,
                proxies=_no_proxies_for(self._session),
            )
        except (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
        ) as exc:
            raise _NoAnswer(request, _describe_failure(exc, timeout)) from None
        logger.debug(
            "imds_request",
            method=method,
            path=path,
            status=response.status_code,
            elapsed_ms=round((time.monotonic() - started) * 1000),
        )
        if response.status_code in _RETRIED_STATUSES:
            response.close()
            raise _NoAnswer(request, f"HTTP {response.status_code}")
        return response


class _NoAnswer(Exception):
    """No answer from IMDS to one request, or one worth another try (429, 5xx): an outage."""

    def __init__(self, request: str, error: str) -> None:
        super().__init__(error)
        self.failure = Failure(Kind.OUTAGE, error, request)


def _classify(error: Exception) -> Optional[Failure]:
    """No answer is an outage; anything else the attempt raises is not retried."""
    return error.failure if isinstance(error, _NoAnswer) else None


def _log_failure(request: str, failure: Failure, attempt: int) -> None:
    if failure.kind is Kind.NOT_ANSWER:
        logger.warning(
            "imds_answer_rejected", request=failure.request or request, attempt=attempt, reason=failure.error
        )
    else:
        logger.debug("imds_request_failed", request=failure.request, attempt=attempt, error=failure.error)


def _no_proxies_for(session: requests.Session) -> Any:
    # Also cancel any per-scheme-and-host proxy a caller put on its own session.
    return {**dict.fromkeys(session.proxies), **_NO_PROXIES}


_ERRNO_TEXT = re.compile(r"\[Errno -?\d+\] ([A-Za-z][A-Za-z ,'-]*)")


def _describe_failure(exc: requests.RequestException, timeout: float) -> str:
    """A short, secret-free reason for a failed attempt ("connection refused")."""
    if isinstance(exc, requests.ConnectTimeout):
        return f"no connection within {timeout:.2g} s"
    if isinstance(exc, requests.Timeout):
        return f"no answer within {timeout:.2g} s"
    text = str(exc)
    found = _ERRNO_TEXT.search(text)
    if found:
        return found.group(1).strip().lower()
    if "RemoteDisconnected" in text or "Connection aborted" in text:
        return "connection closed without an answer"
    return f"connection failed ({type(exc).__name__})"


def _parse_role_list(listing: Optional[str]) -> str:
    """The role IMDS lists first; a 404 or an empty list means no role is attached."""
    roles = [line.strip() for line in (listing or "").splitlines() if line.strip()]
    if not roles:
        raise CredentialsError(f"no IAM role is attached to this instance: {_ATTACH_ROLE_FIX}")
    if not _ROLE_NAME_RE.fullmatch(roles[0]):
        raise NotServiceAnswer("the role list does not hold a role name")
    return roles[0]


def _parse_credentials(role: str, document_text: Optional[str]) -> RoleCredentials:
    """Check IMDS's credentials document and turn it into RoleCredentials.

    A document that is not JSON, lacks a field, says a Code other than Success or has already
    expired is not believed (NotServiceAnswer): IMDS may be mid-rotation, and the caller retries.
    """
    if document_text is None:
        raise NotServiceAnswer(
            f"IMDS lists IAM role {role} but has no credentials for it (404): the instance profile may "
            "be changing, or was re-attached"
        )
    try:
        document = json.loads(document_text)
    except ValueError:
        # The document holds the secret key: never quote it, not even in part.
        raise NotServiceAnswer(f"the credentials document for IAM role {role} is not JSON") from None
    if not isinstance(document, dict):
        raise NotServiceAnswer(f"the credentials document for IAM role {role} is not an object")
    code = document.get("Code")
    if code != "Success":
        raise NotServiceAnswer(
            f"IMDS could not provide credentials for IAM role {role} (Code={code!s}): check the role "
            "still exists and trusts ec2.amazonaws.com, or re-attach the instance profile"
        )
    missing = [
        name for name in _CREDENTIAL_FIELDS if not isinstance(document.get(name), str) or not document[name]
    ]
    if missing:
        raise NotServiceAnswer(f"the credentials document for IAM role {role} lacks {', '.join(missing)}")
    # Registered before any further check can fail, so that nothing logs them even in part.
    secret_access_key, token = document["SecretAccessKey"], document["Token"]
    REDACTOR.add(secret_access_key)
    REDACTOR.add(token)
    expiration = document["Expiration"]
    try:
        expires = datetime.fromisoformat(expiration.replace("Z", "+00:00"))
    except ValueError:
        raise NotServiceAnswer(f"the credentials of IAM role {role} have an unreadable Expiration") from None
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=timezone.utc)
    if expires <= datetime.now(timezone.utc):
        raise NotServiceAnswer(f"the credentials of IAM role {role} expired at {expiration}")
    return RoleCredentials(
        role=role,
        access_key_id=document["AccessKeyId"],
        secret_access_key=secret_access_key,
        token=token,
        expiration=expiration,
    )
