"""Real IAM for integration tests: moto's server with IAM enforcement in a process of its own, a role
assumed through STS whose temporary credentials the strict IMDSv2 fake hands out, and a proxy that
answers the agent's SSM calls the way SSM does when IAM says no.

moto reads INITIAL_NO_AUTH_ACTION_COUNT when it is imported, so enforcement needs its own server
process (the session's in-process moto stays open). The first BOOTSTRAP_CALLS calls after a reset go
unchecked: they create an administrator; every call after that is signed, checked and evaluated
against the caller's policies (actions only: moto evaluates each request against the resource "*",
so statements scoped to ARNs never match there; see `actions_only`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Optional

import boto3

# The one place the IAM tests import the IMDSv2 fake from (it may move out of agent/); they take
# FakeImds from here.
from devtools.fakeimds import FakeImds
from tests.integration.moto_server import CannedResponse, RecordingProxy, moto_api
from tests.timing import read_line

LOOPBACK = "127.0.0.1"
REGION = "eu-west-1"
ACCOUNT = "123456789012"  # moto's default account
BOOTSTRAP_CALLS = 3  # create_user, put_user_policy, create_access_key
ADMIN_USER = "iam-test-admin"
SESSION_NAME = "i-0fa4e1fa4e1fa4e10"  # EC2 names an instance role's session after the instance
# How long moto's enforcing server may take to print its URL: a limit against hanging.
SERVER_START_SECONDS = 60.0

_SERVER_MAIN = """
import sys, threading
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address=sys.argv[1], port=0, verbose=False)
server.start()
host, port = server.get_host_and_port()
host = f"[{host}]" if ":" in host else host
print(f"http://{host}:{port}", flush=True)
sys.stdin.read()  # serve until the test session closes our stdin
server.stop()
"""

# moto's denial: XML, HTTP 403, "User: ARN is not authorized to perform: ACTION".
_MOTO_DENIAL_RE = re.compile(rb"User: (\S+) is not authorized to perform: ([\w:-]+)")
_CREDENTIAL_SCOPE_RE = re.compile(r"Credential=[^/]+/\d{8}/([\w-]+)/")
_ARN_PARTS_RE = re.compile(r"^arn:([\w-]+):[\w-]*:[\w-]*:(\d{12}):")


@contextmanager
def enforcing_moto_server(host: str = LOOPBACK, *, netns: str = "") -> Iterator[str]:
    """moto's server with IAM enforcement, in its own process on `host` (127.0.0.1, or the host's
    end of a test's network namespace link; an IPv6 address too), in the network namespace `netns`
    when given; yields its URL."""
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT=str(BOOTSTRAP_CALLS))
    prefix = ["ip", "netns", "exec", netns] if netns else []
    shown = f"[{host}]" if ":" in host else host
    process = subprocess.Popen(
        [*prefix, sys.executable, "-c", _SERVER_MAIN, host],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # werkzeug's line per request
        env=env,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = read_line(process.stdout, SERVER_START_SECONDS, "moto's enforcing server's URL").strip()
        if not url.startswith(f"http://{shown}:"):
            raise RuntimeError(f"moto's enforcing server did not start (printed {url!r})")
        yield url
    finally:
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass(frozen=True)
class Keys:
    """An access key triple; never printed (repr hides the secrets)."""

    access_key_id: str
    secret_access_key: str
    session_token: str = ""

    def __repr__(self) -> str:
        return f"Keys({self.access_key_id[:4]}...)"

    def env(self) -> dict[str, str]:
        """The AWS_* variables that hand these keys to a process."""
        env = {"AWS_ACCESS_KEY_ID": self.access_key_id, "AWS_SECRET_ACCESS_KEY": self.secret_access_key}
        if self.session_token:
            env["AWS_SESSION_TOKEN"] = self.session_token
        return env


class IamWorld:
    """One test's view of the enforcing server: an administrator, and roles assumed through STS."""

    def __init__(self, url: str, region: str = REGION) -> None:
        self.url = url
        self.region = region
        moto_api(url, "reset")
        # Re-arm the unchecked calls: the administrator is created with them, then enforcement holds.
        moto_api(url, "reset-auth", str(BOOTSTRAP_CALLS).encode())
        iam = boto3.client(
            "iam", region_name=region, endpoint_url=url, aws_access_key_id="x", aws_secret_access_key="x"
        )
        iam.create_user(UserName=ADMIN_USER)
        iam.put_user_policy(
            UserName=ADMIN_USER,
            PolicyName="admin",
            PolicyDocument=json.dumps(
                {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
            ),
        )
        key = iam.create_access_key(UserName=ADMIN_USER)["AccessKey"]
        self.admin = Keys(key["AccessKeyId"], key["SecretAccessKey"])
        self.admin_arn = f"arn:aws:iam::{ACCOUNT}:user/{ADMIN_USER}"
        # Keys handed out by role(), by access key id: whom a signed request came from.
        self.callers: dict[str, tuple[str, Keys]] = {}

    def client(self, service: str, keys: Optional[Keys] = None, endpoint: Optional[str] = None) -> Any:
        """A boto3 client signed with `keys` (the administrator's by default)."""
        keys = keys or self.admin
        return boto3.client(
            service,
            region_name=self.region,
            endpoint_url=endpoint or self.url,
            aws_access_key_id=keys.access_key_id,
            aws_secret_access_key=keys.secret_access_key,
            aws_session_token=keys.session_token or None,
        )

    def put(self, name: str, value: str, kind: str = "SecureString", **extra: Any) -> int:
        """Create or overwrite a parameter as the administrator; returns its version."""
        answer = self.client("ssm").put_parameter(Name=name, Value=value, Type=kind, Overwrite=True, **extra)
        return int(answer["Version"])

    def role(self, name: str, policy: Optional[Mapping[str, Any]]) -> Keys:
        """Create role `name` with `policy` as its only (inline) policy, assume it, return its keys."""
        iam = self.client("iam")
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"AWS": self.admin_arn}, "Action": "sts:AssumeRole"}
            ],
        }
        iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))
        if policy is not None:
            iam.put_role_policy(RoleName=name, PolicyName="secrets-agent", PolicyDocument=json.dumps(policy))
        answer = self.client("sts").assume_role(
            RoleArn=f"arn:aws:iam::{ACCOUNT}:role/{name}", RoleSessionName=SESSION_NAME
        )["Credentials"]
        keys = Keys(answer["AccessKeyId"], answer["SecretAccessKey"], answer["SessionToken"])
        self.callers[keys.access_key_id] = (
            f"arn:aws:sts::{ACCOUNT}:assumed-role/{name}/{SESSION_NAME}",
            keys,
        )
        return keys

    def as_ssm(self, answer: CannedResponse, headers: Mapping[str, str], body: bytes) -> CannedResponse:
        """SSM's answer as AWS gives it: denials in SSM's shape, and what SSM does on the caller's behalf
        checked as the caller (forward access): a Secrets Manager reference needs
        secretsmanager:GetSecretValue, a SecureString under a customer managed key needs kms:Decrypt.
        moto's SSM skips both checks; here they are made against moto's IAM, as the caller."""
        answer = ssm_denial(answer, headers, body)
        action = headers.get("X-Amz-Target", "").rpartition(".")[2]
        scope = re.search(r"Credential=([^/]+)/", headers.get("Authorization", ""))
        caller = self.callers.get(scope.group(1)) if scope else None
        if answer.status != 200 or caller is None or not action.startswith("GetParameter"):
            return answer
        principal, keys = caller
        parsed, request = json.loads(answer.body), json.loads(body or b"{}")
        items = parsed.get("Parameters") or ([parsed["Parameter"]] if "Parameter" in parsed else [])
        # moto answers a reference under the secret's bare name: take references from the request.
        asked = [str(name) for name in request.get("Names") or [request.get("Name") or ""]]
        checks = [(name, "reference") for name in asked if name.startswith("/aws/reference/secretsmanager/")]
        if request.get("WithDecryption") is True:
            # Without decryption SSM returns SecureStrings encrypted and never calls KMS.
            checks += [(str(item["Name"]), str(item["Type"])) for item in items]
        for name, kind in checks:
            denial = self._forward_access_denial(name, kind, keys)
            if denial is not None:
                resource, denied_action, suffix = denial
                return access_denied(principal, denied_action, resource, suffix)
        return answer

    def _forward_access_denial(self, name: str, kind: str, keys: Keys) -> Optional[tuple[str, str, str]]:
        from botocore.exceptions import ClientError

        if kind == "reference":
            secret = name[len("/aws/reference/secretsmanager/") :].partition(":")[0]
            try:
                self.client("secretsmanager", keys).get_secret_value(SecretId=secret)
            except ClientError:
                return secret, "secretsmanager:GetSecretValue", ""
            return None
        if kind != "SecureString" or not name.startswith("/"):
            return None
        described = self.client("ssm").describe_parameters(
            ParameterFilters=[{"Key": "Name", "Option": "Equals", "Values": [name]}]
        )["Parameters"]
        key_id = described[0].get("KeyId", "alias/aws/ssm") if described else "alias/aws/ssm"
        if key_id.endswith("alias/aws/ssm"):
            return None  # the AWS managed key: its key policy lets the account's principals decrypt
        context = {"PARAMETER_ARN": f"arn:aws:ssm:{self.region}:{ACCOUNT}:parameter{name}"}
        blob = self.client("kms").encrypt(KeyId=key_id, Plaintext=b"probe", EncryptionContext=context)
        try:
            self.client("kms", keys).decrypt(CiphertextBlob=blob["CiphertextBlob"], EncryptionContext=context)
        except ClientError:
            return (
                blob["KeyId"],
                "kms:Decrypt",
                " (Service: AWSKMS; Status Code: 400; Error Code: AccessDeniedException)",
            )
        return None

    def imds(self, role: str, keys: Keys, host: str = LOOPBACK, port: int = 0) -> FakeImds:
        """A strict IMDSv2 fake (not started) on `host` (and `port`, any free one by default)
        serving `keys` as the instance role's credentials."""
        return FakeImds(
            host=host,
            port=port,
            region=self.region,
            role=role,
            access_key_id=keys.access_key_id,
            secret_access_key=keys.secret_access_key,
            session_token=keys.session_token,
        )


