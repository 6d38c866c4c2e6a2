"""`secrets-agent policy`: the least-privilege IAM policy that lets an instance role render a template.

Built from what the template names (no value is fetched). What AWS authorizes each call against:
- GetParameter and GetParameters: each parameter named, by its ARN (a ":3" or ":label" selector does
  not change the ARN);
- GetParametersByPath: the path in the request, not the parameters it returns ("How Parameter
  Store authorizes parameter retrieval", AWS Systems Manager User Guide). The path's own ARN is
  granted, and "PATH/*" for the spelling with a trailing slash;
- a SecureString under a customer managed key also needs kms:Decrypt on that key; SSM passes the
  parameter's ARN as the encryption context PARAMETER_ARN, which scopes the grant to these
  parameters. The AWS managed key aws/ssm needs no grant: its key policy lets every principal of
  the account decrypt through SSM;
- a Secrets Manager reference needs secretsmanager:GetSecretValue on the secret (its ARN ends in
  "-" and six random characters);
- a template's `secret()` needs secretsmanager:GetSecretValue (values) and DescribeSecret (rotation
  checks) on each secret's ARN, and secretsmanager:BatchGetSecretValue on "*": AWS authorizes the
  batch call itself only against "*" and then GetSecretValue on each secret in it; a secret under a
  customer managed key also needs kms:Decrypt on that key, with kms:ViaService
  secretsmanager.REGION.amazonaws.com (Secrets Manager decrypts on the caller's behalf). The AWS
  managed key aws/secretsmanager needs no grant.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from agent.aws.clients import create_client
from agent.aws.endpoints import NO_FLAGS, EndpointFlags, endpoint_flags
from agent.aws.retry import Deadline
from agent.aws.secretsmanager import Description
from agent.aws.selectors import parse_selector, secret_of_reference
from agent.aws.ssm import READ_TIMEOUT_SECONDS
from agent.config import AgentSettings, ServiceSettings
from agent.errors import AgentError, CredentialsError, UsageError
from agent.template.jinja import Requirements

AWS_MANAGED_SSM_KEY = "alias/aws/ssm"
AWS_MANAGED_SECRETS_KEY = "alias/aws/secretsmanager"
PLACEHOLDER_KEY_ID = "REPLACE-WITH-KEY-ID"
PLACEHOLDER_SID = "PlaceholderDecryptWithCustomerManagedKeyReplaceKeyId"
# DescribeParameters takes at most 50 values in one filter.
DESCRIBE_FILTER_MAX_VALUES = 50
POLICY_VERSION = "2012-10-17"
# `policy` waits for IMDS and STS at most this long: an operator is waiting at a shell.
POLICY_DEADLINE_SECONDS = 10.0
PARTITIONS = ("aws", "aws-cn", "aws-us-gov")

_PARTITION_BY_REGION_PREFIX = (("cn-", "aws-cn"), ("us-gov-", "aws-us-gov"), ("us-iso-", "aws-iso"))
_ARN_RE = re.compile(r"^arn:(aws[\w-]*):")
_KEY_ARN_RE = re.compile(r"^arn:aws[\w-]*:kms:[\w-]+:\d{12}:key/[\w-]+$")
_KEY_ID_RE = re.compile(r"^(?:mrk-)?[0-9a-fA-F-]{32,36}$")

# Given DescribeParameters filters, every parameter's metadata (Name, Type, KeyId) they match.
Describer = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
# Given a secret's name or ARN, DescribeSecret's answer (None when it does not exist).
SecretDescriber = Callable[[str], Optional[Description]]


def partition_for_region(region: str) -> str:
    """The AWS partition a region belongs to: aws-cn for cn-*, aws-us-gov for us-gov-*, else aws."""
    for prefix, partition in _PARTITION_BY_REGION_PREFIX:
        if region.startswith(prefix):
            return partition
    return "aws"


def partition_of_arn(arn: str) -> Optional[str]:
    """The partition an ARN names ("arn:aws-cn:sts::..." -> "aws-cn"), or None if it is no ARN."""
    match = _ARN_RE.match(arn)
    return match.group(1) if match else None


@dataclass(frozen=True)
class Scope:
    """Where the role reads: the partition, region and account every ARN is built from."""

    partition: str
    region: str
    account: str

    def ssm_arn(self, name: str) -> str:
        """The ARN of parameter (or path) `name`: "/prod/x" and "prod/x" both give ...:parameter/prod/x."""
        if name.startswith("arn:"):
            return name
        return f"arn:{self.partition}:ssm:{self.region}:{self.account}:parameter/{name.lstrip('/')}"

    def key_arn(self, key_id: str) -> str:
        """The ARN of a KMS key given by id or ARN."""
        if key_id.startswith("arn:"):
            return key_id
        return f"arn:{self.partition}:kms:{self.region}:{self.account}:key/{key_id}"

    def secret_arn(self, secret: str) -> str:
        """The ARN pattern of a Secrets Manager secret given by name (or its ARN as is)."""
        if secret.startswith("arn:"):
            return secret
        # Secrets Manager appends "-" and six random characters to the name in the ARN.
        return f"arn:{self.partition}:secretsmanager:{self.region}:{self.account}:secret:{secret}-??????"


def base_name(selector: str) -> str:
    """The parameter a selector names: "/x:3" and "/x:label" -> "/x"; an ARN keeps its own colons."""
    return parse_selector(selector).name


def path_arns(scope: Scope, path: str) -> list[str]:
    """The ARNs AWS may evaluate GetParametersByPath against: the path, with or without its last slash."""
    trimmed = path.rstrip("/")
    return [scope.ssm_arn(trimmed or "/"), scope.ssm_arn(f"{trimmed}/*")] if trimmed else [scope.ssm_arn("*")]


@dataclass
class KeyFindings:
    """What DescribeParameters said about the SecureStrings' keys.

    `grants` maps a customer managed key's ARN to the parameter ARNs (patterns for paths) it encrypts;
    `unknown` lists why some keys could not be named (aliases, or no lookup at all).
    """

    grants: dict[str, list[str]] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)


def find_keys(requirements: Requirements, scope: Scope, describe: Describer) -> KeyFindings:
    """Ask DescribeParameters which customer managed keys encrypt the template's SecureStrings."""
    findings = KeyFindings()
    names = sorted({base_name(s) for s in requirements.names if secret_of_reference(s) is None})
    described: list[tuple[dict[str, Any], str]] = []
    for start in range(0, len(names), DESCRIBE_FILTER_MAX_VALUES):
        chunk = names[start : start + DESCRIBE_FILTER_MAX_VALUES]
        for item in describe([{"Key": "Name", "Option": "Equals", "Values": chunk}]):
            described.append((item, scope.ssm_arn(str(item["Name"]))))
    for path, recursive in requirements.paths:
        option = "Recursive" if recursive else "OneLevel"
        pattern = path_arns(scope, path)[-1]
        for item in describe([{"Key": "Path", "Option": option, "Values": [path]}]):
            described.append((item, pattern))
    for item, context in described:
        if item.get("Type") != "SecureString":
            continue
        key = str(item.get("KeyId") or AWS_MANAGED_SSM_KEY)
        if key == AWS_MANAGED_SSM_KEY or key.endswith(":alias/aws/ssm"):
            continue
        if _KEY_ARN_RE.match(key) or _KEY_ID_RE.match(key):
            contexts = findings.grants.setdefault(scope.key_arn(key), [])
            if context not in contexts:
                contexts.append(context)
        else:
            findings.unknown.append(
                f"{item['Name']} is encrypted with {key}: an alias cannot be granted kms:Decrypt; "
                f"find its key ARN with `aws kms describe-key --key-id {key}`"
            )
    return findings


