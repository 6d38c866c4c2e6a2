"""Secrets Manager's answers, checked before they are believed (agent/aws/secretsmanager.py), and the
references a template names: pure, tables of input and expected output."""

from __future__ import annotations

from typing import Any

import pytest

from agent.aws.retry import NotServiceAnswer
from agent.aws.secretsmanager import (
    SecretRef,
    check_batch_answer,
    check_describe_answer,
    is_secret_key,
    secret_from_answer,
    version_of,
)

ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/db-AbCdEf"


def entry(**changes: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "Name": "prod/db",
        "ARN": ARN,
        "VersionId": "v2",
        "VersionStages": ["AWSCURRENT"],
        "SecretString": "value",
    }
    item.update(changes)
    return {key: value for key, value in item.items() if value is not None}


@pytest.mark.parametrize(
    "ref",
    [
        SecretRef.of("prod/db"),
        SecretRef.of("prod/db", stage="AWSPREVIOUS"),
        SecretRef.of("prod/db", version_id="v1"),
        SecretRef.of(ARN, stage="custom-label"),
    ],
)
def test_a_reference_survives_its_record_key(ref: SecretRef) -> None:
    """A reference's record key names it again exactly, and is never an SSM selector."""
    assert SecretRef.from_key(ref.key) == ref
    assert is_secret_key(ref.key)
    assert not is_secret_key("/prod/db")


def test_the_plain_call_and_awscurrent_are_one_reference() -> None:
    """secret(ID) and secret(ID, stage="AWSCURRENT") are the same secret, fetched in the batch."""
    assert SecretRef.of("prod/db") == SecretRef.of("prod/db", stage="AWSCURRENT")
    assert SecretRef.of("prod/db").is_current
    assert not SecretRef.of("prod/db", stage="AWSPREVIOUS").is_current
    assert SecretRef.of("prod/db", version_id="v1").is_fixed_version


@pytest.mark.parametrize(
    ("ref", "item"),
    [
        (SecretRef.of("prod/db"), entry()),
        (SecretRef.of(ARN), entry()),
        (SecretRef.of(ARN[:-7]), entry()),  # a partial ARN, without AWS's six characters
        (SecretRef.of("prod/db", stage="AWSPREVIOUS"), entry(VersionStages=["AWSPREVIOUS"])),
        (SecretRef.of("prod/db", version_id="v2"), entry(VersionStages=[])),
        (SecretRef.of("prod/db"), entry(SecretString=None, SecretBinary=b"\x00\xff")),
    ],
)
def test_well_formed_answers_are_believed(ref: SecretRef, item: dict[str, Any]) -> None:
    """An answer naming the secret, with a version id, the stage or version asked for and one value."""
    secret = secret_from_answer(ref, item)
    assert secret.version_id == "v2"
    assert (secret.text, secret.binary) == (item.get("SecretString"), item.get("SecretBinary"))


@pytest.mark.parametrize(
    ("ref", "item", "reason"),
    [
        (SecretRef.of("prod/db"), "not an object", "not an object"),
        (SecretRef.of("prod/db"), entry(Name=None), "no Name or ARN"),
        (SecretRef.of("prod/other"), entry(), "names another secret"),
        (SecretRef.of("prod/db"), entry(VersionId=""), "no VersionId"),
        (SecretRef.of("prod/db"), entry(VersionStages=None), "no VersionStages"),
        (SecretRef.of("prod/db"), entry(VersionStages=["AWSPREVIOUS"]), "does not carry it"),
        (SecretRef.of("prod/db", version_id="v1"), entry(), "holds another"),
        (SecretRef.of("prod/db"), entry(SecretString=None), "no values"),
        (SecretRef.of("prod/db"), entry(SecretBinary=b"x"), "two values"),
        (SecretRef.of("prod/db"), entry(SecretString=5), "not text"),
    ],
)
def test_answers_that_do_not_hold_up_are_not_believed(ref: SecretRef, item: Any, reason: str) -> None:
    """Anything else is not Secrets Manager's answer (retried like an outage), never "no such secret"."""
    with pytest.raises(NotServiceAnswer, match=reason):
        secret_from_answer(ref, item)


def test_a_batch_answer_pairs_values_and_errors_with_what_was_asked() -> None:
    """Found by key, a ResourceNotFoundException is missing, any other error is kept by secret."""
    refs = [SecretRef.of("prod/db"), SecretRef.of("prod/gone"), SecretRef.of("prod/denied")]
    answer = check_batch_answer(
        refs,
        {
            "SecretValues": [entry()],
            "Errors": [
                {"SecretId": "prod/gone", "ErrorCode": "ResourceNotFoundException", "Message": "x"},
                {"SecretId": "prod/denied", "ErrorCode": "AccessDeniedException", "Message": "no"},
            ],
        },
    )
    assert list(answer.found) == [refs[0].key]
    assert answer.missing == [refs[1].key]
    assert answer.errors == [(refs[2].key, "AccessDeniedException", "no")]


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        ({"SecretValues": [entry()]}, "prod/gone neither answered nor listed"),
        ({"SecretValues": [entry(Name="prod/x", ARN=ARN.replace("db", "x"))]}, "not asked for"),
        ({"SecretValues": "x"}, "not a list"),
        ({"SecretValues": [entry()], "Errors": [{"ErrorCode": "X"}]}, "names no SecretId"),
        ({"SecretValues": [entry()], "Errors": [{"SecretId": "prod/other"}]}, "not asked for"),
        ({"SecretValues": [], "NextToken": ""}, "not a token"),
    ],
)
def test_a_batch_answer_that_does_not_account_for_every_secret_is_not_believed(
    response: Any, reason: str
) -> None:
    """A secret neither answered nor in Errors, or one not asked for, is not AWS's answer."""
    with pytest.raises(NotServiceAnswer, match=reason):
        check_batch_answer([SecretRef.of("prod/db"), SecretRef.of("prod/gone")], response)


def test_describe_maps_stages_to_versions_and_reads_the_key() -> None:
    """DescribeSecret's VersionIdsToStages gives each stage's version id; no value is in it."""
    described = check_describe_answer(
        "prod/db",
        {
            "Name": "prod/db",
            "ARN": ARN,
            "KmsKeyId": "arn:aws:kms:eu-west-1:123456789012:key/1234",
            "VersionIdsToStages": {"v1": ["AWSPREVIOUS"], "v2": ["AWSCURRENT", "blue"]},
        },
    )
    assert described.stages == {"AWSPREVIOUS": "v1", "AWSCURRENT": "v2", "blue": "v2"}
    assert version_of(SecretRef.of("prod/db"), described) == "v2"
    assert version_of(SecretRef.of("prod/db", stage="AWSPREVIOUS"), described) == "v1"
    assert version_of(SecretRef.of("prod/db", stage="green"), described) is None
    assert version_of(SecretRef.of("prod/db", version_id="v9"), described) == "v9"


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        ({"Name": "prod/other", "ARN": "x"}, "names another secret"),
        ({"Name": "prod/db", "ARN": ARN, "VersionIdsToStages": []}, "not a mapping"),
        ({"Name": "prod/db", "ARN": ARN, "VersionIdsToStages": {"a": ["S"], "b": ["S"]}}, "on two versions"),
    ],
)
def test_a_describe_answer_that_does_not_hold_up_is_not_believed(response: Any, reason: str) -> None:
    """Another secret, a malformed mapping or a stage on two versions is not AWS's answer."""
    with pytest.raises(NotServiceAnswer, match=reason):
        check_describe_answer("prod/db", response)
