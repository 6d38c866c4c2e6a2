"""What SSM's error answers mean: the error codes by kind, and each error translated into the agent's
own (agent/errors.py), naming the action, the resource and the fix, never a value. Pure."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Optional

from botocore.exceptions import ClientError

from agent.aws.selectors import canonical_name, parse_selector
from agent.errors import AccessDenied, AgentError, CredentialsError, ServiceUnavailable, TemplateError

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
        # Secrets Manager's 5xx (also what a BatchGetSecretValue answer lists per secret in Errors).
        "InternalServiceError",
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
    denied = canonical_name(match.group(1))
    for name in names:
        if canonical_name(parse_selector(name).name) == denied:
            return parse_selector(name).name
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
    bases = list(dict.fromkeys(parse_selector(name).name for name in names))
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


def is_foreign_error(error: ClientError) -> bool:
    """True when an error answer is not SSM's: SSM names its errors ("__type"), so botocore only falls
    back to the bare HTTP status as the code for a body from something else (a proxy, a web server)."""
    return error_code(error).isdigit()


def denies_action(code: str, message: str, action: str) -> bool:
    """True when an error is IAM refusing the SSM action `action` itself ("... is not authorized to
    perform: ssm:GetParameters ..."), not a KMS refusal nor a denial of another action."""
    if code not in ACCESS_DENIED_ERROR_CODES or _KMS_MESSAGE_RE.search(message):
        return False
    return re.search(rf"\bssm:{action}\b", message) is not None
