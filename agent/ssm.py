"""SSM Parameter Store client: batched GetParameters and paged GetParametersByPath over botocore.

Every call runs under the agent's own retry loop (time-bounded, full jitter), and every answer is
checked (agent.answers) before it is believed: an answer that is not SSM's is retried like an
outage, never read as "no such parameter".
"""

from __future__ import annotations

import http.client
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Callable, Optional, TypeVar

import structlog
import urllib3.exceptions
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from agent import __version__, aws_endpoints
from agent.answers import (
    NOT_FOUND_ERROR_CODES,
    SECRETS_MANAGER_PREFIX,
    THROTTLING_ERROR_CODES,
    NotSsmAnswer,
    Parameter,
    check_describe_page,
    check_get_parameter,
    check_get_parameters,
    check_path_page,
    denies_action,
    describe_http,
    error_code,
    error_message,
    is_foreign_error,
    is_retryable_error,
    map_client_error,
    names_selector,
    split_selector,
)
from agent.aws_endpoints import NO_FLAGS, EndpointFlags
from agent.errors import AccessDenied, AgentError, ConfigError, CredentialsError, ServiceUnavailable
from agent.retry import Backoff, Deadline, ThrottleMemory

_log = structlog.get_logger()

# GetParameters takes at most 10 names; GetParametersByPath returns at most 10 per page.
GET_PARAMETERS_MAX_NAMES = 10
GET_PARAMETERS_BY_PATH_MAX_RESULTS = 10
DESCRIBE_PARAMETERS_MAX_RESULTS = 50
CONNECT_TIMEOUT_SECONDS = 3.0
READ_TIMEOUT_SECONDS = 10.0
MIN_TIMEOUT_SECONDS = 0.1
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
# says list): the body is not SSM's answer.
_PARSE_ERRORS = (AttributeError, TypeError, ValueError, KeyError)

_T = TypeVar("_T")

_NOT_SSM_FIX = (
    "check ssm_endpoint in agent.toml or AWS_ENDPOINT_URL_SSM / AWS_ENDPOINT_URL, and any proxy "
    "between this host and SSM (a TLS-inspecting proxy answers with a page of its own)"
)


