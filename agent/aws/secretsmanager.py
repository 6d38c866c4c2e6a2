"""Secrets Manager natively: the secrets a template's `secret()` names, fetched before rendering with
BatchGetSecretValue (20 a call), GetSecretValue for a stage or version (and as the fallback), and
DescribeSecret for rotation checks, which never decrypts.

Quotas decide the strategy (AWS, per account and region): GetSecretValue 10,000 calls/s,
BatchGetSecretValue 100 calls/s (20 secrets each: 2,000 secrets/s), DescribeSecret 40,000 calls/s.
One instance saves round trips with the batch call; a fleet booting together is served faster by
single calls, so a batch call throttled twice moves the rest of the fetch to single calls, a few at a
time (SINGLE_CALL_WORKERS). Every call runs under the one retry loop (agent.aws.retry, through SsmCaller)
and every answer is checked here before it is believed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import structlog
from botocore.exceptions import ClientError

from agent.aws.clients import create_agent_client
from agent.aws.endpoints import NO_FLAGS, EndpointFlags
from agent.aws.retry import Backoff, Deadline, NotServiceAnswer
from agent.aws.ssm import CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS
from agent.aws.ssm_call import RejectedCall, SsmCaller, StoppedThrottled
from agent.aws.ssm_errors import (
    ACCESS_DENIED_ERROR_CODES,
    CREDENTIALS_ERROR_CODES,
    THROTTLING_ERROR_CODES,
    TRANSIENT_ERROR_CODES,
    error_code,
    error_message,
)
from agent.errors import AccessDenied, AgentError, CredentialsError, ServiceUnavailable, TemplateError

_log = structlog.get_logger()

BATCH_MAX_SECRETS = 20
SINGLE_CALL_WORKERS = 4
# "auto" waits out one throttled batch answer (the retry loop's first throttled wait, 0.2-0.5 s, in
# which BatchGetSecretValue's quota refills) and moves to single calls at the second: a fleet whose
# boots spread over a few seconds stays on the batch call (one call for 20 secrets, 20x cheaper),
# and one that keeps hitting the batch quota goes to GetSecretValue's 100x larger one.
BATCH_THROTTLED_ANSWERS = 2
CURRENT_STAGE = "AWSCURRENT"
PREVIOUS_STAGE = "AWSPREVIOUS"
# Keys in the render record: never a valid SSM parameter name (SSM names hold no "|"), nor a secret's
# (Secrets Manager names and ARNs hold no "|" either).
KEY_PREFIX = "secretsmanager:"
_NOT_FOUND_CODES = frozenset({"ResourceNotFoundException"})
# Secrets Manager's codes for a value it cannot decrypt (the KMS key) or a request it refuses.
_DECRYPTION_CODES = frozenset({"DecryptionFailure", "KMSAccessDeniedException", "KMSDisabledException"})
_VALIDATION_CODES = frozenset({"ValidationException", "InvalidParameterException", "InvalidRequestException"})
# The strategies the bench compares; "auto" is the agent's.
STRATEGIES = ("auto", "batch", "single")


@dataclass(frozen=True)
class SecretRef:
    """One `secret()`: a name or ARN, and the stage or version id asked for (AWSCURRENT by default)."""

    secret_id: str
    stage: Optional[str] = None
    version_id: Optional[str] = None

    @classmethod
    def of(cls, secret_id: str, stage: Optional[str] = None, version_id: Optional[str] = None) -> SecretRef:
        """The reference a template's call names: without a version id, AWSCURRENT unless a stage is given
        (so that `secret(ID)` and `secret(ID, stage="AWSCURRENT")` are one secret, shown with its stage)."""
        return cls(secret_id, stage or (None if version_id else CURRENT_STAGE), version_id or None)

    @property
    def key(self) -> str:
        """How the render record names it: `secretsmanager:ID`, with `|stage=S` or `|version_id=V`."""
        suffix = f"|stage={self.stage}" if self.stage else ""
        suffix += f"|version_id={self.version_id}" if self.version_id else ""
        return f"{KEY_PREFIX}{self.secret_id}{suffix}"

    @classmethod
    def from_key(cls, key: str) -> SecretRef:
        """The reference a record key names (the inverse of `key`)."""
        secret_id, *options = key[len(KEY_PREFIX) :].split("|")
        named = dict(option.partition("=")[::2] for option in options)
        return cls(secret_id, stage=named.get("stage") or None, version_id=named.get("version_id") or None)

    @property
    def is_current(self) -> bool:
        """True for the plain `secret(ID)`: what BatchGetSecretValue returns."""
        return self.version_id is None and self.stage in (None, CURRENT_STAGE)

    @property
    def is_fixed_version(self) -> bool:
        """True when a version id is pinned: one immutable value, never a change to check."""
        return self.version_id is not None

    @property
    def wanted_stage(self) -> Optional[str]:
        """The stage the answer must carry: the one asked for, else AWSCURRENT (None for a version id)."""
        if self.version_id is not None:
            return self.stage
        return self.stage or CURRENT_STAGE

    def describe(self) -> str:
        """`prod/db`, `prod/db (stage AWSPREVIOUS)` or `prod/db (version v1)`: for messages and logs."""
        if self.version_id:
            return f"{self.secret_id} (version {self.version_id})"
        if self.stage and self.stage != CURRENT_STAGE:
            return f"{self.secret_id} (stage {self.stage})"
        return self.secret_id


def is_secret_key(key: str) -> bool:
    """True for a record key that names a Secrets Manager secret (not an SSM selector)."""
    return key.startswith(KEY_PREFIX)


@dataclass(frozen=True)
class Secret:
    """One fetched secret version; its repr never shows the value. Exactly one of text or binary is set."""

    ref: SecretRef
    name: str
    arn: str
    version_id: str
    stages: tuple[str, ...]
    text: Optional[str] = field(default=None, repr=False)
    binary: Optional[bytes] = field(default=None, repr=False)

    # What the render record keeps (agent/host/state.py's Versioned): the version id, never a number.
    @property
    def version(self) -> int:
        return 0

    @property
    def source_version(self) -> str:
        return self.version_id

    @property
    def stage(self) -> str:
        """The stage shown in status and inventory: the one asked for, else the first it carries."""
        return self.ref.wanted_stage or (self.stages[0] if self.stages else "")


# -- answers, checked ---------------------------------------------------------------------------


def _names_secret(secret_id: str, name: Any, arn: Any) -> bool:
    """True when an answer's Name/ARN is the secret `secret_id` names (a name, a full or partial ARN)."""
    if secret_id in (name, arn):
        return True
    # A partial ARN leaves out the six random characters AWS appends ("-AbCdEf").
    return secret_id.startswith("arn:") and isinstance(arn, str) and arn[: len(arn) - 7] == secret_id