def policy_of(*statements: Mapping[str, Any]) -> dict[str, Any]:
    """An IAM policy document holding `statements`."""
    return {"Version": "2012-10-17", "Statement": list(statements)}


def allow(*actions: str, resource: str = "*") -> dict[str, Any]:
    """One Allow statement."""
    return {"Effect": "Allow", "Action": list(actions), "Resource": resource}


def actions_only(policy: Mapping[str, Any]) -> dict[str, Any]:
    """The same statements with Resource "*" and no Condition: what moto can evaluate.

    moto checks each request against the resource "*" and no condition values, so a statement scoped
    to ARNs (or a KMS encryption context) never matches there; the actions are what it proves, and the
    resources are proven by the linter and by the ARN tests.
    """
    statements = []
    for statement in policy["Statement"]:
        widened = {key: value for key, value in statement.items() if key not in ("Resource", "Condition")}
        widened["Resource"] = "*"
        statements.append(widened)
    return {"Version": policy["Version"], "Statement": statements}


# -- SSM's answer to a denial ----------------------------------------------------------------------


def _resource_arn(action: str, body: bytes, region: str, partition: str, account: str) -> str:
    service = action.partition(":")[0]
    try:
        request = json.loads(body or b"{}")
    except ValueError:
        request = {}
    names = request.get("Names") or [request.get("Name") or request.get("Path") or ""]
    name = str(names[0]).split(":", 1)[0] if not str(names[0]).startswith("arn:") else str(names[0])
    if name.startswith("arn:"):
        return name
    if service == "ssm":
        return f"arn:{partition}:ssm:{region}:{account}:parameter{'' if name.startswith('/') else '/'}{name}"
    return f"arn:{partition}:{service}:{region}:{account}:*"


