"""What SSM's answers mean: every answer checked before it is believed, answers paired with the
selectors asked for, and SSM's errors translated into the agent's, naming resources, never values.

Pure: takes what botocore parsed, returns parameters or raises. An answer that does not hold up
(a proxy's block page, a truncated body, a name missing from both lists) is never read as "these
parameters do not exist": it raises NotSsmAnswer, which the client retries like an outage.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from botocore.exceptions import ClientError

from agent.errors import AccessDenied, AgentError, CredentialsError, ServiceUnavailable, TemplateError

SECRETS_MANAGER_PREFIX = "/aws/reference/secretsmanager/"
PARAMETER_TYPES = frozenset({"String", "StringList", "SecureString"})

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
_DENIED_ACTION_RE = re.compile(r"not authorized to perform: ([\w-]+:\w+)")
_ASSUMED_ROLE_RE = re.compile(r":assumed-role/([\w+=,.@-]+)/")
CURRENT_STAGE = "AWSCURRENT"
_ARN_RESOURCE_PREFIX_RE = re.compile(r"^arn:aws[\w-]*:ssm:[\w-]*:\d*:parameter")


@dataclass(frozen=True)
class Parameter:
    """One resolved parameter; its repr never shows the value."""

    name: str
    selector: str
    value: str = field(repr=False)
    version: int
    type: str
    # A Secrets Manager reference's Version is always 0: the secret's own AWSCURRENT version id,
    # from SourceResult, is what changes when the secret rotates (None for plain parameters).
    source_version: Optional[str] = None
    # LastModifiedDate (ISO 8601) when SSM gave one: a parameter deleted and created again starts
    # over at version 1, so only this tells its new value from the one a render used.
    modified: Optional[str] = None


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


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code") or "Unknown")


def error_message(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Message") or "")


def _http_status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def is_retryable_error(error: ClientError) -> bool:
    """True for throttling, transient codes and any 5xx answer: worth another try before the deadline."""
    code = error_code(error)
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
    code = error_code(error)
    message = error_message(error)
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
        other = _DENIED_ACTION_RE.search(message)
        if other and not other.group(1).startswith("ssm:"):
            # SSM acts as the caller on another service (Secrets Manager for a reference).
            return AccessDenied(
                f"SSM could not read {listed} for {who_text}: {other.group(1)} was denied; grant it "
                "in the instance profile"
            )
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


def names_selector(message: str, selector: str) -> bool:
    """True when an AWS error message names this selector (e.g. "version 9 of /x", "Secret <name>")."""
    base, suffix = split_selector(selector)
    if selector in message.split():
        return True
    if suffix[1:].isdigit():
        return f"version {suffix[1:]} of {base}" in message
    return False


class NotSsmAnswer(Exception):
    """An answer that does not hold up as SSM's; `reason` says why and never quotes the body."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def describe_http(response: Any) -> str:
    """ "HTTP 200, text/html": what an answer looked like, from botocore's metadata, without its body."""
    metadata = response.get("ResponseMetadata", {}) if isinstance(response, dict) else {}
    status = metadata.get("HTTPStatusCode", "?")
    content_type = (metadata.get("HTTPHeaders") or {}).get("content-type", "no Content-Type")
    return f"HTTP {status}, {content_type}"


def is_foreign_error(error: ClientError) -> bool:
    """True when an error answer is not SSM's: SSM names its errors ("__type"), so botocore only falls
    back to the bare HTTP status as the code for a body from something else (a proxy, a web server)."""
    return error_code(error).isdigit()


def parameter_from_item(item: Any, *, selector: str) -> Parameter:
    """One entry of SSM's Parameters list, checked: a name, a value, a known type and a version."""
    if not isinstance(item, dict):
        raise NotSsmAnswer("a parameter entry is not an object")
    name, value, kind, version = (item.get(key) for key in ("Name", "Value", "Type", "Version"))
    if not isinstance(name, str) or not name:
        raise NotSsmAnswer("a parameter entry has no Name")
    if not isinstance(value, str):
        raise NotSsmAnswer(f"the entry for {name} has no Value")
    if kind not in PARAMETER_TYPES:
        raise NotSsmAnswer(f"the entry for {name} has no known Type")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise NotSsmAnswer(f"the entry for {name} has no Version")
    return Parameter(
        name=name,
        selector=selector,
        value=value,
        version=version,
        type=kind,
        source_version=current_secret_version(item.get("SourceResult")),
        modified=_modified(item.get("LastModifiedDate")),
    )


def _modified(value: Any) -> Optional[str]:
    """LastModifiedDate as ISO 8601 text (botocore parses it into a datetime), or None."""
    if isinstance(value, datetime.datetime):
        return value.astimezone(datetime.timezone.utc).isoformat()
    return None


def current_secret_version(source_result: Any) -> Optional[str]:
    """The AWSCURRENT version id in a Secrets Manager reference's SourceResult (the secret's
    description, or its GetSecretValue answer without the value), or None."""
    if not isinstance(source_result, str):
        return None
    try:
        described = json.loads(source_result)
    except ValueError:
        return None
    if not isinstance(described, dict):
        return None
    stages = described.get("VersionIdsToStages")
    if isinstance(stages, dict):
        current = [
            str(vid) for vid, labels in stages.items() if isinstance(labels, list) and CURRENT_STAGE in labels
        ]
        return current[0] if len(current) == 1 else None
    labels = described.get("VersionStages")
    if isinstance(labels, list) and CURRENT_STAGE in labels and isinstance(described.get("VersionId"), str):
        return str(described["VersionId"])
    return None