def secret_from_answer(ref: SecretRef, item: Any) -> Secret:
    """One GetSecretValue answer (or one entry of BatchGetSecretValue's), believed only if it names the
    secret asked for, carries a version id, the stage or version asked for, and exactly one value."""
    if not isinstance(item, dict):
        raise NotServiceAnswer("a secret entry is not an object")
    name, arn, version_id, stages = (item.get(k) for k in ("Name", "ARN", "VersionId", "VersionStages"))
    if not isinstance(name, str) or not name or not isinstance(arn, str) or not arn:
        raise NotServiceAnswer("a secret entry has no Name or ARN")
    if not _names_secret(ref.secret_id, name, arn):
        raise NotServiceAnswer(f"asked for {ref.secret_id}, the answer names another secret")
    if not isinstance(version_id, str) or not version_id:
        raise NotServiceAnswer(f"the entry for {name} has no VersionId")
    if not isinstance(stages, list) or not all(isinstance(s, str) for s in stages):
        raise NotServiceAnswer(f"the entry for {name} has no VersionStages")
    if ref.version_id is not None and version_id != ref.version_id:
        raise NotServiceAnswer(f"asked for version {ref.version_id} of {name}, the answer holds another")
    wanted = ref.wanted_stage
    if wanted is not None and wanted not in stages:
        raise NotServiceAnswer(f"asked for {name} at stage {wanted}, the answer's version does not carry it")
    text, binary = item.get("SecretString"), item.get("SecretBinary")
    if (text is None) == (binary is None):
        raise NotServiceAnswer(f"the entry for {name} holds {'no' if text is None else 'two'} values")
    if text is not None and not isinstance(text, str):
        raise NotServiceAnswer(f"the SecretString of {name} is not text")
    if binary is not None and not isinstance(binary, (bytes, bytearray)):
        raise NotServiceAnswer(f"the SecretBinary of {name} is not bytes")
    return Secret(
        ref=ref,
        name=name,
        arn=arn,
        version_id=version_id,
        stages=tuple(stages),
        text=text,
        binary=bytes(binary) if binary is not None else None,
    )