def find_secret_keys(requirements: Requirements, scope: Scope, describe: SecretDescriber) -> KeyFindings:
    """Ask DescribeSecret which customer managed keys encrypt the template's `secret()`s; `grants`
    maps each key's ARN to the secrets' ARNs."""
    findings = KeyFindings()
    for secret_id in sorted({call.secret_id for call in requirements.secrets}):
        described = describe(secret_id)
        if described is None:
            findings.unknown.append(f"secret {secret_id} does not exist (yet): its KMS key was not looked up")
            continue
        key = described.kms_key_id or AWS_MANAGED_SECRETS_KEY
        if key == AWS_MANAGED_SECRETS_KEY or key.endswith(":alias/aws/secretsmanager"):
            continue
        if _KEY_ARN_RE.match(key) or _KEY_ID_RE.match(key):
            secrets = findings.grants.setdefault(scope.key_arn(key), [])
            secrets.append(described.arn)
        else:
            findings.unknown.append(
                f"secret {secret_id} is encrypted with {key}: an alias cannot be granted kms:Decrypt; "
                f"find its key ARN with `aws kms describe-key --key-id {key}`"
            )
    return findings


def build_policy(
    requirements: Requirements,
    scope: Scope,
    keys: Optional[KeyFindings],
    secret_keys: Optional[KeyFindings] = None,
) -> dict[str, Any]:
    """The policy document: one statement per action group, resources sorted, nothing granted twice.

    `keys` None means the keys could not be looked up: a placeholder statement stands in for them.
    `secret_keys` are the customer managed keys of the template's `secret()`s.
    """
    parameters: dict[str, None] = {}
    secrets: dict[str, None] = {}
    # What SSM passes as PARAMETER_ARN when it decrypts: parameters and whatever lies under the paths.
    encrypted: dict[str, None] = {}
    for selector in requirements.names:
        name = base_name(selector)
        parameters[scope.ssm_arn(name)] = None
        secret = secret_of_reference(name)
        if secret is not None:
            secrets[scope.secret_arn(secret.partition(":")[0])] = None
        else:
            encrypted[scope.ssm_arn(name)] = None
    paths: dict[str, None] = {}
    for path, _recursive in requirements.paths:
        arns = path_arns(scope, path)
        paths.update(dict.fromkeys(arns))
        encrypted[arns[-1]] = None

    statements: list[dict[str, Any]] = []
    if parameters:
        statements.append(
            _allow("ReadNamedParameters", ["ssm:GetParameter", "ssm:GetParameters"], parameters)
        )
    if paths:
        statements.append(_allow("ListParameterPaths", ["ssm:GetParametersByPath"], paths))
    if secrets:
        statements.append(_allow("ReadReferencedSecrets", ["secretsmanager:GetSecretValue"], secrets))
    native = {scope.secret_arn(call.secret_id): None for call in requirements.secrets}
    if native:
        statements.append(
            _allow("ReadSecrets", ["secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue"], native)
        )
        # AWS authorizes BatchGetSecretValue only against "*" (then GetSecretValue on each secret).
        statements.append(_allow("BatchReadSecrets", ["secretsmanager:BatchGetSecretValue"], ["*"]))
    for number, (key, _arns) in enumerate(sorted((secret_keys or KeyFindings()).grants.items()), start=1):
        statement = _allow(f"DecryptSecrets{number}", ["kms:Decrypt"], [key])
        statement["Condition"] = {
            "StringEquals": {"kms:ViaService": f"secretsmanager.{scope.region}.amazonaws.com"}
        }
        statements.append(statement)
    if (keys is None or keys.unknown) and encrypted:
        statement = _allow(PLACEHOLDER_SID, ["kms:Decrypt"], [scope.key_arn(PLACEHOLDER_KEY_ID)])
        statement["Condition"] = _context_condition(sorted(encrypted))
        statements.append(statement)
    if keys is not None:
        for number, (key, contexts) in enumerate(sorted(keys.grants.items()), start=1):
            statement = _allow(f"DecryptSecureStrings{number}", ["kms:Decrypt"], [key])
            statement["Condition"] = _context_condition(sorted(contexts))
            statements.append(statement)
    return {"Version": POLICY_VERSION, "Statement": statements}


