"""SSM Parameter Store client: batched GetParameters and paged GetParametersByPath over botocore.

Every call runs under the agent's one retry loop (agent.aws.retry), and every answer is checked
(agent.aws.answers) before it is believed: an answer that is not SSM's is retried like an outage, never
read as "no such parameter".
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Callable, Optional, TypeVar

import structlog

from agent.aws.answers import (
    Parameter,
    check_describe_page,
    check_get_parameter,
    check_get_parameters,
    check_path_page,
)
from agent.aws.clients import create_agent_client
from agent.aws.endpoints import NO_FLAGS, EndpointFlags
from agent.aws.retry import Backoff, Deadline, NotServiceAnswer
from agent.aws.selectors import SECRETS_MANAGER_PREFIX, parse_selector
from agent.aws.ssm_call import RejectedCall, SsmCaller
from agent.aws.ssm_errors import NOT_FOUND_ERROR_CODES, denies_action
from agent.errors import AccessDenied

_log = structlog.get_logger()

# GetParameters takes at most 10 names; GetParametersByPath returns at most 10 per page.
GET_PARAMETERS_MAX_NAMES = 10
GET_PARAMETERS_BY_PATH_MAX_RESULTS = 10
DESCRIBE_PARAMETERS_MAX_RESULTS = 50
CONNECT_TIMEOUT_SECONDS = 3.0
READ_TIMEOUT_SECONDS = 10.0

_T = TypeVar("_T")


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
        self._role = role
        # Set when SSM denies ssm:GetParameters: from then on, one GetParameter per name.
        self.fetches_one_by_one = False
        client, self.endpoint_flags = create_agent_client(
            "ssm",
            region=region,
            endpoint_url=endpoint_url,
            credentials=credentials,
            deadline_seconds=deadline.seconds,
            connect_timeout_seconds=connect_timeout_seconds,
            read_timeout_seconds=read_timeout_seconds,
            flags=endpoint_flags,
        )
        self._caller = SsmCaller(
            client,
            deadline,
            backoff_factory=backoff_factory,
            role=role,
            on_status=on_status,
            endpoint_url=endpoint_url,
        )
        self._call = self._caller.call
        self.endpoint = self._caller.endpoint
        _log.debug(
            "ssm_client_created",
            region=region,
            endpoint=self.endpoint,
            elapsed_ms=round((time.perf_counter() - started) * 1000, 1),
        )

    @property
    def calls_done(self) -> int:
        """How many SSM calls got an answer so far."""
        return self._caller.calls_done

    @property
    def throttled_seconds(self) -> float:
        """Seconds this client has waited while SSM throttled it so far."""
        return self._caller.throttled_seconds

    def fetch(
        self, selectors: Iterable[str], *, decrypt: bool = True
    ) -> tuple[dict[str, Parameter], list[str]]:
        """Resolve every selector with GetParameters, 10 per call; return found by selector, and missing.

        decrypt=False asks WithDecryption=false: versions without kms:Decrypt (a SecureString's
        Value is then its ciphertext, which nothing uses)."""
        unique = list(dict.fromkeys(selectors))
        self._caller.calls_planned += (
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
                raise NotServiceAnswer(f"listing {path}, a page repeated a parameter of an earlier page")
            return page, token

        pages = 0
        try:
            for page in self._pages("GetParametersByPath", [path], request, check_page):
                pages += 1
                parameters.extend(page)
                seen_names.update(parameter.name for parameter in page)
        except RejectedCall as rejected:
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
        except RejectedCall as rejected:
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
        self._caller.calls_planned += remaining - batched
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
        except RejectedCall as rejected:
            if rejected.code in NOT_FOUND_ERROR_CODES:
                return {}, [selector], 1
            if denies_action(rejected.code, rejected.message, "GetParameter"):
                who = f"role {self._role}" if self._role else "this instance's role"
                name = parse_selector(selector).name
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
        except RejectedCall as rejected:
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
                raise NotServiceAnswer(f"listing {', '.join(names)}, the page token did not advance")
            return page, token

        self._caller.calls_planned += 1
        while True:
            page, token = self._call(action, names, request, check_advancing)
            yield page
            if token is None:
                return
            seen_tokens.add(token)
            request["NextToken"] = token
            self._caller.calls_planned += 1

    def _split_rejected_batch(
        self, batch: list[str], rejected: RejectedCall, decrypt: bool
    ) -> tuple[dict[str, Parameter], list[str], int]:
        # GetParameters may fail a whole batch for one absent secret reference or version instead
        # of listing it in InvalidParameters; find that one, report it missing and ask for the rest.
        if len(batch) == 1:
            return {}, list(batch), 1
        named = [selector for selector in batch if parse_selector(selector).is_named_in(rejected.message)]
        if named:
            suspects = named
        elif rejected.code == "ParameterVersionNotFound":
            suspects = [selector for selector in batch if parse_selector(selector).suffix]
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


class _GetParametersDenied(Exception):
    """IAM refused ssm:GetParameters itself: the caller falls back to GetParameter."""