@dataclass(frozen=True)
class BatchAnswer:
    """One BatchGetSecretValue page, paired with the references asked for."""

    found: dict[str, Secret]
    missing: list[str]
    # Per-secret errors other than "not found": (reference key, code, message).
    errors: list[tuple[str, str, str]]
    next_token: Optional[str]


def check_batch_answer(refs: Sequence[SecretRef], response: Any, *, is_last_page: bool = True) -> BatchAnswer:
    """A BatchGetSecretValue answer: each entry checked, each error tied to a secret asked for; on the
    last page every secret asked for must be answered or listed in Errors (else it is not AWS's)."""
    if not isinstance(response, dict):
        raise NotServiceAnswer("the answer is not an object")
    values, errors = response.get("SecretValues", []), response.get("Errors", [])
    if not isinstance(values, list) or not isinstance(errors, list):
        raise NotServiceAnswer("SecretValues or Errors is not a list")
    token = response.get("NextToken")
    if token is not None and (not isinstance(token, str) or not token):
        raise NotServiceAnswer("NextToken is not a token")
    found: dict[str, Secret] = {}
    for item in values:
        name, arn = (item.get("Name"), item.get("ARN")) if isinstance(item, dict) else (None, None)
        matches = [r for r in refs if r.key not in found and _names_secret(r.secret_id, name, arn)]
        if not matches:
            raise NotServiceAnswer(f"the answer holds {name!s}, not asked for")
        for ref in matches:  # the same secret asked for by name and by ARN
            found[ref.key] = secret_from_answer(ref, item)
    missing: list[str] = []
    failed: list[tuple[str, str, str]] = []
    for entry in errors:
        if not isinstance(entry, dict) or not isinstance(entry.get("SecretId"), str):
            raise NotServiceAnswer("an Errors entry names no SecretId")
        named = [r for r in refs if r.secret_id == entry["SecretId"]]
        if not named:
            raise NotServiceAnswer(f"Errors names {entry['SecretId']}, not asked for")
        code, message = str(entry.get("ErrorCode") or "Unknown"), str(entry.get("Message") or "")
        for ref in named:
            (missing.append(ref.key) if code in _NOT_FOUND_CODES else failed.append((ref.key, code, message)))
    if token is None or is_last_page:
        accounted = set(found) | set(missing) | {key for key, _c, _m in failed}
        unanswered = [r.secret_id for r in refs if r.key not in accounted]
        if unanswered and token is None:
            raise NotServiceAnswer(f"{', '.join(unanswered)} neither answered nor listed in Errors")
    return BatchAnswer(found=found, missing=missing, errors=failed, next_token=token)


@dataclass(frozen=True)
class Description:
    """DescribeSecret's answer, without any value: the name, ARN, KMS key and version ids by stage."""

    name: str
    arn: str
    kms_key_id: Optional[str]
    stages: dict[str, str]  # stage -> version id