def _allow(sid: str, actions: Sequence[str], resources: Iterable[str]) -> dict[str, Any]:
    return {"Sid": sid, "Effect": "Allow", "Action": list(actions), "Resource": sorted(resources)}


def _context_condition(parameter_arns: Sequence[str]) -> dict[str, Any]:
    return {"StringLike": {"kms:EncryptionContext:PARAMETER_ARN": list(parameter_arns)}}


def render_policy(policy: Mapping[str, Any]) -> str:
    """The policy as JSON text, indented, with a final newline (for `aws iam put-role-policy`)."""
    return json.dumps(policy, indent=2) + "\n"


def caller_arn(
    *,
    region: str,
    endpoint_url: Optional[str],
    credentials: Optional[tuple[str, str, str]],
    timeout_seconds: float,
    flags: EndpointFlags = NO_FLAGS,
) -> str:
    """The ARN STS GetCallerIdentity names for these credentials (no permission is needed for it).

    STS is always the region's own endpoint (dual-stack or FIPS as `flags` say), never the global one."""
    from botocore.config import Config  # noqa: PLC0415  (only `policy` pays for it)
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

    config = Config(
        retries={"mode": "standard"}, connect_timeout=timeout_seconds, read_timeout=timeout_seconds
    )
    try:
        client = create_client(
            "sts",
            region=region,
            endpoint_url=endpoint_url,
            credentials=credentials,
            config=config,
            flags=flags,
        )
        return str(client.get_caller_identity()["Arn"])
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "Unknown")
        raise CredentialsError(f"STS GetCallerIdentity failed ({code}): pass --account") from None
    except BotoCoreError as exc:
        raise CredentialsError(
            f"STS GetCallerIdentity failed ({type(exc).__name__}): pass --account, or configure credentials"
        ) from None


