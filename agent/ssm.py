"""SSM Parameter Store client: batched GetParameters and paged GetParametersByPath over botocore.

Every call runs under the agent's own retry loop (time-bounded, full jitter) and every AWS error
is translated here into the agent's error types, with messages that name resources, never values.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import structlog
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from agent import __version__
from agent.errors import (
    AccessDenied,
    AgentError,
    ConfigError,
    CredentialsError,
    ServiceUnavailable,
    TemplateError,
)
from agent.retry import Backoff, Deadline

_log = structlog.get_logger()

# GetParameters takes at most 10 names; GetParametersByPath returns at most 10 per page.
GET_PARAMETERS_MAX_NAMES = 10
GET_PARAMETERS_BY_PATH_MAX_RESULTS = 10
CONNECT_TIMEOUT_SECONDS = 3.0
READ_TIMEOUT_SECONDS = 10.0
SECRETS_MANAGER_PREFIX = "/aws/reference/secretsmanager/"

# SSM answers "ThrottlingException: Rate exceeded"; the rest are the codes botocore's own retry
# policy treats as throttling or transient, kept so that a proxy or VPC endpoint answering with
# one of them is retried as well.
THROTTLING_ERROR_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "ThrottledException",
        "RequestThrottledException",
        "RequestThrottled",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "ProvisionedThroughputExceededException",
        "SlowDown",
        "KMSThrottlingException",
    }
)
TRANSIENT_ERROR_CODES = frozenset(
    {
        "InternalServerError",
        "InternalFailure",
        "InternalError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
        "KeyUnavailableException",
        "DependencyTimeoutException",
    }
)
ACCESS_DENIED_ERROR_CODES = frozenset({"AccessDeniedException", "AccessDenied"})
# SSM reports most KMS refusals as AccessDeniedException with "(Service: AWSKMS ...)" in the
# message; these codes name a key that is unknown, disabled or unusable.
KMS_ERROR_CODES = frozenset(
    {
        "InvalidKeyId",
        "KMSAccessDeniedException",
        "KMSDisabledException",
        "KMSInvalidStateException",
        "KMSNotFoundException",
        "KMSOptInRequired",
        "DisabledException",
        "InvalidCiphertextException",
        "IncorrectKeyException",
        "NotFoundException",
    }
)
CREDENTIALS_ERROR_CODES = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "ExpiredTokenException",
        "ExpiredToken",
        "RequestExpired",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "AuthFailure",
    }
)
# SSM refused the request itself: a name, path or selector that breaks its rules (a path not
# starting with "/", more than 15 levels, a reserved "aws"/"ssm" prefix, a malformed selector):
# the template names it, so it is a template error.
VALIDATION_ERROR_CODES = frozenset({"ValidationException", "InvalidParameterException"})
# Answers that mean "this selector does not exist" when GetParameters fails a whole batch for it.
NOT_FOUND_ERROR_CODES = frozenset({"ParameterNotFound", "ParameterVersionNotFound"})

_KMS_MESSAGE_RE = re.compile(r"AWSKMS|kms:|\bKMS\b|ciphertext refers to a customer master key", re.I)
_KMS_KEY_ARN_RE = re.compile(r"arn:aws[\w-]*:kms:[\w-]+:\d{12}:(?:key|alias)/[\w/-]+")
_SSM_PARAMETER_ARN_RE = re.compile(r"arn:aws[\w-]*:ssm:[\w-]*:\d{12}:parameter(/?[\w./@:-]*[\w/@-])")
_ASSUMED_ROLE_RE = re.compile(r":assumed-role/([\w+=,.@-]+)/")
_ARN_RESOURCE_PREFIX_RE = re.compile(r"^arn:aws[\w-]*:ssm:[\w-]*:\d*:parameter")


@dataclass(frozen=True)
class Parameter:
    """One resolved parameter; its repr never shows the value."""

    name: str
    selector: str
    value: str = field(repr=False)
    version: int
    type: str


def split_selector(selector: str) -> tuple[str, str]:
    """Split "/x:3" into ("/x", ":3"); the second part is "" when no version or label is given.

    A full parameter ARN carries colons of its own, so only a colon after its resource part counts.
    """
    head = ""
    rest = selector
    arn_prefix = _ARN_RESOURCE_PREFIX_RE.match(selector)
    if arn_prefix:
        head, rest = selector[: arn_prefix.end()], selector[arn_prefix.end() :]
    base, colon, suffix = rest.partition(":")
    return head + base, (colon + suffix) if colon else ""


def _canonical_name(name: str) -> str:
    """The name compared when matching answers to requests: no ARN prefix, no leading slash."""
    return _ARN_RESOURCE_PREFIX_RE.sub("", name).lstrip("/")


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code") or "Unknown")


def _error_message(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Message") or "")


def _http_status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def is_retryable_error(error: ClientError) -> bool:
    """True for throttling, transient codes and any 5xx answer: worth another try before the deadline."""
    code = _error_code(error)
    if code in THROTTLING_ERROR_CODES or code in TRANSIENT_ERROR_CODES:
        return True
    return _http_status(error) >= 500


def _resource_from_message(message: str, names: Sequence[str]) -> Optional[str]:
    """The parameter an AWS denial names by ARN, spelled as the request spelled it when possible."""
    match = _SSM_PARAMETER_ARN_RE.search(message)
    if not match:
        return None
    denied = _canonical_name(match.group(1))
    for name in names:
        if _canonical_name(split_selector(name)[0]) == denied:
            return split_selector(name)[0]
    return match.group(1)


def map_client_error(
    error: ClientError,
    *,
    action: str,
    names: Sequence[str],
    role: Optional[str] = None,
    endpoint: str = "SSM",
) -> AgentError:
    """Translate a botocore ClientError into the agent's error, naming resources but never values.

    `action` is the API action ("GetParameters"), `names` the parameters or path of the call.
    """
    code = _error_code(error)
    message = _error_message(error)
    role_match = _ASSUMED_ROLE_RE.search(message)
    who = role or (role_match.group(1) if role_match else None)
    who_text = f"role {who}" if who else "this instance's role"
    bases = list(dict.fromkeys(split_selector(name)[0] for name in names))
    denied = _resource_from_message(message, names)
    if denied:
        listed = denied
    elif len(bases) == 1:
        listed = bases[0]
    else:
        listed = "one or more of " + ", ".join(bases) if bases else "(no parameter)"

    if code in THROTTLING_ERROR_CODES or code in TRANSIENT_ERROR_CODES:
        return _unavailable(code, action=action, listed=listed, endpoint=endpoint)
    is_kms_denial = code in ACCESS_DENIED_ERROR_CODES and bool(_KMS_MESSAGE_RE.search(message))
    if code in KMS_ERROR_CODES or code.startswith("KMS") or is_kms_denial:
        key_match = _KMS_KEY_ARN_RE.search(message)
        key = f"KMS key {key_match.group(0)}" if key_match else "the KMS key of the SecureString"
        return AccessDenied(
            f"SSM could not decrypt {listed} for {who_text}: {key} could not be used ({code}); "
            "grant the role kms:Decrypt on that key (its KeyId is in `aws ssm describe-parameters`) "
            "and make sure the key exists and is enabled"
        )
    if code in ACCESS_DENIED_ERROR_CODES:
        return AccessDenied(
            f"SSM denied ssm:{action} on {listed} for {who_text}: grant it in the instance profile"
        )
    if code in CREDENTIALS_ERROR_CODES:
        return CredentialsError(
            f"SSM at {endpoint} rejected the credentials for ssm:{action} ({code}): check that the "
            "instance profile is attached and IMDS hands out its credentials, and that the system "
            "clock is right (signatures expire)"
        )
    if code in VALIDATION_ERROR_CODES:
        return TemplateError(
            f"SSM refused ssm:{action} on {listed} as invalid ({code}): fix the name in the template. "
            "A name holds only letters, digits and _.-/ and does not start with aws or ssm (but for "
            "/aws/reference/secretsmanager/...); a path starts with '/'; at most 15 levels; "
            "a selector adds :VERSION or :LABEL"
        )
    if is_retryable_error(error):
        return _unavailable(code, action=action, listed=listed, endpoint=endpoint)
    return AgentError(f"SSM failed ssm:{action} on {listed} with {code}")


def _unavailable(code: str, *, action: str, listed: str, endpoint: str) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"SSM at {endpoint} failed ssm:{action} on {listed} ({code}): try again later, or raise "
        "deadline_seconds"
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
        connect_timeout_seconds: float = CONNECT_TIMEOUT_SECONDS,
        read_timeout_seconds: float = READ_TIMEOUT_SECONDS,
    ) -> None:
        started = time.perf_counter()
        # Imported here, not at the top: botocore.session costs ~100 ms, which commands that never
        # call SSM (--version, clean, enable) should not pay. botocore's Session directly, since
        # boto3 only adds import time on top of it.
        import botocore.session  # noqa: PLC0415
        from botocore.config import Config  # noqa: PLC0415

        self._deadline = deadline
        self._backoff_factory = backoff_factory
        self._role = role
        config = Config(
            # Our loop retries until the deadline; botocore's would stop after a count.
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=connect_timeout_seconds,
            read_timeout=read_timeout_seconds,
            user_agent_extra=f"secrets-agent/{__version__}",
        )
        access_key, secret_key, token = credentials if credentials else (None, None, None)
        try:
            self._client: Any = botocore.session.Session().create_client(
                "ssm",
                region_name=region,
                endpoint_url=endpoint_url,
                aws_access_key_id=access_key,
                aws_secret_access_key=secret_key,
                aws_session_token=token or None,
                config=config,
            )
        except (BotoCoreError, ValueError) as exc:
            # botocore's messages here name only the region or the URL, never a secret.
            raise ConfigError(
                f"cannot build an SSM client for region {region!r} and endpoint {endpoint_url!r}: "
                f"{type(exc).__name__}; fix region / ssm_endpoint in agent.toml or AWS_ENDPOINT_URL_SSM"
            ) from None
        self.endpoint: str = str(self._client.meta.endpoint_url)
        _log.debug(
            "ssm_client_created",
            region=region,
            endpoint=self.endpoint,
            elapsed_ms=round((time.perf_counter() - started) * 1000, 1),
        )

    def fetch(self, selectors: Iterable[str]) -> tuple[dict[str, Parameter], list[str]]:
        """Resolve every selector with GetParameters, 10 per call; return found by selector, and missing."""
        unique = list(dict.fromkeys(selectors))
        started = time.perf_counter()
        found: dict[str, Parameter] = {}
        missing: list[str] = []
        calls = 0
        for start in range(0, len(unique), GET_PARAMETERS_MAX_NAMES):
            batch = unique[start : start + GET_PARAMETERS_MAX_NAMES]
            batch_found, batch_missing, batch_calls = self._fetch_batch(batch)
            found.update(batch_found)
            missing.extend(batch_missing)
            calls += batch_calls
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

    def fetch_path(self, path: str, *, recursive: bool) -> list[Parameter]:
        """Every parameter under `path` (one level, or all with `recursive`), following every page."""
        started = time.perf_counter()
        parameters: list[Parameter] = []
        request: dict[str, Any] = {
            "Path": path,
            "Recursive": recursive,
            "WithDecryption": True,
            "MaxResults": GET_PARAMETERS_BY_PATH_MAX_RESULTS,
        }
        seen_tokens: set[str] = set()
        pages = 0
        while True:
            try:
                response = self._call("GetParametersByPath", [path], request)
            except _RejectedCall as rejected:
                if rejected.code == "ParameterNotFound":
                    break  # an absent path is an empty mapping, not an error
                raise rejected.mapped from None
            pages += 1
            parameters.extend(
                _parameter(item, selector=str(item["Name"])) for item in response.get("Parameters", [])
            )
            # A page may be empty and still carry a token: only a missing token ends the listing.
            token = response.get("NextToken")
            if not token:
                break
            if token in seen_tokens:
                raise AgentError(f"SSM repeated a page token listing {path}: stopping instead of looping")
            seen_tokens.add(token)
            request["NextToken"] = token
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

    def _fetch_batch(self, batch: list[str]) -> tuple[dict[str, Parameter], list[str], int]:
        """One GetParameters call for up to 10 selectors, plus follow-ups only when AWS's answer leaves
        a selector unresolved (a batch refused for one missing secret, or labels it cannot tell apart)."""
        try:
            response = self._call("GetParameters", batch, {"Names": batch, "WithDecryption": True})
        except _RejectedCall as rejected:
            if rejected.code not in NOT_FOUND_ERROR_CODES:
                raise rejected.mapped from None
            return self._split_rejected_batch(batch, rejected)
        found, missing, ambiguous = match_parameters(
            batch, response.get("Parameters", []), response.get("InvalidParameters", [])
        )
        calls = 1
        for selector in ambiguous:
            one_found, one_missing, one_calls = self._fetch_batch([selector])
            found.update(one_found)
            missing.extend(one_missing)
            calls += one_calls
        return found, missing, calls

    def _split_rejected_batch(
        self, batch: list[str], rejected: _RejectedCall
    ) -> tuple[dict[str, Parameter], list[str], int]:
        # GetParameters may fail a whole batch for one absent secret reference or version instead
        # of listing it in InvalidParameters; find that one, report it missing and ask for the rest.
        if len(batch) == 1:
            return {}, list(batch), 1
        named = [selector for selector in batch if _names_selector(rejected.message, selector)]
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
            group_found, group_missing, group_calls = self._fetch_batch(group)
            found.update(group_found)
            missing.extend(group_missing)
            calls += group_calls
        return found, missing, calls

    def _call(self, action: str, names: Sequence[str], request: dict[str, Any]) -> dict[str, Any]:
        """Run one API call, retrying throttling, 5xx and network errors until the deadline."""
        method = getattr(self._client, _snake_case(action))
        backoff = self._backoff_factory()
        attempt = 0
        while True:
            attempt += 1
            started = time.perf_counter()
            try:
                response: dict[str, Any] = method(**request)
            except ClientError as error:
                last_error = _error_code(error)
                if not is_retryable_error(error):
                    raise _RejectedCall(
                        last_error,
                        _error_message(error),
                        map_client_error(
                            error, action=action, names=names, role=self._role, endpoint=self.endpoint
                        ),
                    ) from None
            except (BotoConnectionError, HTTPClientError) as error:
                # EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError:
                # refused or slow connects, answers that never come, dropped connections.
                last_error = type(error).__name__
            except (NoCredentialsError, PartialCredentialsError):
                raise CredentialsError(
                    f"no AWS credentials for ssm:{action}: attach an instance profile (IMDS gives its "
                    "credentials) or, off EC2, configure the AWS default credential chain"
                ) from None
            except BotoCoreError as error:
                raise AgentError(f"ssm:{action} failed before reaching SSM: {type(error).__name__}") from None
            else:
                _log.debug(
                    "ssm_call",
                    action=action,
                    names=list(names),
                    attempt=attempt,
                    elapsed_ms=round((time.perf_counter() - started) * 1000, 1),
                )
                return response
            _log.warning(
                "ssm_retry",
                action=action,
                attempt=attempt,
                error=last_error,
                remaining_seconds=round(self._deadline.remaining, 2),
            )
            if not backoff.wait(self._deadline):
                raise ServiceUnavailable(
                    f"SSM at {self.endpoint} did not answer ssm:{action} within the "
                    f"{self._deadline.seconds:g} s deadline ({attempt} attempts, last error {last_error}): "
                    "check the network path to SSM (VPC endpoint, NAT, security groups) or, for throttling, "
                    "raise deadline_seconds or the account's Parameter Store throughput"
                )


class _RejectedCall(Exception):
    """A call SSM refused for good; carries the code for callers that treat some codes as answers."""

    def __init__(self, code: str, message: str, mapped: AgentError) -> None:
        super().__init__(code)
        self.code = code
        self.message = message
        self.mapped = mapped


def _snake_case(action: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", action).lower()


def _names_selector(message: str, selector: str) -> bool:
    """True when an AWS error message names this selector (e.g. "version 9 of /x", "Secret <name>")."""
    base, suffix = split_selector(selector)
    if selector in message.split():
        return True
    if suffix[1:].isdigit():
        return f"version {suffix[1:]} of {base}" in message
    return False


def _parameter(item: dict[str, Any], *, selector: str) -> Parameter:
    return Parameter(
        name=str(item["Name"]),
        selector=selector,
        value=str(item.get("Value", "")),
        version=int(item.get("Version", 0)),
        type=str(item.get("Type", "String")),
    )


def match_parameters(
    batch: Sequence[str], answered: Sequence[dict[str, Any]], invalid: Sequence[str]
) -> tuple[dict[str, Parameter], list[str], list[str]]:
    """Pair GetParameters' answers with the selectors asked for: (found, missing, ambiguous).

    AWS answers "/x:3" with Name "/x" and Selector ":3"; emulators may leave Selector out, so
    answers without one are paired by name, version (":3" needs version 3; the bare name gets the
    newest) and, for labels, whatever is left. Labels still indistinguishable come back ambiguous:
    the caller asks for each of those on its own.
    """
    # InvalidParameters echoes the selectors as sent; compare spellings (ARN or not) only for an
    # entry that matches none of them exactly.
    invalid_exact = set(invalid) & set(batch)
    invalid_loose = {_canonical_name(name) for name in invalid if name not in invalid_exact}
    missing = [s for s in batch if s in invalid_exact or _canonical_name(s) in invalid_loose]
    pending = [s for s in batch if s not in missing]
    found: dict[str, Parameter] = {}
    unmatched: list[dict[str, Any]] = []

    for item in answered:
        selector_suffix = str(item.get("Selector") or "")
        candidates = [s for s in pending if s not in found and _answers(item, s)]
        exact = [s for s in candidates if split_selector(s)[1] == selector_suffix]
        if selector_suffix and exact:
            found[exact[0]] = _parameter(item, selector=exact[0])
        else:
            unmatched.append(item)

    newest: dict[str, int] = {}
    for item in unmatched:
        key = _canonical_name(str(item["Name"]))
        newest[key] = max(newest.get(key, -1), int(item.get("Version", 0)))

    label_versions: dict[str, set[int]] = {}
    label_assigned: dict[str, list[str]] = {}
    for item in unmatched:
        version = int(item.get("Version", 0))
        candidates = [s for s in pending if s not in found and _answers(item, s)]
        by_version = [s for s in candidates if split_selector(s)[1] == f":{version}"]
        bare = [s for s in candidates if not split_selector(s)[1]]
        labels = [s for s in candidates if split_selector(s)[1] and not split_selector(s)[1][1:].isdigit()]
        is_newest = version >= newest.get(_canonical_name(str(item["Name"])), version)
        if by_version:
            chosen = by_version[0]
        elif bare and is_newest:
            chosen = bare[0]
        elif labels:
            chosen = labels[0]
            base = _canonical_name(split_selector(chosen)[0])
            label_versions.setdefault(base, set()).add(version)
            label_assigned.setdefault(base, []).append(chosen)
        elif bare:
            chosen = bare[0]
        else:
            _log.warning("ssm_unmatched_answer", name=str(item.get("Name")), version=version)
            continue
        found[chosen] = _parameter(item, selector=chosen)

    ambiguous: list[str] = []
    for base, versions in label_versions.items():
        if len(versions) > 1:
            for selector in label_assigned[base]:
                del found[selector]
                ambiguous.append(selector)
    for selector in pending:
        if selector not in found and selector not in ambiguous:
            # Neither answered nor listed as invalid: report it rather than guess a value.
            _log.warning("ssm_unanswered_selector", selector=selector)
            missing.append(selector)
    return found, missing, ambiguous


def _answers(item: dict[str, Any], selector: str) -> bool:
    """True when an answered parameter may be the one this selector asked for."""
    base = split_selector(selector)[0]
    name = str(item.get("Name", ""))
    if _canonical_name(name) == _canonical_name(base):
        return True
    # Secrets Manager references come back under the reference name or, from emulators, the bare
    # secret name.
    return base.startswith(SECRETS_MANAGER_PREFIX) and base[len(SECRETS_MANAGER_PREFIX) :] == name