def check_describe_answer(secret_id: str, response: Any) -> Description:
    """A DescribeSecret answer, believed only if it names the secret and maps versions to stages."""
    if not isinstance(response, dict):
        raise NotServiceAnswer("the answer is not an object")
    name, arn = response.get("Name"), response.get("ARN")
    if not isinstance(name, str) or not isinstance(arn, str) or not _names_secret(secret_id, name, arn):
        raise NotServiceAnswer(f"asked to describe {secret_id}, the answer names another secret")
    versions = response.get("VersionIdsToStages", {})
    if not isinstance(versions, dict):
        raise NotServiceAnswer(f"VersionIdsToStages of {name} is not a mapping")
    stages: dict[str, str] = {}
    for version_id, labels in versions.items():
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise NotServiceAnswer(f"VersionIdsToStages of {name} holds something other than stages")
        for label in labels:
            if label in stages:
                raise NotServiceAnswer(f"{name}: stage {label} is on two versions")
            stages[label] = str(version_id)
    key = response.get("KmsKeyId")
    return Description(
        name=name, arn=arn, kms_key_id=key if isinstance(key, str) and key else None, stages=stages
    )


def version_of(ref: SecretRef, description: Description) -> Optional[str]:
    """The version id `ref` resolves to now, by the description (None: the stage is on no version)."""
    if ref.version_id is not None:
        return ref.version_id
    return description.stages.get(ref.wanted_stage or CURRENT_STAGE)


# -- errors -------------------------------------------------------------------------------------


def _who(role: Optional[str]) -> str:
    return f"role {role}" if role else "this instance's role"


def secret_error(
    code: str, message: str, *, action: str, listed: str, role: Optional[str], endpoint: str
) -> AgentError:
    """The agent's error for a refusal of `action` on `listed` (a secret, or several): names the
    action, the secret and the fix, never a value."""
    if code in THROTTLING_ERROR_CODES or code in TRANSIENT_ERROR_CODES:
        return ServiceUnavailable(
            f"Secrets Manager at {endpoint} failed secretsmanager:{action} on {listed} ({code}): try "
            "again later, or raise deadline_seconds"
        )
    if code in _DECRYPTION_CODES or (code in ACCESS_DENIED_ERROR_CODES and "kms" in message.lower()):
        return AccessDenied(
            f"Secrets Manager could not decrypt {listed} for {_who(role)} ({code}): grant the role "
            "kms:Decrypt on the secret's KMS key with kms:ViaService secretsmanager.REGION.amazonaws.com "
            "(`secrets-agent policy NAME` prints it) and make sure the key exists and is enabled"
        )
    if code in ACCESS_DENIED_ERROR_CODES:
        return AccessDenied(
            f"Secrets Manager denied secretsmanager:{action} on {listed} for {_who(role)}: grant it in "
            "the instance profile (`secrets-agent policy NAME` prints the policy)"
        )
    if code in CREDENTIALS_ERROR_CODES:
        return CredentialsError(
            f"Secrets Manager at {endpoint} rejected the credentials for secretsmanager:{action} ({code}): "
            "check that the instance profile is attached and IMDS hands out its credentials, and that "
            "the system clock is right (signatures expire)"
        )
    if code in _VALIDATION_CODES:
        return TemplateError(
            f"Secrets Manager refused secretsmanager:{action} on {listed} as invalid ({code}): fix the "
            "secret's name, ARN, stage or version_id in the template (a deleted secret is refused too: "
            "restore it or name another)"
        )
    return AgentError(f"Secrets Manager failed secretsmanager:{action} on {listed} with {code}")


def denies_action(code: str, message: str, action: str) -> bool:
    """True when IAM refused `secretsmanager:ACTION` itself (not a KMS refusal)."""
    return code in ACCESS_DENIED_ERROR_CODES and f"secretsmanager:{action}" in message