def account_of_arn(arn: str) -> str:
    """The account an ARN names ("arn:aws:sts::123456789012:assumed-role/r/s" -> "123456789012")."""
    parts = arn.split(":")
    if len(parts) < 6 or not re.fullmatch(r"\d{12}", parts[4]):
        raise CredentialsError(f"STS named no account in {arn!r}: pass --account")
    return parts[4]


@dataclass(frozen=True)
class GeneratedPolicy:
    """The policy document, and the notes for the operator (stderr) about what it could not look up."""

    document: dict[str, Any]
    notes: tuple[str, ...]


def generate_policy(
    requirements: Requirements,
    *,
    region: str,
    account: Optional[str],
    partition: Optional[str],
    identity: Optional[Callable[[], str]],
    describe: Optional[Describer],
    describe_secret: Optional[SecretDescriber] = None,
) -> GeneratedPolicy:
    """The least-privilege policy for `requirements`.

    Missing account and partition come from `identity` (STS's caller ARN); the partition else from the
    region. Keys come from `describe` when given and allowed; else a placeholder statement stands in.
    """
    if account is not None and not re.fullmatch(r"\d{12}", account):
        raise UsageError(f"--account must be a 12-digit AWS account id, not {account!r}")
    if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d", region):
        raise UsageError(f"{region!r} is not an AWS region name such as eu-west-1")
    if account is None:
        if identity is None:
            raise CredentialsError("no AWS credentials to look up the account: pass --account")
        arn = identity()
        account = account or account_of_arn(arn)
        partition = partition or partition_of_arn(arn)
    scope = Scope(partition=partition or partition_for_region(region), region=region, account=account)
    notes: list[str] = []
    keys: Optional[KeyFindings] = None
    has_parameters = any(secret_of_reference(base_name(s)) is None for s in requirements.names)
    if has_parameters or requirements.paths:
        keys, reason = _look_up(
            None if describe is None else lambda: find_keys(requirements, scope, describe)
        )
        if keys is None:
            notes.append(
                f"the SecureStrings' KMS keys were not looked up (ssm:DescribeParameters: {reason}); "
                f"statement {PLACEHOLDER_SID} stands in: put the customer managed key's id in its Resource, "
                "or delete it when every SecureString uses the AWS managed key aws/ssm"
            )
        else:
            notes.extend(keys.unknown)
            if keys.unknown:
                notes.append(f"statement {PLACEHOLDER_SID} stands in for those keys: put their ids in it")
    if any(secret_of_reference(base_name(s)) is not None for s in requirements.names):
        notes.append(
            "a Secrets Manager secret encrypted with a customer managed key also needs kms:Decrypt on "
            "that key (not looked up)"
        )
    secret_keys: Optional[KeyFindings] = None
    if requirements.secrets:
        secret_keys, reason = _look_up(
            None
            if describe_secret is None
            else lambda: find_secret_keys(requirements, scope, describe_secret)
        )
        if secret_keys is None:
            notes.append(
                f"the secrets' KMS keys were not looked up (secretsmanager:DescribeSecret: {reason}): a "
                "secret under a customer managed key also needs kms:Decrypt on it, with kms:ViaService "
                f"secretsmanager.{region}.amazonaws.com"
            )
        else:
            notes.extend(secret_keys.unknown)
    document = build_policy(requirements, scope, keys, secret_keys)
    if not document["Statement"]:
        notes.append("the template names no parameter, path or secret: rendering it needs no permission")
    return GeneratedPolicy(document=document, notes=tuple(notes))


