"""The pure half of `secrets-agent policy`: ARNs per partition, selectors, paths, keys and statements."""

from __future__ import annotations

from typing import Any

import pytest

from agent.commands.policy import (
    PLACEHOLDER_SID,
    KeyFindings,
    Scope,
    base_name,
    build_policy,
    find_keys,
    generate_policy,
    partition_for_region,
    partition_of_arn,
    path_arns,
)
from agent.errors import CredentialsError, UsageError
from agent.template.jinja import Requirements

SCOPE = Scope(partition="aws", region="eu-west-1", account="123456789012")
PARAMETER = "arn:aws:ssm:eu-west-1:123456789012:parameter"


@pytest.mark.parametrize(
    ("region", "partition"),
    [
        ("eu-west-1", "aws"),
        ("us-east-1", "aws"),
        ("cn-north-1", "aws-cn"),
        ("cn-northwest-1", "aws-cn"),
        ("us-gov-west-1", "aws-us-gov"),
        ("us-gov-east-1", "aws-us-gov"),
    ],
)
def test_partition_for_region(region: str, partition: str) -> None:
    """China and GovCloud regions get their own partitions; every other region is aws."""
    assert partition_for_region(region) == partition


@pytest.mark.parametrize(
    ("arn", "partition"),
    [
        ("arn:aws:sts::123456789012:assumed-role/r/s", "aws"),
        ("arn:aws-cn:iam::123456789012:user/u", "aws-cn"),
        ("arn:aws-us-gov:sts::123456789012:assumed-role/r/s", "aws-us-gov"),
        ("not an arn", None),
    ],
)
def test_partition_of_arn(arn: str, partition: Any) -> None:
    """The partition is the ARN's second field."""
    assert partition_of_arn(arn) == partition


@pytest.mark.parametrize(
    ("selector", "name"),
    [
        ("/prod/db", "/prod/db"),
        ("/prod/db:3", "/prod/db"),
        ("/prod/db:stable", "/prod/db"),
        ("plain", "plain"),
        (f"{PARAMETER}/prod/db:3", f"{PARAMETER}/prod/db"),
        ("/aws/reference/secretsmanager/app/key", "/aws/reference/secretsmanager/app/key"),
    ],
)
def test_selectors_map_to_their_parameter(selector: str, name: str) -> None:
    """A version or label selector names the same parameter, so the same ARN; an ARN keeps its colons."""
    assert base_name(selector) == name


def test_arns_in_each_partition() -> None:
    """Parameter, key and secret ARNs carry the partition, region and account."""
    china = Scope(partition="aws-cn", region="cn-north-1", account="210987654321")
    assert china.ssm_arn("/prod/db") == "arn:aws-cn:ssm:cn-north-1:210987654321:parameter/prod/db"
    assert china.ssm_arn("prod/db") == "arn:aws-cn:ssm:cn-north-1:210987654321:parameter/prod/db"
    assert china.key_arn("1234abcd-12ab-34cd-56ef-1234567890ab") == (
        "arn:aws-cn:kms:cn-north-1:210987654321:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    )
    assert (
        china.secret_arn("app/key")
        == "arn:aws-cn:secretsmanager:cn-north-1:210987654321:secret:app/key-??????"
    )


@pytest.mark.parametrize(
    ("path", "arns"),
    [
        ("/prod/app/", [f"{PARAMETER}/prod/app", f"{PARAMETER}/prod/app/*"]),
        ("/prod/app", [f"{PARAMETER}/prod/app", f"{PARAMETER}/prod/app/*"]),
        ("/", [f"{PARAMETER}/*"]),
    ],
)
def test_path_arns(path: str, arns: list[str]) -> None:
    """A path is granted as requested, with and without its last slash."""
    assert path_arns(SCOPE, path) == arns


def test_keys_found_by_describe_parameters() -> None:
    """Customer managed keys are granted with the parameters they encrypt; aws/ssm needs nothing; an
    alias cannot be granted and is reported."""
    key = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    described = {
        "/prod/a": {"Name": "/prod/a", "Type": "SecureString", "KeyId": key},
        "/prod/b": {"Name": "/prod/b", "Type": "SecureString", "KeyId": "alias/aws/ssm"},
        "/prod/c": {"Name": "/prod/c", "Type": "String"},
        "/prod/d": {"Name": "/prod/d", "Type": "SecureString", "KeyId": "alias/team-key"},
    }
    asked: list[Any] = []

    def describe(filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
        asked.append(filters)
        if filters[0]["Key"] == "Path":
            return [{"Name": "/shared/x", "Type": "SecureString", "KeyId": key}]
        return [described[name] for name in filters[0]["Values"]]

    needs = Requirements(names=("/prod/a:2", "/prod/b", "/prod/c", "/prod/d"), paths=(("/shared/", True),))
    found = find_keys(needs, SCOPE, describe)
    assert found.grants == {key: [f"{PARAMETER}/prod/a", f"{PARAMETER}/shared/*"]}
    assert len(found.unknown) == 1
    assert "alias/team-key" in found.unknown[0]
    assert asked[1] == [{"Key": "Path", "Option": "Recursive", "Values": ["/shared/"]}]


def test_placeholder_when_keys_are_unknown() -> None:
    """Without a key lookup, one clearly named placeholder statement, scoped to the parameters."""
    policy = build_policy(Requirements(names=("/prod/a",), paths=()), SCOPE, None)
    placeholder = policy["Statement"][-1]
    assert placeholder["Sid"] == PLACEHOLDER_SID
    assert placeholder["Condition"] == {
        "StringLike": {"kms:EncryptionContext:PARAMETER_ARN": [f"{PARAMETER}/prod/a"]}
    }
    without = build_policy(Requirements(names=("/prod/a",), paths=()), SCOPE, KeyFindings())
    assert [s["Sid"] for s in without["Statement"]] == ["ReadNamedParameters"]


def test_generate_policy_validates_and_notes() -> None:
    """A bad account or region is a usage error; no account and no credentials says to pass --account;
    a template with nothing to read says it needs no permission."""
    needs = Requirements(names=(), paths=())
    common: dict[str, Any] = {"partition": None, "identity": None, "describe": None}
    with pytest.raises(UsageError, match="12-digit"):
        generate_policy(needs, region="eu-west-1", account="12345", **common)
    with pytest.raises(UsageError, match="region"):
        generate_policy(needs, region="europe", account="123456789012", **common)
    with pytest.raises(CredentialsError, match="--account"):
        generate_policy(needs, region="eu-west-1", account=None, **common)
    empty = generate_policy(needs, region="eu-west-1", account="123456789012", **common)
    assert empty.document["Statement"] == []
    assert "needs no permission" in empty.notes[0]