class SecretsCaller(SsmCaller):
    """The one caller (retry loop, throttle pacing, reports) with Secrets Manager's names and errors."""

    service = "Secrets Manager"
    iam_prefix = "secretsmanager"
    event_prefix = "secretsmanager"
    not_service_fix = (
        "check secretsmanager_endpoint in agent.toml or AWS_ENDPOINT_URL_SECRETS_MANAGER / "
        "AWS_ENDPOINT_URL, and any proxy between this host and Secrets Manager (a TLS-inspecting proxy "
        "answers with a page of its own)"
    )

    def _map_error(self, error: ClientError, action: str, names: Sequence[str]) -> AgentError:
        listed = names[0] if len(names) == 1 else "one or more of " + ", ".join(names)
        return secret_error(
            error_code(error),
            error_message(error),
            action=action,
            listed=listed,
            role=self._role,
            endpoint=self.endpoint,
        )

    def _throttled_fix(self) -> str:
        return (
            "the account's Secrets Manager quota (GetSecretValue 10,000 calls/s, BatchGetSecretValue "
            "100 calls/s, shared by every instance and tool in the account and region) is exhausted; "
            "raise throttle_deadline_seconds or stagger the boot"
        )


# -- the client ---------------------------------------------------------------------------------


class SecretsManagerClient:
    """One botocore Secrets Manager client for a command: fetch (values) and describe (versions only)."""

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
        endpoint_flags: EndpointFlags = NO_FLAGS,
        strategy: str = "auto",
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy {strategy!r}")
        self._role = role
        self._strategy = strategy
        # Set when IAM denies secretsmanager:BatchGetSecretValue or the batch call is throttled.
        self.fetches_one_by_one = strategy == "single"
        # Set when IAM denied secretsmanager:BatchGetSecretValue (doctor names it).
        self.batch_denied = False
        client, self.endpoint_flags = create_agent_client(
            "secretsmanager",
            region=region,
            endpoint_url=endpoint_url,
            credentials=credentials,
            deadline_seconds=deadline.seconds,
            connect_timeout_seconds=CONNECT_TIMEOUT_SECONDS,
            read_timeout_seconds=READ_TIMEOUT_SECONDS,
            flags=endpoint_flags,
        )
        # botocore before 1.33 (Debian 12's python3-botocore) has no model of the batch call: one
        # GetSecretValue per secret then, said once.
        if "BatchGetSecretValue" not in client.meta.service_model.operation_names:
            self.fetches_one_by_one = True
            _log.info(
                "secretsmanager_batch_unavailable",
                reason="this botocore has no BatchGetSecretValue",
                fallback="secretsmanager:GetSecretValue, one call per secret",
            )
        self._caller = SecretsCaller(
            client,
            deadline,
            backoff_factory=backoff_factory,
            role=role,
            on_status=on_status,
            endpoint_url=endpoint_url,
        )
        self.endpoint = self._caller.endpoint
        # Calls by action, for the render's figures and the tests' controls.
        self.calls: dict[str, int] = {}

    @property
    def calls_done(self) -> int:
        """How many Secrets Manager calls got an answer so far."""
        return self._caller.calls_done

    @property
    def throttled_seconds(self) -> float:
        """Seconds this client has waited while Secrets Manager throttled it so far."""
        return self._caller.throttled_seconds

    def _count(self, action: str) -> None:
        self.calls[action] = self.calls.get(action, 0) + 1

    def fetch(self, refs: Iterable[SecretRef]) -> tuple[dict[str, Secret], list[str]]:
        """Every reference's value: found by key, and the keys of secrets (or stages) that do not exist.

        The plain `secret(ID)`s go 20 a call through BatchGetSecretValue; a stage or version id, a
        role without the batch permission, or a throttled batch call, through GetSecretValue."""
        unique = list({ref.key: ref for ref in refs}.values())
        started = time.perf_counter()
        current = [ref for ref in unique if ref.is_current]
        singles = [ref for ref in unique if not ref.is_current]
        found: dict[str, Secret] = {}
        missing: list[str] = []
        start = 0
        while start < len(current) and not self.fetches_one_by_one:
            batch = current[start : start + BATCH_MAX_SECRETS]
            try:
                batch_found, batch_missing, batch_retry = self._fetch_batch(batch)
            except _BatchDenied:
                self._fall_back("denied", remaining=len(current) - start)
                break
            except StoppedThrottled:
                self._fall_back("throttled", remaining=len(current) - start)
                break
            found.update(batch_found)
            missing.extend(batch_missing)
            # Secrets the batch answer listed with a transient error go through GetSecretValue, whose
            # retry loop (the one loop) retries them, and gives up as an outage if they stay failing.
            singles = batch_retry + singles
            start += len(batch)
        singles = current[start:] + singles
        self._caller.calls_planned += len(singles)
        workers = min(SINGLE_CALL_WORKERS, len(singles))
        if workers > 1:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="secretsmanager") as pool:
                results = list(pool.map(self._fetch_one, singles))
        else:
            results = [self._fetch_one(ref) for ref in singles]
        for ref, secret in zip(singles, results):
            if secret is None:
                missing.append(ref.key)
            else:
                found[ref.key] = secret
        _log.info(
            "secretsmanager_fetched",
            requested=len(unique),
            found=len(found),
            missing=[SecretRef.from_key(key).describe() for key in missing],
            calls=dict(self.calls),
            versions={key: s.version_id for key, s in found.items()},
            elapsed_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return found, missing

    def _fetch_batch(self, batch: list[SecretRef]) -> tuple[dict[str, Secret], list[str], list[SecretRef]]:
        """One batch's secrets: found by key, the keys that do not exist, and the references the answer
        listed with a transient error (throttled, 5xx) for GetSecretValue to retry; a refusal raises."""
        ids = list(dict.fromkeys(ref.secret_id for ref in batch))
        request: dict[str, Any] = {"SecretIdList": ids}
        self._caller.calls_planned += 1
        found: dict[str, Secret] = {}
        missing: list[str] = []
        errors: list[tuple[str, str, str]] = []
        seen_tokens: set[str] = set()
        while True:

            def check(response: Any) -> BatchAnswer:
                answer = check_batch_answer(batch, response, is_last_page=False)
                if answer.next_token is not None and answer.next_token in seen_tokens:
                    raise NotServiceAnswer("BatchGetSecretValue's page token did not advance")
                return answer

            self._count("BatchGetSecretValue")
            try:
                answer = self._caller.call(
                    "BatchGetSecretValue",
                    ids,
                    request,
                    check,
                    stop_at_throttled=BATCH_THROTTLED_ANSWERS if self._strategy == "auto" else None,
                )
            except RejectedCall as rejected:
                if denies_action(rejected.code, rejected.message, "BatchGetSecretValue"):
                    raise _BatchDenied from None
                if rejected.code in _NOT_FOUND_CODES and not found and not missing and not errors:
                    # The whole call refused as not found, naming no secret: GetSecretValue asks
                    # each one, and tells a missing secret (exit 4) from the rest.
                    return {}, [], list(batch)
                raise rejected.mapped from None
            found.update(answer.found)
            missing.extend(answer.missing)
            errors.extend(answer.errors)
            if answer.next_token is None:
                break
            seen_tokens.add(answer.next_token)
            request["NextToken"] = answer.next_token
            self._caller.calls_planned += 1
        accounted = set(found) | set(missing) | {key for key, _c, _m in errors}
        unanswered = [ref.secret_id for ref in batch if ref.key not in accounted]
        if unanswered:
            raise ServiceUnavailable(
                f"Secrets Manager at {self.endpoint} left {', '.join(unanswered)} out of its "
                f"BatchGetSecretValue answer: {SecretsCaller.not_service_fix}"
            )
        transient = {
            key for key, code, _m in errors if code in THROTTLING_ERROR_CODES or code in TRANSIENT_ERROR_CODES
        }
        refused = [(key, code, message) for key, code, message in errors if key not in transient]
        if refused:
            # Per-secret refusals: every one named at once, the first's kind decides the error.
            _key, code, message = refused[0]
            listed = ", ".join(SecretRef.from_key(k).describe() for k, _c, _m in refused)
            raise secret_error(
                code, message, action="GetSecretValue", listed=listed, role=self._role, endpoint=self.endpoint
            )
        return found, missing, [ref for ref in batch if ref.key in transient]

    def _fall_back(self, why: str, *, remaining: int) -> None:
        """Move the rest of the fetch to GetSecretValue, and say once why and what it costs."""
        self.fetches_one_by_one = True
        batched = -(-remaining // BATCH_MAX_SECRETS)
        if why == "denied":
            self.batch_denied = True
            _log.warning(
                "secretsmanager_batch_denied",
                role=self._role,
                fallback="secretsmanager:GetSecretValue",
                calls=f"{remaining} GetSecretValue calls instead of {batched} BatchGetSecretValue",
                fix="grant secretsmanager:BatchGetSecretValue on * (`secrets-agent policy NAME` prints the "
                "policy) to fetch 20 secrets a call",
            )
        else:
            _log.info(
                "secretsmanager_batch_throttled",
                fallback="secretsmanager:GetSecretValue",
                workers=SINGLE_CALL_WORKERS,
                note=f"BatchGetSecretValue's 100 calls/s are busy: {remaining} secrets through "
                "GetSecretValue's 10,000 calls/s instead",
            )

    def _fetch_one(self, ref: SecretRef) -> Optional[Secret]:
        """One GetSecretValue: the secret, or None when it (or its stage or version) does not exist."""
        request: dict[str, Any] = {"SecretId": ref.secret_id}
        if ref.version_id:
            request["VersionId"] = ref.version_id
        if ref.stage:
            request["VersionStage"] = ref.stage
        self._count("GetSecretValue")
        try:
            return self._caller.call(
                "GetSecretValue",
                [ref.describe()],
                request,
                lambda response: secret_from_answer(ref, response),
            )
        except RejectedCall as rejected:
            if rejected.code in _NOT_FOUND_CODES:
                return None
            raise rejected.mapped from None

    def describe(self, secret_id: str) -> Optional[Description]:
        """DescribeSecret: the secret's version ids by stage and its KMS key, never a value; None when
        the secret does not exist."""
        self._caller.calls_planned += 1
        self._count("DescribeSecret")
        try:
            return self._caller.call(
                "DescribeSecret",
                [secret_id],
                {"SecretId": secret_id},
                lambda response: check_describe_answer(secret_id, response),
            )
        except RejectedCall as rejected:
            if rejected.code in _NOT_FOUND_CODES:
                return None
            raise rejected.mapped from None

    def current_versions(self, refs: Sequence[SecretRef]) -> tuple[dict[str, str], list[str]]:
        """The version id each reference resolves to now, by key, and the keys that resolve to
        nothing: one DescribeSecret per secret, so nothing is decrypted."""
        described: dict[str, Optional[Description]] = {}
        for ref in refs:
            if ref.secret_id not in described:
                described[ref.secret_id] = self.describe(ref.secret_id)
        versions: dict[str, str] = {}
        missing: list[str] = []
        for ref in refs:
            description = described[ref.secret_id]
            version = version_of(ref, description) if description is not None else None
            if version is None:
                missing.append(ref.key)
            else:
                versions[ref.key] = version
        return versions, missing


class _BatchDenied(Exception):
    """IAM refused secretsmanager:BatchGetSecretValue itself: the caller falls back to GetSecretValue."""