def _look_up(find: Optional[Callable[[], KeyFindings]]) -> tuple[Optional[KeyFindings], str]:
    """The keys `find` names, or None and why not (no credentials to call it, or the refusal)."""
    if find is None:
        return None, "no AWS credentials to call it"
    try:
        return find(), ""
    except AgentError as exc:
        return None, exc.message


def policy_for_service(
    settings: AgentSettings,
    service: ServiceSettings,
    *,
    region: Optional[str],
    account: Optional[str],
    partition: Optional[str],
    note: Callable[[str], object],
) -> GeneratedPolicy:
    """`secrets-agent policy NAME`: NAME's template's policy, with what AWS access can look up (the
    account, the partition, customer-managed keys); without credentials, from the region alone."""
    from agent import render  # noqa: PLC0415  (render imports this module's neighbours, not this one)

    needs = render.read_template(service).requirements
    if region:
        settings = dataclasses.replace(settings, region=region)
    # An operator waits at a shell: a laptop without IMDS should not cost the full render deadline.
    deadline = Deadline(min(service.deadline_seconds, POLICY_DEADLINE_SECONDS))
    access: Optional[render.AwsAccess] = None
    try:
        access = render.aws_access(settings, deadline)
    except AgentError as exc:
        if settings.region is None:
            raise
        note(f"no AWS credentials ({exc.message}); nothing is looked up")
    found_region = access.region if access else str(settings.region)

    def identity() -> str:
        return caller_arn(
            region=found_region,
            endpoint_url=settings.sts_endpoint,
            credentials=access.credentials if access else None,
            timeout_seconds=READ_TIMEOUT_SECONDS,
            flags=endpoint_flags(settings),
        )

    return generate_policy(
        needs,
        region=found_region,
        account=account,
        partition=partition,
        identity=identity if access else None,
        describe=render.ssm_client(settings, deadline, access).describe_parameters if access else None,
        describe_secret=(
            render.secretsmanager_client(settings, deadline, access).describe
            if access and needs.secrets
            else None
        ),
    )