class SsmClient:
    """One botocore SSM client, built once so that its HTTPS connection is reused by every call."""

    def __init__(
        self,
        *,
        region: str,
        endpoint_url: Optional[str],
        credentials: Optional[tuple[str, str, str]],
        deadline: Deadline,
        backoff_factory: Callable[[], Backoff] = Backoff,
        role: Optional[str] = None,
        on_status: Callable[[str], None] = lambda _text: None,
        connect_timeout_seconds: float = CONNECT_TIMEOUT_SECONDS,
        read_timeout_seconds: float = READ_TIMEOUT_SECONDS,
        endpoint_flags: EndpointFlags = NO_FLAGS,
    ) -> None:
        started = time.perf_counter()
        # botocore is imported here and in create_client, not at the top: botocore.session costs
        # ~100 ms, which commands that never call SSM (--version, clean, enable) should not pay.
        # botocore's Session directly, since boto3 only adds import time on top of it.
        from botocore.config import Config  # noqa: PLC0415

        self._deadline = deadline
        self._backoff_factory = backoff_factory
        self._on_status = on_status
        # What this process knows of the fleet's throttling, kept from one call to the next.
        self._throttle_memory = ThrottleMemory()
        self._throttled_since: Optional[float] = None
        self._throttled_answers = 0
        self._reported_at = 0.0
        self.calls_planned = 0
        self.calls_done = 0
        self._role = role
        # Set when SSM denies ssm:GetParameters: from then on, one GetParameter per name.
        self.fetches_one_by_one = False
        config = Config(
            # Our loop retries until the deadline; botocore's would stop after a count.
            retries={"total_max_attempts": 1, "mode": "standard"},
            # Never wait for one answer longer than the whole outage deadline: with deadline_seconds = 5
            # an SSM that never answers ends the run after 5 s (at most twice that), not botocore's 10.
            connect_timeout=max(MIN_TIMEOUT_SECONDS, min(connect_timeout_seconds, deadline.seconds)),
            read_timeout=max(MIN_TIMEOUT_SECONDS, min(read_timeout_seconds, deadline.seconds)),
            user_agent_extra=f"secrets-agent/{__version__}",
        )
        try:
            self._client: Any = create_client(
                "ssm",
                region=region,
                endpoint_url=endpoint_url,
                credentials=credentials,
                config=config,
                flags=endpoint_flags,
            )
        except (BotoCoreError, ValueError) as exc:
            # botocore's messages here name only the region or the URL, never a secret.
            raise ConfigError(
                f"cannot build an SSM client for region {region!r} and endpoint {endpoint_url!r}: "
                f"{type(exc).__name__}; fix region / ssm_endpoint in agent.toml or AWS_ENDPOINT_URL_SSM"
            ) from None
        # Where the requests go, by botocore's endpoint rules (dual-stack, FIPS), or the explicit one.
        self.endpoint: str = (
            str(self._client.meta.endpoint_url)
            if endpoint_url
            else aws_endpoints.resolved_endpoint(self._client)
        )
        _log.debug(
            "ssm_client_created",
            region=region,
            endpoint=self.endpoint,
            elapsed_ms=round((time.perf_counter() - started) * 1000, 1),
        )

    def fetch(
        self, selectors: Iterable[str], *, decrypt: bool = True
    ) -> tuple[dict[str, Parameter], list[str]]:
        """Resolve every selector with GetParameters, 10 per call; return found by selector, and missing.

        decrypt=False asks WithDecryption=false: versions without kms:Decrypt (a SecureString's
        Value is then its ciphertext, which nothing uses)."""
        unique = list(dict.fromkeys(selectors))
        self.calls_planned += (
            len(unique) if self.fetches_one_by_one else -(-len(unique) // GET_PARAMETERS_MAX_NAMES)
        )
        started = time.perf_counter()
        found: dict[str, Parameter] = {}
        missing: list[str] = []
        calls = 0
        start = 0
        while start < len(unique):
            if self.fetches_one_by_one:
                batch = unique[start : start + 1]
                batch_found, batch_missing, batch_calls = self._fetch_one(batch[0], decrypt)
            else:
                batch = unique[start : start + GET_PARAMETERS_MAX_NAMES]
                try:
                    batch_found, batch_missing, batch_calls = self._fetch_batch(batch, decrypt)
                except _GetParametersDenied:
                    self._fall_back(remaining=len(unique) - start)
                    calls += 1
                    continue  # the same names again, one by one
            found.update(batch_found)
            missing.extend(batch_missing)
            calls += batch_calls
            start += len(batch)
        _log.info(
            "ssm_fetched",
            requested=len(unique),
            found=len(found),
            missing=missing,
            calls=calls,
            versions={selector: parameter.version for selector, parameter in found.items()},
            elapsed_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return found, missing

    def fetch_path(self, path: str, *, recursive: bool, decrypt: bool = True) -> list[Parameter]:
        """Every parameter under `path` (one level, or all with `recursive`), following every page."""
        started = time.perf_counter()
        parameters: list[Parameter] = []
        request: dict[str, Any] = {
            "Path": path,
            "Recursive": recursive,
            "WithDecryption": decrypt,
            "MaxResults": GET_PARAMETERS_BY_PATH_MAX_RESULTS,
        }
        seen_names: set[str] = set()

        def check_page(response: Any) -> tuple[list[Parameter], Optional[str]]:
            page, token = check_path_page(path, recursive=recursive, response=response)
            if any(parameter.name in seen_names for parameter in page):
                raise NotSsmAnswer(f"listing {path}, a page repeated a parameter of an earlier page")
            return page, token

        pages = 0
        try:
            for page in self._pages("GetParametersByPath", [path], request, check_page):
                pages += 1
                parameters.extend(page)
                seen_names.update(parameter.name for parameter in page)
        except _RejectedCall as rejected:
            # SSM said the path does not exist: an empty mapping (or the end of it), not an error.
            if rejected.code != "ParameterNotFound":
                raise rejected.mapped from None
        _log.info(
            "ssm_path_fetched",
            path=path,
            recursive=recursive,
            count=len(parameters),
            pages=pages,
            names=[parameter.name for parameter in parameters],
            elapsed_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return parameters

    def _fetch_batch(self, batch: list[str], decrypt: bool) -> tuple[dict[str, Parameter], list[str], int]:
        """One GetParameters call for up to 10 selectors, plus follow-ups only when AWS's answer leaves
        a selector unresolved (a batch refused for one missing secret, or labels it cannot tell apart)."""
        try:
            found, missing, ambiguous = self._call(
                "GetParameters",
                batch,
                {"Names": batch, "WithDecryption": decrypt},
                lambda response: check_get_parameters(batch, response),
            )
        except _RejectedCall as rejected:
            if denies_action(rejected.code, rejected.message, "GetParameters"):
                raise _GetParametersDenied from None
            if rejected.code not in NOT_FOUND_ERROR_CODES:
                raise rejected.mapped from None
            return self._split_rejected_batch(batch, rejected, decrypt)
        calls = 1
        for selector in ambiguous:
            one_found, one_missing, one_calls = self._fetch_batch([selector], decrypt)
            found.update(one_found)
            missing.extend(one_missing)
            calls += one_calls
        return found, missing, calls

    def _fall_back(self, *, remaining: int) -> None:
        """Switch this client to one GetParameter per name, and say once what that costs."""
        self.fetches_one_by_one = True
        batched = -(-remaining // GET_PARAMETERS_MAX_NAMES)
        self.calls_planned += remaining - batched
        _log.warning(
            "ssm_get_parameters_denied",
            role=self._role,
            fallback="ssm:GetParameter",
            calls=f"{remaining} GetParameter calls instead of {batched} GetParameters",
            fix="grant ssm:GetParameters on the same parameters as ssm:GetParameter "
            "(`secrets-agent policy NAME` prints the policy) to fetch 10 names a call",
        )

    def _fetch_one(self, selector: str, decrypt: bool) -> tuple[dict[str, Parameter], list[str], int]:
        """One GetParameter call: (found, missing, 1); a denial names both actions."""
        try:
            parameter = self._call(
                "GetParameter",
                [selector],
                {"Name": selector, "WithDecryption": decrypt},
                lambda response: check_get_parameter(selector, response),
            )
        except _RejectedCall as rejected:
            if rejected.code in NOT_FOUND_ERROR_CODES:
                return {}, [selector], 1
            if denies_action(rejected.code, rejected.message, "GetParameter"):
                who = f"role {self._role}" if self._role else "this instance's role"
                name = split_selector(selector)[0]
                raise AccessDenied(
                    f"SSM denied both ssm:GetParameters and ssm:GetParameter on {name} "
                    f"for {who}: grant ssm:GetParameters (10 names a call) or ssm:GetParameter on it in "
                    "the instance profile"
                ) from None
            raise rejected.mapped from None
        return {selector: parameter}, [], 1

    def describe_parameters(self, filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every parameter's metadata (Name, Type, KeyId; never a value) DescribeParameters matches."""
        request: dict[str, Any] = {"ParameterFilters": filters, "MaxResults": DESCRIBE_PARAMETERS_MAX_RESULTS}
        described: list[dict[str, Any]] = []
        names = [str(f.get("Values")) for f in filters]
        try:
            for page in self._pages("DescribeParameters", names, request, check_describe_page):
                described.extend(page)
        except _RejectedCall as rejected:
            raise rejected.mapped from None
        return described

    def _pages(
        self,
        action: str,
        names: Sequence[str],
        request: dict[str, Any],
        check: Callable[[Any], tuple[list[_T], Optional[str]]],
    ) -> Iterator[list[_T]]:
        """Every page of a paged call, in order. Only a missing NextToken ends the listing (a page may
        be empty and still carry one); a token that does not advance is not SSM's answer, retried
        like any other, never an endless loop nor a listing cut short."""
        seen_tokens: set[str] = set()

        def check_advancing(response: Any) -> tuple[list[_T], Optional[str]]:
            page, token = check(response)
            if token is not None and token in seen_tokens:
                raise NotSsmAnswer(f"listing {', '.join(names)}, the page token did not advance")
            return page, token

        self.calls_planned += 1
        while True:
            page, token = self._call(action, names, request, check_advancing)
            yield page
            if token is None:
                return
            seen_tokens.add(token)
            request["NextToken"] = token
            self.calls_planned += 1

    def _split_rejected_batch(
        self, batch: list[str], rejected: _RejectedCall, decrypt: bool
    ) -> tuple[dict[str, Parameter], list[str], int]:
        # GetParameters may fail a whole batch for one absent secret reference or version instead
        # of listing it in InvalidParameters; find that one, report it missing and ask for the rest.
        if len(batch) == 1:
            return {}, list(batch), 1
        named = [selector for selector in batch if names_selector(rejected.message, selector)]
        if named:
            suspects = named
        elif rejected.code == "ParameterVersionNotFound":
            suspects = [selector for selector in batch if split_selector(selector)[1]]
        else:
            suspects = [selector for selector in batch if selector.startswith(SECRETS_MANAGER_PREFIX)]
        if not suspects:
            suspects = list(batch)
        found: dict[str, Parameter] = {}
        missing: list[str] = list(named)
        calls = 1
        groups = [[selector] for selector in suspects if selector not in named]
        rest = [selector for selector in batch if selector not in suspects]
        if rest:
            groups.insert(0, rest)
        for group in groups:
            group_found, group_missing, group_calls = self._fetch_batch(group, decrypt)
            found.update(group_found)
            missing.extend(group_missing)
            calls += group_calls
        return found, missing, calls

    def _call(
        self, action: str, names: Sequence[str], request: dict[str, Any], check: Callable[[Any], _T]
    ) -> _T:
        """Run one API call and return `check` of its answer, retrying throttling, 5xx, network errors
        and answers that are not SSM's until the deadline."""
        method = getattr(self._client, _snake_case(action))
        backoff = self._backoff_factory()
        backoff.memory = self._throttle_memory
        attempt = 0
        while True:
            attempt += 1
            started = time.perf_counter()
            not_ssm: Optional[str] = None  # why the last answer was not believed, if that was the failure
            is_throttled = False
            response: Any = None
            try:
                response = method(**request)
                result = check(response)
            except NotSsmAnswer as bad:
                not_ssm = f"{bad.reason} ({describe_http(response)})"
            except ClientError as error:
                last_error = error_code(error)
                if is_foreign_error(error):
                    not_ssm = f"HTTP {last_error}, no SSM error in the body"
                elif last_error in THROTTLING_ERROR_CODES:
                    is_throttled = True
                elif not is_retryable_error(error):
                    self._deadline.note_answer()
                    raise _RejectedCall(
                        last_error,
                        error_message(error),
                        map_client_error(
                            error, action=action, names=names, role=self._role, endpoint=self.endpoint
                        ),
                    ) from None
            except _NETWORK_ERRORS as error:
                # EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError,
                # a body cut short: refused or slow connects, answers that never come or never end.
                last_error = type(error).__name__
            except (NoCredentialsError, PartialCredentialsError):
                raise CredentialsError(
                    f"no AWS credentials for ssm:{action}: attach an instance profile (IMDS gives its "
                    "credentials) or, off EC2, configure the AWS default credential chain"
                ) from None
            except BotoCoreError as error:
                raise AgentError(f"ssm:{action} failed before reaching SSM: {type(error).__name__}") from None
            except _PARSE_ERRORS as error:
                not_ssm = f"a body botocore could not read as SSM's ({type(error).__name__})"
            else:
                self._let_through(action, names, attempt, started)
                return result
            if not_ssm is not None:
                last_error = "an answer that is not SSM's: " + not_ssm
            if is_throttled:
                self._throttled(action)
            else:
                _log.warning(
                    "ssm_retry",
                    action=action,
                    attempt=attempt,
                    error=last_error,
                    remaining_seconds=round(self._deadline.remaining, 2),
                )
            if not backoff.wait(self._deadline, is_throttled=is_throttled):
                raise self._gave_up(action, attempt, last_error, not_ssm=not_ssm, is_throttled=is_throttled)

    def _let_through(self, action: str, names: Sequence[str], attempt: int, started: float) -> None:
        self._deadline.note_answer()
        self._throttle_memory.let_through()
        self.calls_done += 1
        if self._throttled_since is not None:
            _log.info(
                "ssm_throttle_passed",
                action=action,
                throttled_seconds=round(time.monotonic() - self._throttled_since, 1),
                throttled_answers=self._throttled_answers,
                calls_left=max(0, self.calls_planned - self.calls_done),
            )
            self._throttled_since = None
            self._throttled_answers = 0
            self._on_status("SSM let the call through; fetching")
        _log.debug(
            "ssm_call",
            action=action,
            names=list(names),
            attempt=attempt,
            elapsed_ms=round((time.perf_counter() - started) * 1000, 1),
        )

    def _throttled(self, action: str) -> None:
        """SSM is up and busy: count it, keep the outage deadline from running out, and say so at most
        every THROTTLED_REPORT_INTERVAL_SECONDS."""
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
            "ssm_throttled",
            action=action,
            throttled_seconds=waited,
            throttled_answers=self._throttled_answers,
            calls_left=calls_left,
            budget_left_seconds=budget_left,
        )
        self._on_status(
            f"SSM is throttling (fleet boot?): waiting {waited:g} s so far, {calls_left} "
            f"{'call' if calls_left == 1 else 'calls'} left, giving up in {budget_left} s"
        )

    def _gave_up(
        self, action: str, attempts: int, last_error: str, *, not_ssm: Optional[str], is_throttled: bool
    ) -> ServiceUnavailable:
        if not_ssm is not None:
            return ServiceUnavailable(
                f"SSM at {self.endpoint} gave no valid answer to ssm:{action} within the "
                f"{self._deadline.seconds:g} s deadline ({attempts} attempts): the last answer was "
                f"not SSM's: {not_ssm}; {_NOT_SSM_FIX}"
            )
        if is_throttled:
            return ServiceUnavailable(
                f"SSM at {self.endpoint} kept throttling ssm:{action} ({last_error}) until the "
                f"{self._deadline.budget_seconds:g} s throttled budget ran out ({self._throttled_answers} "
                "throttled answers): the account's Parameter Store throughput (shared by every instance "
                "and tool in the account and region) is exhausted; raise throttle_deadline_seconds, "
                "enable higher throughput (aws ssm update-service-setting --setting-id "
                "/ssm/parameter-store/high-throughput-enabled --setting-value true) or stagger the boot"
            )
        return ServiceUnavailable(
            f"SSM at {self.endpoint} did not answer ssm:{action} within the "
            f"{self._deadline.seconds:g} s deadline ({attempts} attempts, last error {last_error}): "
            "check the network path to SSM (VPC endpoint, NAT, security groups), or raise deadline_seconds"
        )


def create_client(
    service: str,
    *,
    region: str,
    endpoint_url: Optional[str],
    credentials: Optional[tuple[str, str, str]],
    config: Any,
    flags: EndpointFlags = NO_FLAGS,
) -> Any:
    """A botocore client for `service`; `credentials` None leaves them to botocore's default chain.

    `flags` (dual-stack, FIPS) go to botocore's own endpoint rules; a region without such an
    endpoint is a ConfigError here, before any call (agent/aws_endpoints.py)."""
    import botocore.session  # noqa: PLC0415  (see SsmClient: commands without AWS calls skip it)

    access_key, secret_key, token = credentials if credentials else (None, None, None)
    session = botocore.session.Session()
    session.register_component("data_loader", _one_service_loader(service))
    aws_endpoints.prepare_session(session, service)
    explicit = endpoint_url is not None
    client = session.create_client(
        service,
        region_name=region,
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        aws_session_token=token or None,
        config=aws_endpoints.client_config(config, flags, explicit_endpoint=explicit),
    )
    aws_endpoints.check_endpoint(session, client, service, region, flags, explicit_endpoint=explicit)
    return client


def _one_service_loader(service: str) -> Any:
    """botocore's data Loader, except that it lists only `service` as available.

    Loading a model starts by listing every service botocore ships (~400 folders, ~900 stat calls)
    only to check that the name is among them: ~15 ms of a ~290 ms render (bench/RESULTS.md section
    6), paid before the first SSM call. The models themselves still come from botocore's own
    files, found the usual way.
    """
    import botocore.loaders  # noqa: PLC0415
    from botocore.exceptions import DataNotFoundError  # noqa: PLC0415

    class OneServiceLoader(botocore.loaders.Loader):  # type: ignore[misc]
        def list_available_services(self, type_name: str) -> list[str]:
            try:
                self.list_api_versions(service, type_name)
            except DataNotFoundError:
                return []
            return [service]

    return OneServiceLoader()


class _GetParametersDenied(Exception):
    """IAM refused ssm:GetParameters itself: the caller falls back to GetParameter."""


class _RejectedCall(Exception):
    """A call SSM refused for good; carries the code for callers that treat some codes as answers."""

    def __init__(self, code: str, message: str, mapped: AgentError) -> None:
        super().__init__(code)
        self.code = code
        self.message = message
        self.mapped = mapped


def _snake_case(action: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", action).lower()