def ssm_denial(moto_answer: CannedResponse, headers: Mapping[str, str], body: bytes) -> CannedResponse:
    """moto's XML 403 denial rewritten as SSM sends it: HTTP 400, JSON AccessDeniedException, with the
    resource and the "no identity-based policy" clause of AWS's message; anything else unchanged."""
    match = _MOTO_DENIAL_RE.search(moto_answer.body)
    if moto_answer.status != 403 or match is None or not headers.get("X-Amz-Target"):
        return moto_answer
    principal, action = match.group(1).decode(), match.group(2).decode()
    scope = _CREDENTIAL_SCOPE_RE.search(headers.get("Authorization", ""))
    region = scope.group(1) if scope else REGION
    parts = _ARN_PARTS_RE.match(principal)
    partition, account = (parts.group(1), parts.group(2)) if parts else ("aws", ACCOUNT)
    return access_denied(principal, action, _resource_arn(action, body, region, partition, account))


def access_denied(principal: str, action: str, resource: str, suffix: str = "") -> CannedResponse:
    """SSM's AccessDeniedException: HTTP 400, JSON, AWS's wording."""
    message = (
        f"User: {principal} is not authorized to perform: {action} on resource: {resource} "
        f"because no identity-based policy allows the {action} action{suffix}"
    )
    return CannedResponse(
        status=400,
        body=json.dumps({"__type": "AccessDeniedException", "message": message}).encode(),
        headers=(
            ("Content-Type", "application/x-amz-json-1.1"),
            ("x-amzn-RequestId", "00000000-0000-0000-0000-000000000000"),
        ),
    )


def ssm_proxy(upstream: str, world: Optional[IamWorld] = None) -> RecordingProxy:
    """A recording proxy in front of the enforcing server that answers as SSM does: denials in SSM's
    shape and, given the `world`, the caller's rights on Secrets Manager and KMS checked too."""
    return RecordingProxy(upstream, rewrite=ssm_denial if world is None else world.as_ssm)