def _list_field(response: Any, key: str, *, required: bool) -> list[Any]:
    if not isinstance(response, dict):
        raise NotSsmAnswer("the answer is not an object")
    if key not in response:
        if required:
            raise NotSsmAnswer(f"the answer has no {key}")
        return []
    items = response[key]
    if not isinstance(items, list):
        raise NotSsmAnswer(f"{key} is not a list")
    return items


def check_get_parameters(
    batch: Sequence[str], response: Any
) -> tuple[dict[str, Parameter], list[str], list[str]]:
    """A GetParameters answer, believed only if it accounts for every selector asked for and nothing
    else: returns (found, missing, ambiguous) as match_parameters does."""
    answered = _list_field(response, "Parameters", required=False)
    invalid = _list_field(response, "InvalidParameters", required=False)
    if not all(isinstance(name, str) for name in invalid):
        raise NotSsmAnswer("InvalidParameters holds something other than names")
    for item in answered:
        parameter_from_item(item, selector="")
    return match_parameters(batch, answered, invalid)


def check_get_parameter(selector: str, response: Any) -> Parameter:
    """A GetParameter answer, believed only if it holds one well-formed parameter named as asked."""
    if not isinstance(response, dict) or not isinstance(response.get("Parameter"), dict):
        raise NotSsmAnswer("the answer has no Parameter")
    parameter = parameter_from_item(response["Parameter"], selector=selector)
    if not _answers(response["Parameter"], selector):
        raise NotSsmAnswer(f"asked for {split_selector(selector)[0]}, the answer names another parameter")
    return parameter


def check_path_page(path: str, *, recursive: bool, response: Any) -> tuple[list[Parameter], Optional[str]]:
    """One GetParametersByPath page: (its parameters, the next token or None).

    Every entry must sit under `path` (directly under it unless `recursive`); a token, when
    present, must be a non-empty string. Whether it advances is for the caller to tell.
    """
    items = _list_field(response, "Parameters", required=True)
    prefix = path if path.endswith("/") else path + "/"
    parameters = []
    for item in items:
        parameter = parameter_from_item(item, selector="")
        below = parameter.name[len(prefix) :] if parameter.name.startswith(prefix) else None
        if not below or (not recursive and "/" in below):
            raise NotSsmAnswer(f"listing {path}, the answer holds {parameter.name}, which is not under it")
        parameters.append(dataclasses.replace(parameter, selector=parameter.name))
    return parameters, _next_token(response)


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
    if invalid_loose - {_canonical_name(s) for s in batch}:
        raise NotSsmAnswer("InvalidParameters lists a name that was not asked for")
    pending = [s for s in batch if s not in missing]
    found: dict[str, Parameter] = {}
    unmatched: list[dict[str, Any]] = []

    for item in answered:
        selector_suffix = str(item.get("Selector") or "")
        candidates = [s for s in pending if s not in found and _answers(item, s)]
        exact = [s for s in candidates if split_selector(s)[1] == selector_suffix]
        if selector_suffix and exact:
            found[exact[0]] = parameter_from_item(item, selector=exact[0])
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
            raise NotSsmAnswer(f"the answer holds {item.get('Name')} version {version}, not asked for")
        found[chosen] = parameter_from_item(item, selector=chosen)

    ambiguous: list[str] = []
    for base, versions in label_versions.items():
        if len(versions) > 1:
            for selector in label_assigned[base]:
                del found[selector]
                ambiguous.append(selector)
    unanswered = [s for s in pending if s not in found and s not in ambiguous]
    if unanswered:
        # Neither answered nor listed as invalid: not SSM's answer, and never "it does not exist".
        raise NotSsmAnswer(f"{', '.join(unanswered)} neither answered nor listed as invalid")
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


def denies_action(code: str, message: str, action: str) -> bool:
    """True when an error is IAM refusing the SSM action `action` itself ("... is not authorized to
    perform: ssm:GetParameters ..."), not a KMS refusal nor a denial of another action."""
    if code not in ACCESS_DENIED_ERROR_CODES or _KMS_MESSAGE_RE.search(message):
        return False
    return re.search(rf"\bssm:{action}\b", message) is not None


def check_describe_page(response: Any) -> tuple[list[dict[str, Any]], Optional[str]]:
    """One DescribeParameters page: (its entries, each with a Name, and the next token or None)."""
    items = _list_field(response, "Parameters", required=True)
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("Name"), str):
            raise NotSsmAnswer("a DescribeParameters entry has no Name")
    return items, _next_token(response)


def _next_token(response: dict[str, Any]) -> Optional[str]:
    """A page's NextToken: None at the end, else a non-empty string."""
    token = response.get("NextToken")
    if token is not None and (not isinstance(token, str) or not token):
        raise NotSsmAnswer("NextToken is not a token")
    return token
