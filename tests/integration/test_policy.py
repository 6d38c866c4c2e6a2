"""`secrets-agent policy` against moto enforcing IAM: the policy it prints lints clean, lets the role
render, and every statement in it is needed."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cli_harness import run_cli
from tests.integration.iam_world import ACCOUNT, REGION, IamWorld, actions_only, allow, policy_of, ssm_proxy
from tests.integration.test_iam import ROLE, role_stack

TEMPLATE = (
    'DB={{ param("/prod/app/db") }}\n'
    'OLD_DB={{ param("/prod/app/db:1") }}\n'
    'CMK={{ param("/prod/app/cmk") }}\n'
    'API_KEY={{ param("/aws/reference/secretsmanager/app/api-key") }}\n'
    '{% for name, value in params("/prod/shared/").items() %}{{ name | env_name }}={{ value }}\n{% endfor %}'
)


def _seed(iam: IamWorld) -> str:
    """Parameters, a secret and a customer managed key for TEMPLATE; returns the key's ARN."""
    key = iam.client("kms").create_key(Description="app")["KeyMetadata"]
    iam.put("/prod/app/db", "first")
    iam.put("/prod/app/db", "second")
    iam.put("/prod/app/cmk", "under a customer managed key", KeyId=key["KeyId"])
    iam.put("/prod/shared/log-level", "debug", kind="String")
    iam.put("/prod/shared/token", "shared token")
    iam.client("secretsmanager").create_secret(Name="app/api-key", SecretString="sm-secret")
    return str(key["Arn"])


def _policy(iam: IamWorld, config: Path, *args: str, env: Any = None) -> tuple[int, str, str]:
    (config / "app.env.j2").write_text(TEMPLATE, encoding="utf-8")
    environment = {
        **iam.admin.env(),
        "AWS_REGION": REGION,
        "AWS_ENDPOINT_URL": iam.url,
    }
    done = run_cli(config, None, "policy", "app", *args, env=environment if env is None else env)
    return done.code, done.out, done.err


def _findings(policy: dict[str, Any]) -> list[str]:
    """parliament's findings at every severity, run as its users run it (its CLI)."""
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "parliament"),
            "--string",
            json.dumps(policy),
            "--json",
            "--minimum_severity",
            "INFO",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr
    return done.stdout.splitlines()


def test_policy_names_exact_arns_and_the_customer_managed_key(iam: IamWorld, tmp_path: Path) -> None:
    """An admin's credentials: account from STS, the CMK from DescribeParameters scoped to its parameter,
    exact parameter ARNs (a selector maps to its parameter), path ARNs, the secret, and no finding."""
    key_arn = _seed(iam)
    code, out, err = _policy(iam, tmp_path)
    assert code == 0, err
    policy = json.loads(out)
    by_sid = {statement["Sid"]: statement for statement in policy["Statement"]}
    arn = f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter"
    assert by_sid["ReadNamedParameters"] == {
        "Sid": "ReadNamedParameters",
        "Effect": "Allow",
        "Action": ["ssm:GetParameter", "ssm:GetParameters"],
        "Resource": [
            f"{arn}/aws/reference/secretsmanager/app/api-key",
            f"{arn}/prod/app/cmk",
            f"{arn}/prod/app/db",
        ],
    }
    assert by_sid["ListParameterPaths"]["Resource"] == [f"{arn}/prod/shared", f"{arn}/prod/shared/*"]
    assert by_sid["ReadReferencedSecrets"]["Resource"] == [
        f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:app/api-key-??????"
    ]
    assert by_sid["DecryptSecureStrings1"]["Resource"] == [key_arn]
    assert by_sid["DecryptSecureStrings1"]["Condition"] == {
        "StringLike": {"kms:EncryptionContext:PARAMETER_ARN": [f"{arn}/prod/app/cmk"]}
    }
    assert set(by_sid) == {
        "ReadNamedParameters",
        "ListParameterPaths",
        "ReadReferencedSecrets",
        "DecryptSecureStrings1",
    }
    assert _findings(policy) == []


def test_linter_finds_a_broken_policy() -> None:
    """The linter the tests trust does flag a policy with an unknown action (the check can fail)."""
    broken = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "ssm:GetParameterz", "Resource": "*"}],
    }
    assert _findings(broken) != []


def test_without_key_lookup_a_placeholder_stands_in(iam: IamWorld, tmp_path: Path) -> None:
    """A role that may not call DescribeParameters gets a clearly named placeholder and a note on stderr."""
    _seed(iam)
    keys = iam.role("reader", policy_of(allow("ssm:GetParameter")))
    with ssm_proxy(iam.url) as proxy:
        env = {
            **keys.env(),
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL": iam.url,
            "AWS_ENDPOINT_URL_SSM": proxy.url,
        }
        code, out, err = _policy(iam, tmp_path, "--account", ACCOUNT, env=env)
        assert proxy.actions == ["DescribeParameters"]
    assert code == 0, err
    policy = json.loads(out)
    placeholder = [s for s in policy["Statement"] if s["Sid"].startswith("Placeholder")]
    assert len(placeholder) == 1
    assert placeholder[0]["Resource"] == [f"arn:aws:kms:{REGION}:{ACCOUNT}:key/REPLACE-WITH-KEY-ID"]
    assert "were not looked up" in err
    assert "ssm:DescribeParameters" in err
    assert _findings(policy) == []


@pytest.mark.parametrize(
    ("region", "partition"), [("cn-north-1", "aws-cn"), ("us-gov-west-1", "aws-us-gov"), ("eu-west-1", "aws")]
)
def test_partitions_produce_their_arns(iam: IamWorld, tmp_path: Path, region: str, partition: str) -> None:
    """--account and --region alone give the region's partition in every ARN; the policy lints clean."""
    no_credentials = {"AWS_EC2_METADATA_DISABLED": "true"}
    code, out, err = _policy(
        iam, tmp_path, "--account", "210987654321", "--region", region, env=no_credentials
    )
    assert code == 0, err
    policy = json.loads(out)
    resources = [arn for statement in policy["Statement"] for arn in statement["Resource"]]
    assert resources
    assert all(arn.startswith(f"arn:{partition}:") and ":210987654321:" in arn for arn in resources)
    assert all(f":{region}:" in arn for arn in resources)
    assert _findings(policy) == []


def test_generated_policy_lets_the_role_render_and_each_statement_is_needed(
    iam: IamWorld, tmp_path: Path, tmpfs_path: Path
) -> None:
    """Attached as the role's only policy under enforcement (actions; moto cannot evaluate ARNs) render
    succeeds; without any one statement it fails with exit 5 naming that action (Secrets Manager and KMS
    checked as the caller, as SSM does)."""
    _seed(iam)
    code, out, err = _policy(iam, tmp_path)
    assert code == 0, err
    policy = json.loads(out)
    with role_stack(iam, tmp_path, tmpfs_path, actions_only(policy)) as (stack, _proxy):
        stack.template(TEMPLATE)
        code, _out, err = stack.run("render", "app")
        assert code == 0, err
    needed = {
        "ReadNamedParameters": "ssm:GetParameter",
        "ListParameterPaths": "ssm:GetParametersByPath",
        "ReadReferencedSecrets": "secretsmanager:GetSecretValue",
        "DecryptSecureStrings1": "kms:Decrypt",
    }
    assert [statement["Sid"] for statement in policy["Statement"]] == list(needed)
    for number, (sid, action) in enumerate(needed.items()):
        reduced = copy.deepcopy(policy)
        reduced["Statement"] = [s for s in reduced["Statement"] if s["Sid"] != sid]
        role = f"{ROLE}-without-{number}"
        with role_stack(iam, tmp_path, tmpfs_path, actions_only(reduced), role=role) as (stack, _proxy):
            stack.template(TEMPLATE)
            code, _out, err = stack.run("render", "app")
            assert code == 5, err
            assert action in err
            assert f"role {role}" in err


SECRETS_TEMPLATE = (
    'DB={{ secret("prod/db") }}\n'
    'OLD_DB={{ secret("prod/db", stage="AWSPREVIOUS") }}\n'
    'CMK={{ secret("prod/cmk") }}\n'
)


def _seed_secrets(iam: IamWorld) -> str:
    """Secrets for SECRETS_TEMPLATE, one under a customer managed key; returns the key's ARN."""
    key = iam.client("kms").create_key(Description="secrets")["KeyMetadata"]
    sm = iam.client("secretsmanager")
    sm.create_secret(Name="prod/db", SecretString="first")
    sm.put_secret_value(SecretId="prod/db", SecretString="second")
    sm.create_secret(Name="prod/cmk", SecretString="under a cmk", KmsKeyId=key["Arn"])
    return str(key["Arn"])


def test_policy_for_secrets_grants_each_secret_batch_on_star_and_the_key_via_secrets_manager(
    iam: IamWorld, tmp_path: Path, tmpfs_path: Path
) -> None:
    """secret()s get GetSecretValue + DescribeSecret on their ARNs, BatchGetSecretValue on "*", kms:Decrypt
    on the customer managed key only through Secrets Manager (kms:ViaService); it lints clean and, attached
    to a role under enforcement (actions), lets it render."""
    key_arn = _seed_secrets(iam)
    (tmp_path / "host").mkdir()
    (tmp_path / "app.env.j2").write_text(SECRETS_TEMPLATE, encoding="utf-8")
    env = {**iam.admin.env(), "AWS_REGION": REGION, "AWS_ENDPOINT_URL": iam.url}
    done = run_cli(tmp_path, None, "policy", "app", env=env)
    assert done.code == 0, done.err
    policy = json.loads(done.out)
    by_sid = {statement["Sid"]: statement for statement in policy["Statement"]}
    prefix = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret"
    assert by_sid["ReadSecrets"] == {
        "Sid": "ReadSecrets",
        "Effect": "Allow",
        "Action": ["secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue"],
        "Resource": [f"{prefix}:prod/cmk-??????", f"{prefix}:prod/db-??????"],
    }
    assert by_sid["BatchReadSecrets"]["Action"] == ["secretsmanager:BatchGetSecretValue"]
    assert by_sid["BatchReadSecrets"]["Resource"] == ["*"]
    assert by_sid["DecryptSecrets1"]["Resource"] == [key_arn]
    assert by_sid["DecryptSecrets1"]["Condition"] == {
        "StringEquals": {"kms:ViaService": f"secretsmanager.{REGION}.amazonaws.com"}
    }
    assert set(by_sid) == {"ReadSecrets", "BatchReadSecrets", "DecryptSecrets1"}
    assert _findings(policy) == []

    with role_stack(iam, tmp_path / "host", tmpfs_path, actions_only(policy)) as (stack, proxy):
        stack.env["AWS_ENDPOINT_URL_SECRETS_MANAGER"] = proxy.url
        stack.template(SECRETS_TEMPLATE)
        code, _out, render_err = stack.run("render", "app")
        assert code == 0, render_err
        assert proxy.count("BatchGetSecretValue") == 1
        assert "secretsmanager_batch_denied" not in render_err
