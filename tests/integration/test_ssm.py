"""agent.aws.ssm against moto's server over HTTP, a recording proxy for counting and faults, and its
error table checked code by code with real botocore ClientErrors."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from typing import Any, Callable, Optional

import boto3
import pytest
import structlog
from botocore.exceptions import ClientError
from moto_server import CannedResponse, RecordingProxy, admin_ssm_client, aws_json_error
from structlog.testing import capture_logs

from agent.aws.answers import (
    Parameter,
    check_get_parameter,
    check_get_parameters,
    check_path_page,
    match_parameters,
)
from agent.aws.retry import Backoff, Deadline, NotServiceAnswer
from agent.aws.selectors import parse_selector
from agent.aws.ssm import SsmClient
from agent.aws.ssm_errors import (
    ACCESS_DENIED_ERROR_CODES,
    CREDENTIALS_ERROR_CODES,
    KMS_ERROR_CODES,
    THROTTLING_ERROR_CODES,
    TRANSIENT_ERROR_CODES,
    VALIDATION_ERROR_CODES,
    denies_action,
    is_retryable_error,
    map_client_error,
)
from agent.errors import AccessDenied, AgentError, CredentialsError, ServiceUnavailable, TemplateError
from tests.timing import HeldClock, assert_ended_by

REGION = "us-east-1"
CREDENTIALS = ("AKIDTESTTESTTESTTEST", "test-secret-key", "test-session-token")
SECRET_VALUE = "s3cr3t-db-password-\u00e9"  # only ever compared, never expected in a message
DENIED_ROLE_MESSAGE = (
    "User: arn:aws:sts::123456789012:assumed-role/app-role/i-0123456789abcdef0 is not authorized to "
    "perform: ssm:GetParameters on resource: arn:aws:ssm:us-east-1:123456789012:parameter/prod/app/db "
    "because no identity-based policy allows the ssm:GetParameters action"
)
KMS_KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
KMS_DENIED_MESSAGE = (
    "User: arn:aws:sts::123456789012:assumed-role/app-role/i-0123456789abcdef0 is not authorized to "
    f"perform: kms:Decrypt on resource: {KMS_KEY_ARN} because no identity-based policy allows the "
    "kms:Decrypt action (Service: AWSKMS; Status Code: 400; Error Code: AccessDeniedException)"
)


def fast_backoff() -> Backoff:
    """Backoff with millisecond delays, so retry tests take milliseconds."""
    return Backoff(base=0.001, cap=0.005, throttled_step=0.001, throttled_cap=0.005)


def make_client(
    endpoint: str,
    *,
    deadline_seconds: float = 10.0,
    read_timeout_seconds: float = 10.0,
    role: Optional[str] = None,
    throttled_seconds: Optional[float] = None,
    on_status: Callable[[str], None] = lambda _text: None,
) -> SsmClient:
    # The deadline counts from when the client is ready, not from before botocore builds it.
    clock = HeldClock()
    client = SsmClient(
        region=REGION,
        endpoint_url=endpoint,
        credentials=CREDENTIALS,
        deadline=Deadline(deadline_seconds, clock=clock, throttled_seconds=throttled_seconds),
        backoff_factory=fast_backoff,
        role=role,
        on_status=on_status,
        read_timeout_seconds=read_timeout_seconds,
    )
    clock.release()
    return client


def client_error(code: str, message: str = "", status: int = 400) -> ClientError:
    """A ClientError exactly as botocore builds one from a parsed error response."""
    response: Any = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "GetParameters")


@pytest.fixture(scope="module")
def admin_client(moto_url: str) -> Any:
    """A plain boto3 SSM client on moto's server, built once for the module."""
    return admin_ssm_client(moto_url, REGION)


@pytest.fixture
def admin(admin_client: Any, clean_moto_url: str) -> Any:
    """The admin client on the emptied server, to create what a test reads."""
    return admin_client


@pytest.fixture
def counting_proxy(clean_moto_url: str) -> Iterator[RecordingProxy]:
    """A proxy in front of moto that counts requests by action, server side."""
    with RecordingProxy(clean_moto_url) as proxy:
        yield proxy


def put(admin: Any, name: str, value: str, kind: str = "String", *, overwrite: bool = False) -> None:
    admin.put_parameter(Name=name, Value=value, Type=kind, Overwrite=overwrite)


# ---------------------------------------------------------------------------------------------
# The error table, code by code (pure: real ClientError objects, no server).


@pytest.mark.parametrize("code", sorted(THROTTLING_ERROR_CODES | TRANSIENT_ERROR_CODES))
def test_throttling_and_transient_codes_are_retried(code: str) -> None:
    """Every throttling or transient code is retryable, and maps to ServiceUnavailable if surfaced."""
    error = client_error(code, "Rate exceeded")
    assert is_retryable_error(error)
    mapped = map_client_error(error, action="GetParameters", names=["/a"], endpoint="http://x")
    assert type(mapped) is ServiceUnavailable
    assert code in mapped.message


def test_any_5xx_is_retried_whatever_its_code() -> None:
    """An unknown code with an HTTP 5xx status is retryable; with a 4xx it is not."""
    assert is_retryable_error(client_error("SomethingNew", status=503))
    assert not is_retryable_error(client_error("SomethingNew", status=400))


@pytest.mark.parametrize("code", sorted(ACCESS_DENIED_ERROR_CODES))
def test_access_denied_codes_name_action_parameter_and_role(code: str) -> None:
    """IAM denials become AccessDenied naming the action, the parameter, the role and the fix."""
    mapped = map_client_error(
        client_error(code, "not authorized"), action="GetParameters", names=["/prod/app/db"], role="app-role"
    )
    assert type(mapped) is AccessDenied
    assert mapped.message == (
        "SSM denied ssm:GetParameters on /prod/app/db for role app-role: grant it in the instance profile"
    )


def test_access_denied_names_the_parameter_and_role_from_the_arn_in_the_message() -> None:
    """For a batch, the ARN in AWS's message picks the denied parameter, and the role comes from it."""
    mapped = map_client_error(
        client_error("AccessDeniedException", DENIED_ROLE_MESSAGE),
        action="GetParameters",
        names=["/prod/app/api", "/prod/app/db:3", "/prod/app/url"],
    )
    assert mapped.message == (
        "SSM denied ssm:GetParameters on /prod/app/db for role app-role: grant it in the instance profile"
    )


def test_access_denied_without_an_arn_lists_the_whole_batch() -> None:
    """Without an ARN in the message, every name of the batch is listed."""
    mapped = map_client_error(
        client_error("AccessDeniedException", "denied"), action="GetParameters", names=["/a", "/b:2"]
    )
    assert "one or more of /a, /b for this instance's role" in mapped.message


@pytest.mark.parametrize("code", sorted(KMS_ERROR_CODES))
def test_kms_codes_say_the_role_needs_kms_decrypt(code: str) -> None:
    """KMS failures become AccessDenied that names the key when AWS does and asks for kms:Decrypt."""
    mapped = map_client_error(
        client_error(code, f"key {KMS_KEY_ARN} is not usable"),
        action="GetParameters",
        names=["/prod/app/db"],
        role="app-role",
    )
    assert type(mapped) is AccessDenied
    assert KMS_KEY_ARN in mapped.message
    assert "kms:Decrypt" in mapped.message
    assert "/prod/app/db" in mapped.message


@pytest.mark.parametrize(
    "message",
    [
        KMS_DENIED_MESSAGE,
        "The ciphertext refers to a customer master key that does not exist, does not exist in this "
        "region, or you are not allowed to access. (Service: AWSKMS; Status Code: 400)",
    ],
)
def test_access_denied_from_kms_is_reported_as_a_kms_problem(message: str) -> None:
    """An AccessDeniedException whose message comes from KMS is a kms:Decrypt problem, not an SSM one."""
    mapped = map_client_error(
        client_error("AccessDeniedException", message), action="GetParameters", names=["/prod/app/db"]
    )
    assert type(mapped) is AccessDenied
    assert "kms:Decrypt" in mapped.message
    expected_who = "role app-role" if "assumed-role" in message else "this instance's role"
    assert expected_who in mapped.message
    assert (KMS_KEY_ARN in mapped.message) == (KMS_KEY_ARN in message)


@pytest.mark.parametrize("code", sorted(CREDENTIALS_ERROR_CODES))
def test_credential_codes_become_credentials_error(code: str) -> None:
    """Rejected, expired or badly signed credentials become CredentialsError naming the endpoint."""
    mapped = map_client_error(
        client_error(code, "The security token included in the request is invalid"),
        action="GetParameters",
        names=["/a"],
        endpoint="https://ssm.us-east-1.amazonaws.com",
    )
    assert type(mapped) is CredentialsError
    assert "https://ssm.us-east-1.amazonaws.com" in mapped.message
    assert code in mapped.message


def test_unknown_code_becomes_agent_error_with_code_and_action() -> None:
    """A code outside the table becomes a plain AgentError naming the code, action and names."""
    error = client_error("SomethingNew", "bad")
    mapped = map_client_error(error, action="GetParameters", names=["/a"])
    assert type(mapped) is AgentError
    assert mapped.message == "SSM failed ssm:GetParameters on /a with SomethingNew"


@pytest.mark.parametrize("code", sorted(VALIDATION_ERROR_CODES))
def test_validation_codes_are_template_errors_naming_the_parameter(code: str) -> None:
    """A name SSM refuses as invalid is the template's fault: exit 3, the name and SSM's rules."""
    error = client_error(code, 'Parameter name: can\'t be prefixed with "ssm" (case-insensitive).')
    mapped = map_client_error(error, action="GetParameters", names=["ssm-reserved"])
    assert type(mapped) is TemplateError
    assert mapped.exit_code == 3
    assert mapped.message.startswith(
        f"SSM refused ssm:GetParameters on ssm-reserved as invalid ({code}): fix the name in the template."
    )
    assert "15 levels" in mapped.message


def test_mapped_messages_carry_no_aws_text() -> None:
    """AWS's own message text never reaches the agent's message (only parsed ARNs and role names)."""
    canary = "CANARY-TEXT-FROM-AWS"
    codes = (
        ACCESS_DENIED_ERROR_CODES
        | KMS_ERROR_CODES
        | CREDENTIALS_ERROR_CODES
        | VALIDATION_ERROR_CODES
        | {"Weird", "Throttling"}
    )
    for code in sorted(codes):
        mapped = map_client_error(client_error(code, canary), action="GetParameters", names=["/a"])
        assert canary not in mapped.message


# ---------------------------------------------------------------------------------------------
# Pure helpers.


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("/prod/DB", ("/prod/DB", "")),
        ("/prod/DB:3", ("/prod/DB", ":3")),
        ("/prod/DB:live", ("/prod/DB", ":live")),
        ("DB", ("DB", "")),
        ("/aws/reference/secretsmanager/db", ("/aws/reference/secretsmanager/db", "")),
        (
            "arn:aws:ssm:us-east-1:123456789012:parameter/prod/DB:2",
            ("arn:aws:ssm:us-east-1:123456789012:parameter/prod/DB", ":2"),
        ),
    ],
)
def test_split_selector(selector: str, expected: tuple[str, str]) -> None:
    """A selector splits into name and ":version"/":label", ARN colons included in the name."""
    parsed = parse_selector(selector)
    assert (parsed.name, parsed.suffix) == expected


def test_parameter_repr_hides_the_value() -> None:
    """repr() and str() of a Parameter show name, selector, version and type, never the value."""
    parameter = Parameter(name="/p", selector="/p:2", value=SECRET_VALUE, version=2, type="SecureString")
    assert SECRET_VALUE not in repr(parameter)
    assert SECRET_VALUE not in str(parameter)
    assert "/p:2" in repr(parameter)


def answer(name: str, version: int, value: str, selector: Optional[str] = None) -> dict[str, Any]:
    item: dict[str, Any] = {"Name": name, "Version": version, "Value": value, "Type": "String"}
    if selector is not None:
        item["Selector"] = selector
    return item


def test_match_uses_aws_selector_field() -> None:
    """Answers carrying AWS's Selector field pair with the selector asked for, even for two labels."""
    found, missing, ambiguous = match_parameters(
        ["/x", "/x:a", "/x:b", "/x:1"],
        [
            answer("/x", 1, "v1", ":b"),
            answer("/x", 3, "v3"),
            answer("/x", 2, "v2", ":a"),
            answer("/x", 1, "v1", ":1"),
        ],
        [],
    )
    assert {s: p.value for s, p in found.items()} == {"/x": "v3", "/x:a": "v2", "/x:b": "v1", "/x:1": "v1"}
    assert (missing, ambiguous) == ([], [])


def test_match_without_selector_field_uses_versions() -> None:
    """Without Selector, ":N" takes version N, the bare name the newest, and a label what is left."""
    found, missing, ambiguous = match_parameters(
        ["/x:live", "/x", "/x:2", "/x:9"],
        [answer("/x", 1, "v1"), answer("/x", 3, "v3"), answer("/x", 2, "v2")],
        ["/x:9"],
    )
    assert {s: p.value for s, p in found.items()} == {"/x:live": "v1", "/x": "v3", "/x:2": "v2"}
    assert (missing, ambiguous) == (["/x:9"], [])


def test_match_reports_labels_it_cannot_tell_apart() -> None:
    """Two labels answered with different versions and no Selector field are returned as ambiguous."""
    found, missing, ambiguous = match_parameters(
        ["/x:a", "/x:b"], [answer("/x", 1, "v1"), answer("/x", 2, "v2")], []
    )
    assert (found, missing, sorted(ambiguous)) == ({}, [], ["/x:a", "/x:b"])


def test_match_refuses_an_answer_that_leaves_a_selector_unaccounted_for() -> None:
    """A selector neither answered nor listed as invalid makes the answer not SSM's, never "missing"."""
    with pytest.raises(NotServiceAnswer, match="/b neither answered nor listed as invalid"):
        match_parameters(["/a", "/b"], [answer("/a", 1, "va")], [])


# ---------------------------------------------------------------------------------------------
# Against moto's server.


def test_values_of_every_type_are_returned_decrypted(admin: Any, clean_moto_url: str) -> None:
    """String, StringList and SecureString come back with their plain values, versions and types."""
    put(admin, "/prod/app/name", "web")
    put(admin, "/prod/app/hosts", "a,b,c", "StringList")
    put(admin, "/prod/app/db", SECRET_VALUE, "SecureString")
    found, missing = make_client(clean_moto_url).fetch(["/prod/app/name", "/prod/app/hosts", "/prod/app/db"])
    assert missing == []
    assert {s: (p.name, p.value, p.version, p.type) for s, p in found.items()} == {
        "/prod/app/name": ("/prod/app/name", "web", 1, "String"),
        "/prod/app/hosts": ("/prod/app/hosts", "a,b,c", 1, "StringList"),
        "/prod/app/db": ("/prod/app/db", SECRET_VALUE, 1, "SecureString"),
    }


def test_25_names_cost_exactly_3_calls(admin: Any, counting_proxy: RecordingProxy) -> None:
    """25 unique selectors (plus repeats) are fetched with ceil(25/10) = 3 GetParameters calls."""
    names = [f"/bulk/p{i:02d}" for i in range(25)]
    for index, name in enumerate(names):
        put(admin, name, f"value-{index}")
    found, missing = make_client(counting_proxy.url).fetch(names + names[:7])
    assert counting_proxy.count("GetParameters") == 3
    assert missing == []
    assert {s: p.value for s, p in found.items()} == {name: f"value-{i}" for i, name in enumerate(names)}


def test_no_selectors_cost_no_call(counting_proxy: RecordingProxy) -> None:
    """An empty request answers at once without calling SSM."""
    assert make_client(counting_proxy.url).fetch([]) == ({}, [])
    assert counting_proxy.actions == []


def test_missing_parameters_are_all_reported_at_once(admin: Any, clean_moto_url: str) -> None:
    """Missing selectors from several batches come back together, next to the ones found."""
    present = [f"/m/p{i:02d}" for i in range(12)]
    for name in present:
        put(admin, name, "x")
    absent = ["/m/none-a", "/m/none-b", "/m/none-c"]
    found, missing = make_client(clean_moto_url).fetch([present[0], absent[0], *present[1:], *absent[1:]])
    assert sorted(missing) == absent
    assert sorted(found) == present


def test_version_and_label_selectors(admin: Any, counting_proxy: RecordingProxy) -> None:
    """ ":N" reads version N, ":label" its version, the bare name the newest; unknown ones are missing."""
    for version in (1, 2, 3):
        put(admin, "/prod/DB", f"db-v{version}", "SecureString", overwrite=version > 1)
    admin.label_parameter_version(Name="/prod/DB", ParameterVersion=1, Labels=["live"])
    selectors = ["/prod/DB", "/prod/DB:2", "/prod/DB:live", "/prod/DB:1", "/prod/DB:9", "/prod/DB:nolabel"]
    found, missing = make_client(counting_proxy.url).fetch(selectors)
    assert {s: (p.name, p.selector, p.value, p.version) for s, p in found.items()} == {
        "/prod/DB": ("/prod/DB", "/prod/DB", "db-v3", 3),
        "/prod/DB:2": ("/prod/DB", "/prod/DB:2", "db-v2", 2),
        "/prod/DB:live": ("/prod/DB", "/prod/DB:live", "db-v1", 1),
        "/prod/DB:1": ("/prod/DB", "/prod/DB:1", "db-v1", 1),
    }
    assert sorted(missing) == ["/prod/DB:9", "/prod/DB:nolabel"]
    assert counting_proxy.count("GetParameters") == 1


def test_secrets_manager_reference_is_resolved(clean_moto_url: str) -> None:
    """A /aws/reference/secretsmanager/ name returns the secret's value through GetParameters."""
    secrets = boto3.client(
        "secretsmanager",
        region_name=REGION,
        endpoint_url=clean_moto_url,
        aws_access_key_id=CREDENTIALS[0],
        aws_secret_access_key=CREDENTIALS[1],
    )
    secrets.create_secret(Name="prod/db-password", SecretString=SECRET_VALUE)
    selector = "/aws/reference/secretsmanager/prod/db-password"
    found, missing = make_client(clean_moto_url).fetch([selector])
    assert missing == []
    assert found[selector].value == SECRET_VALUE
    assert found[selector].type == "SecureString"


def test_missing_secret_reference_is_missing_and_the_rest_still_resolve(
    admin: Any, counting_proxy: RecordingProxy
) -> None:
    """A batch that SSM refuses for one absent secret still resolves its other names."""
    put(admin, "/prod/a", "va")
    put(admin, "/prod/b", "vb")
    absent = "/aws/reference/secretsmanager/nope"
    found, missing = make_client(counting_proxy.url).fetch(["/prod/a", absent, "/prod/b"])
    assert missing == [absent]
    assert {s: p.value for s, p in found.items()} == {"/prod/a": "va", "/prod/b": "vb"}
    assert counting_proxy.count("GetParameters") == 2  # moto names the secret: no need to split further


def test_batch_refused_without_naming_the_culprit_is_split(admin: Any, clean_moto_url: str) -> None:
    """A batch refused with a bare ParameterNotFound (as AWS words it) is retried as the plain names
    together and each secret reference alone, so the missing one is found and the rest resolve."""
    put(admin, "/prod/a", "va")
    put(admin, "/prod/b", "vb")
    absent = "/aws/reference/secretsmanager/nope"
    refused = aws_json_error(
        "ParameterNotFound",
        "An error occurred (ResourceNotFoundException) when referencing Secrets Manager: "
        "Secrets Manager can't find the specified secret.",
    )
    with RecordingProxy(clean_moto_url, fail_first(1, refused)) as proxy:
        found, missing = make_client(proxy.url).fetch(["/prod/a", absent, "/prod/b"])
        assert proxy.count("GetParameters") == 3
    assert missing == [absent]
    assert {s: p.value for s, p in found.items()} == {"/prod/a": "va", "/prod/b": "vb"}


def test_batch_refused_for_a_version_reports_that_selector_missing(admin: Any, clean_moto_url: str) -> None:
    """A whole batch refused with ParameterVersionNotFound marks the named version missing only."""
    put(admin, "/prod/DB", "db-v1")
    put(admin, "/prod/other", "o")
    refused = aws_json_error(
        "ParameterVersionNotFound",
        "Systems Manager could not find version 9 of /prod/DB. Verify the version and try again.",
    )
    with RecordingProxy(clean_moto_url, fail_first(1, refused)) as proxy:
        found, missing = make_client(proxy.url).fetch(["/prod/DB:9", "/prod/DB", "/prod/other"])
        assert proxy.count("GetParameters") == 2
    assert missing == ["/prod/DB:9"]
    assert {s: p.value for s, p in found.items()} == {"/prod/DB": "db-v1", "/prod/other": "o"}


def test_two_labels_on_different_versions_are_resolved_one_by_one(
    admin: Any, counting_proxy: RecordingProxy
) -> None:
    """When answers lack AWS's Selector field, two labels on different versions are asked for alone."""
    for version in (1, 2, 3):
        put(admin, "/prod/DB", f"db-v{version}", overwrite=version > 1)
    admin.label_parameter_version(Name="/prod/DB", ParameterVersion=1, Labels=["old"])
    admin.label_parameter_version(Name="/prod/DB", ParameterVersion=2, Labels=["live"])
    found, missing = make_client(counting_proxy.url).fetch(["/prod/DB:live", "/prod/DB:old", "/prod/DB"])
    assert missing == []
    assert {s: p.value for s, p in found.items()} == {
        "/prod/DB:live": "db-v2",
        "/prod/DB:old": "db-v1",
        "/prod/DB": "db-v3",
    }
    assert counting_proxy.count("GetParameters") == 3


def test_path_listing_follows_pages_recursive_or_not(admin: Any, counting_proxy: RecordingProxy) -> None:
    """GetParametersByPath follows NextToken over 10-item pages; recursive adds nested names."""
    for i in range(14):
        put(admin, f"/app/p{i:02d}", f"v{i}", "SecureString" if i % 2 else "String")
    for i in range(8):
        put(admin, f"/app/sub/q{i}", f"q{i}")
    put(admin, "/other/x", "no")
    client = make_client(counting_proxy.url)

    flat = client.fetch_path("/app/", recursive=False)
    assert sorted(p.name for p in flat) == [f"/app/p{i:02d}" for i in range(14)]
    assert {p.name: p.value for p in flat}["/app/p13"] == "v13"
    flat_calls = counting_proxy.count("GetParametersByPath")
    assert flat_calls >= 2

    deep = client.fetch_path("/app", recursive=True)
    assert len(deep) == 22
    assert {p.name for p in deep} >= {"/app/sub/q0", "/app/p00"}
    assert counting_proxy.count("GetParametersByPath") - flat_calls >= 3
    assert all(p.selector == p.name for p in deep)


def test_unknown_path_is_empty(clean_moto_url: str) -> None:
    """A path with nothing under it is an empty list, not an error."""
    assert make_client(clean_moto_url).fetch_path("/nothing/here", recursive=True) == []


def page(names: list[str], token: Optional[str]) -> CannedResponse:
    body: dict[str, Any] = {
        "Parameters": [{"Name": n, "Type": "String", "Value": n.upper(), "Version": 1} for n in names]
    }
    if token:
        body["NextToken"] = token
    return CannedResponse(200, json.dumps(body).encode(), (("Content-Type", "application/x-amz-json-1.1"),))


def test_empty_page_with_token_does_not_end_the_listing() -> None:
    """An empty page that still carries a NextToken is followed to the real end of the listing."""
    pages = [page([], "t1"), page(["/e/a"], "t2"), page([], "t3"), page(["/e/b"], None)]
    with RecordingProxy(None, lambda index, _action: pages[index]) as proxy:
        parameters = make_client(proxy.url).fetch_path("/e", recursive=False)
    assert [p.value for p in parameters] == ["/E/A", "/E/B"]
    assert proxy.count("GetParametersByPath") == 4


def fail_first(count: int, response: CannedResponse) -> Callable[[int, str], Optional[CannedResponse]]:
    return lambda index, _action: response if index < count else None


THROTTLED = aws_json_error("ThrottlingException", "Rate exceeded")


def test_throttling_is_retried_beyond_three_attempts(admin: Any, clean_moto_url: str) -> None:
    """Six throttled answers in a row are retried until SSM answers, well past botocore's 3 tries."""
    put(admin, "/t/a", "va")
    with RecordingProxy(clean_moto_url, fail_first(6, THROTTLED)) as proxy:
        found, _ = make_client(proxy.url).fetch(["/t/a"])
    assert found["/t/a"].value == "va"
    assert proxy.count("GetParameters") == 7


def test_server_errors_are_retried(admin: Any, clean_moto_url: str) -> None:
    """InternalServerError and a bare 503 are retried like throttling."""
    put(admin, "/t/a", "va")
    failures = [aws_json_error("InternalServerError", "oops", 500), CannedResponse(503, b"<html>busy</html>")]
    with RecordingProxy(clean_moto_url, lambda i, _a: failures[i] if i < 2 else None) as proxy:
        found, _ = make_client(proxy.url).fetch(["/t/a"])
    assert found["/t/a"].value == "va"
    assert proxy.count("GetParameters") == 3


def test_throttling_past_the_deadline_is_service_unavailable() -> None:
    """Endless throttling ends in ServiceUnavailable naming action, last error and endpoint, on time."""
    with RecordingProxy(None, lambda _i, _a: THROTTLED) as proxy:
        # make_client's deadline counts from when the client is ready: one second is several attempts.
        client = make_client(proxy.url, deadline_seconds=1.0)
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable) as raised:
            client.fetch(["/t/a"])
        elapsed = time.monotonic() - started
    message = raised.value.message
    assert "GetParameters" in message
    assert "ThrottlingException" in message
    assert proxy.url in message
    assert proxy.count("GetParameters") > 3
    assert_ended_by(elapsed, 1.0)


def test_botocore_makes_no_retries_of_its_own() -> None:
    """With the deadline already spent, one throttled answer means exactly one request was sent."""
    with RecordingProxy(None, lambda _i, _a: THROTTLED) as proxy:
        with pytest.raises(ServiceUnavailable):
            make_client(proxy.url, deadline_seconds=0.0).fetch(["/t/a"])
        assert proxy.count("GetParameters") == 1


def test_refused_connection_is_retried_until_the_deadline() -> None:
    """A closed port is retried until the deadline, then reported with the endpoint and the error."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.raises(ServiceUnavailable) as raised:
        make_client(endpoint, deadline_seconds=0.3).fetch(["/a"])
    assert endpoint in raised.value.message
    assert "EndpointConnectionError" in raised.value.message


def test_read_timeout_is_retried(admin: Any, clean_moto_url: str) -> None:
    """An answer slower than the read timeout is abandoned and the call retried."""
    put(admin, "/t/a", "va")
    slow = CannedResponse(200, b"{}", delay_seconds=0.6)
    with RecordingProxy(clean_moto_url, fail_first(1, slow)) as proxy:
        found, _ = make_client(proxy.url, read_timeout_seconds=0.2).fetch(["/t/a"])
        assert found["/t/a"].value == "va"
        assert proxy.count("GetParameters") == 2


def test_access_denied_from_ssm(admin: Any, clean_moto_url: str) -> None:
    """A denial of both read actions is not retried and names the parameter, both actions and the role."""

    def deny(_index: int, action: str) -> CannedResponse:
        return aws_json_error("AccessDeniedException", DENIED_ROLE_MESSAGE.replace("GetParameters", action))

    with RecordingProxy(None, deny) as proxy:
        with pytest.raises(AccessDenied) as raised:
            make_client(proxy.url, role="app-role").fetch(["/prod/app/api", "/prod/app/db"])
        assert proxy.actions == ["GetParameters", "GetParameter"]
    assert raised.value.message == (
        "SSM denied both ssm:GetParameters and ssm:GetParameter on /prod/app/api for role app-role: grant "
        "ssm:GetParameters (10 names a call) or ssm:GetParameter on it in the instance profile"
    )
    assert raised.value.__cause__ is None
    assert raised.value.__suppress_context__


def test_kms_denial_names_the_key() -> None:
    """A KMS refusal through SSM names the key and asks for kms:Decrypt."""
    denied = aws_json_error("AccessDeniedException", KMS_DENIED_MESSAGE)
    with RecordingProxy(None, lambda _i, _a: denied) as proxy, pytest.raises(AccessDenied) as raised:
        make_client(proxy.url).fetch(["/prod/app/db"])
    assert proxy.actions == ["GetParameters"]  # a KMS denial is no reason to fall back to GetParameter
    assert KMS_KEY_ARN in raised.value.message
    assert "kms:Decrypt" in raised.value.message


def test_rejected_credentials_are_credentials_error() -> None:
    """UnrecognizedClientException from SSM becomes CredentialsError, without retrying."""
    rejected = aws_json_error("UnrecognizedClientException", "The security token included is invalid.")
    with RecordingProxy(None, lambda _i, _a: rejected) as proxy:
        with pytest.raises(CredentialsError):
            make_client(proxy.url).fetch(["/a"])
        assert proxy.count("GetParameters") == 1


def test_path_denial_names_the_path() -> None:
    """A denied GetParametersByPath names the path it was called on."""
    denied = aws_json_error("AccessDeniedException", "not authorized")
    with RecordingProxy(None, lambda _i, _a: denied) as proxy, pytest.raises(AccessDenied) as raised:
        make_client(proxy.url, role="app-role").fetch_path("/prod/app/", recursive=True)
    assert "ssm:GetParametersByPath on /prod/app/ for role app-role" in raised.value.message


def test_logs_carry_names_and_versions_but_never_values(admin: Any, clean_moto_url: str) -> None:
    """Fetching, retrying and listing log events with names and versions, and no value anywhere."""
    put(admin, "/log/db", SECRET_VALUE, "SecureString")
    with RecordingProxy(clean_moto_url, fail_first(1, THROTTLED)) as proxy:
        client = make_client(proxy.url)
        with structlog.testing.capture_logs() as logs:
            client.fetch(["/log/db", "/log/missing"])
            client.fetch_path("/log", recursive=True)
    events = [entry["event"] for entry in logs]
    assert {"ssm_throttled", "ssm_throttle_passed", "ssm_fetched", "ssm_path_fetched"} <= set(events)
    fetched = next(entry for entry in logs if entry["event"] == "ssm_fetched")
    assert fetched["versions"] == {"/log/db": 1}
    assert fetched["missing"] == ["/log/missing"]
    assert SECRET_VALUE not in repr(logs)


@pytest.mark.parametrize(
    ("code", "message", "expected"),
    [
        ("AccessDeniedException", DENIED_ROLE_MESSAGE, True),
        ("AccessDeniedException", DENIED_ROLE_MESSAGE.replace("GetParameters", "GetParametersByPath"), False),
        ("AccessDeniedException", DENIED_ROLE_MESSAGE.replace("GetParameters", "GetParameter"), False),
        ("AccessDeniedException", KMS_DENIED_MESSAGE, False),
        ("AccessDeniedException", DENIED_ROLE_MESSAGE + " (Service: AWSKMS)", False),
        ("ThrottlingException", DENIED_ROLE_MESSAGE, False),
        ("UnrecognizedClientException", "The security token included is invalid.", False),
        ("AccessDeniedException", "Access denied", False),
    ],
)
def test_only_a_denial_of_get_parameters_itself_falls_back(code: str, message: str, expected: bool) -> None:
    """Only IAM denying ssm:GetParameters by name leads to the GetParameter fallback, no other error."""
    assert denies_action(code, message, "GetParameters") is expected


# ---------------------------------------------------------------------------------------------
# Answers that are not SSM's: never believed, retried like an outage, named at the deadline.


def good(name: str, value: str = "v", version: int = 1, **extra: Any) -> dict[str, Any]:
    return {"Name": name, "Value": value, "Type": "SecureString", "Version": version, **extra}


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        ({}, "/a, /b neither answered nor listed as invalid"),
        ({"ResponseMetadata": {"HTTPStatusCode": 200}}, "neither answered"),
        ({"Parameters": [good("/a")]}, "/b neither answered"),
        ({"Parameters": "nope"}, "Parameters is not a list"),
        ({"Parameters": [good("/a")], "InvalidParameters": "/b"}, "InvalidParameters is not a list"),
        ({"Parameters": [good("/a")], "InvalidParameters": [7]}, "other than names"),
        ({"Parameters": [good("/a")], "InvalidParameters": ["/b", "/c"]}, "not asked for"),
        ({"Parameters": [good("/a"), good("/b"), good("/c")]}, "/c version 1, not asked for"),
        ({"Parameters": [good("/a"), {"Name": "/b", "Type": "String", "Version": 1}]}, "/b has no Value"),
        ({"Parameters": [good("/a"), good("/b", Type="Blob")]}, "/b has no known Type"),
        ({"Parameters": [good("/a"), good("/b", Version="1")]}, "/b has no Version"),
        ({"Parameters": [good("/a"), "x"]}, "not an object"),
        ({"Parameters": [good("/a"), good("/b")], "InvalidParameters": ["/b"]}, "not asked for"),
    ],
)
def test_get_parameters_answers_that_do_not_account_for_every_name_are_refused(
    response: dict[str, Any], reason: str
) -> None:
    """A GetParameters answer must account for every name asked for, well formed, and for nothing else."""
    with pytest.raises(NotServiceAnswer, match=re.escape(reason)):
        check_get_parameters(["/a", "/b"], response)


def test_a_complete_get_parameters_answer_is_believed() -> None:
    """Every name answered or listed as invalid: the answer is believed; only InvalidParameters is missing."""
    found, missing, ambiguous = check_get_parameters(
        ["/a", "/b", "/c:2"],
        {"Parameters": [good("/a", "va"), good("/c", "vc", 2, Selector=":2")], "InvalidParameters": ["/b"]},
    )
    assert {s: p.value for s, p in found.items()} == {"/a": "va", "/c:2": "vc"}
    assert (missing, ambiguous) == (["/b"], [])


@pytest.mark.parametrize(
    ("response", "recursive", "reason"),
    [
        ({}, False, "the answer has no Parameters"),
        ({"Parameters": {}}, False, "Parameters is not a list"),
        ({"Parameters": [good("/other/a")]}, False, "/other/a, which is not under it"),
        ({"Parameters": [good("/p")]}, True, "/p, which is not under it"),
        ({"Parameters": [good("/p/x/y")]}, False, "/p/x/y, which is not under it"),
        ({"Parameters": [good("/p/a")], "NextToken": ""}, False, "NextToken is not a token"),
        ({"Parameters": [good("/p/a")], "NextToken": 5}, False, "NextToken is not a token"),
        ({"Parameters": [good("/p/a", Version=None)]}, False, "/p/a has no Version"),
    ],
)
def test_path_pages_that_are_not_ssms_are_refused(
    response: dict[str, Any], recursive: bool, reason: str
) -> None:
    """A GetParametersByPath page needs a Parameters list of well-formed entries under the path."""
    with pytest.raises(NotServiceAnswer, match=re.escape(reason)):
        check_path_page("/p", recursive=recursive, response=response)


def test_a_recursive_page_may_hold_deeper_names() -> None:
    """Recursive listings hold names at any depth under the path; the token is handed back."""
    parameters, token = check_path_page(
        "/p/", recursive=True, response={"Parameters": [good("/p/a"), good("/p/x/y")], "NextToken": "t"}
    )
    assert ([p.name for p in parameters], token) == (["/p/a", "/p/x/y"], "t")


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        ({}, "the answer has no Parameter"),
        ({"Parameter": good("/other")}, "asked for /x, the answer names another parameter"),
        ({"Parameter": good("/x", Value=None)}, "/x has no Value"),
    ],
)
def test_get_parameter_answers_must_name_the_parameter_asked_for(
    response: dict[str, Any], reason: str
) -> None:
    """A GetParameter answer holds one well-formed parameter, the one asked for."""
    with pytest.raises(NotServiceAnswer, match=re.escape(reason)):
        check_get_parameter("/x:3", response)
    assert check_get_parameter("/x:3", {"Parameter": good("/x", "v3", 3)}).value == "v3"


def json_200(body: bytes) -> CannedResponse:
    return CannedResponse(200, body, (("Content-Type", "application/x-amz-json-1.1"),))


NOT_SSM_ANSWERS = {
    "html page": CannedResponse(
        200, b"<html>blocked: " + SECRET_VALUE.encode() + b"</html>", (("Content-Type", "text/html"),)
    ),
    "html 403": CannedResponse(
        403, b"<html>blocked: " + SECRET_VALUE.encode() + b"</html>", (("Content-Type", "text/html"),)
    ),
    "html 404": CannedResponse(404, b"<html>Not Found</html>", (("Content-Type", "text/html"),)),
    "truncated json": json_200(b'{"Parameters": [{"Name": "/f/a", "Value": "' + SECRET_VALUE.encode()),
    "wrong shape": json_200(b'{"Parameters": "' + SECRET_VALUE.encode() + b'"}'),
    "a name missing": json_200(json.dumps({"Parameters": [good("/f/a", SECRET_VALUE)]}).encode()),
    "empty object": json_200(b"{}"),
}


@pytest.mark.parametrize("kind", sorted(NOT_SSM_ANSWERS))
def test_answers_that_are_not_ssms_are_retried_until_ssm_answers(
    kind: str, admin: Any, counting_proxy: RecordingProxy
) -> None:
    """Three answers that are not SSM's in a row are retried, and SSM's own answer is then used."""
    put(admin, "/f/a", "A")
    put(admin, "/f/b", "B")
    counting_proxy.responder = fail_first(3, NOT_SSM_ANSWERS[kind])
    found, missing = make_client(counting_proxy.url).fetch(["/f/a", "/f/b"])
    assert ({s: p.value for s, p in found.items()}, missing) == ({"/f/a": "A", "/f/b": "B"}, [])
    assert counting_proxy.count("GetParameters") == 4


@pytest.mark.parametrize("kind", sorted(NOT_SSM_ANSWERS))
def test_answers_that_are_never_ssms_end_in_service_unavailable_naming_the_endpoint(kind: str) -> None:
    """Past the deadline: exit 7 naming the endpoint, saying the answer was not SSM's, quoting nothing."""
    with (
        RecordingProxy(None, lambda _index, _action: NOT_SSM_ANSWERS[kind]) as proxy,
        pytest.raises(ServiceUnavailable) as caught,
    ):
        make_client(proxy.url, deadline_seconds=0.3).fetch(["/f/a", "/f/b"])
    message = str(caught.value)
    assert caught.value.exit_code == 7
    assert proxy.url in message
    assert "not SSM's" in message
    assert "AWS_ENDPOINT_URL_SSM" in message
    assert SECRET_VALUE not in message
    assert "<html>" not in message


def test_a_path_token_that_does_not_advance_is_retried_then_named() -> None:
    """A listing whose NextToken repeats is not SSM's answer: retried, then exit 7, never a loop."""
    pages = [page(["/e/a"], "t1"), page(["/e/b"], "t1")]
    with (
        RecordingProxy(None, lambda index, _action: pages[min(index, 1)]) as proxy,
        pytest.raises(ServiceUnavailable, match="the page token did not advance"),
    ):
        # Room for the client's creation and a retry on a loaded machine (see the DescribeParameters case).
        make_client(proxy.url, deadline_seconds=1.5).fetch_path("/e", recursive=False)


def test_a_page_of_names_outside_the_path_is_not_believed() -> None:
    """A page naming parameters outside the path asked for is retried, and the good page then used."""
    pages = [page(["/elsewhere/a"], None), page(["/e/a"], None)]
    with RecordingProxy(None, lambda index, _action: pages[min(index, 1)]) as proxy:
        parameters = make_client(proxy.url).fetch_path("/e", recursive=False)
    assert [p.name for p in parameters] == ["/e/a"]
    assert proxy.count("GetParametersByPath") == 2


# ---------------------------------------------------------------------------------------------
# Throttling is not an outage: a longer budget while SSM answers "slow down", the short one otherwise.


def throttle_for(seconds: float) -> Callable[[int, str], Optional[CannedResponse]]:
    """A responder that throttles every call for `seconds` from its first request, then forwards."""
    first: list[float] = []

    def respond(_index: int, _action: str) -> Optional[CannedResponse]:
        first.append(time.monotonic()) if not first else None
        return THROTTLED if time.monotonic() - first[0] < seconds else None

    return respond


def test_throttled_longer_than_the_short_deadline_still_succeeds(admin: Any, clean_moto_url: str) -> None:
    """Throttled for 1.5 s with a 0.5 s outage deadline and a 10 s throttled budget: the values arrive."""
    put(admin, "/t/a", "va")
    statuses: list[str] = []
    with RecordingProxy(clean_moto_url, throttle_for(1.5)) as proxy:
        client = make_client(
            proxy.url, deadline_seconds=0.5, throttled_seconds=10.0, on_status=statuses.append
        )
        with capture_logs() as logs:
            found, _ = client.fetch(["/t/a"])
    assert found["/t/a"].value == "va"
    waiting = [entry for entry in logs if entry["event"] == "ssm_throttled"]
    # The first throttled answer is reported at once, then at most every 10 s.
    assert len(waiting) == 1
    assert waiting[0]["calls_left"] == 1
    assert "va" not in repr(logs)
    assert statuses[0].startswith("SSM is throttling")
    # While throttled, the agent gives up when the throttled budget ends, not the 0.5 s deadline (the
    # budget counts from before the client was built: a loaded machine has spent a second or two of it).
    giving_up = re.search(r"giving up in (\d+) s$", statuses[0])
    assert giving_up is not None
    assert 5 <= int(giving_up.group(1)) <= 10
    assert statuses[-1] == "SSM let the call through; fetching"
    passed = [entry for entry in logs if entry["event"] == "ssm_throttle_passed"]
    assert passed[0]["throttled_seconds"] >= 1.0  # 1.5 s less the first answer's round trip


def test_throttling_past_its_budget_names_the_budget_and_the_fix() -> None:
    """Throttled past the throttled budget: exit 7 saying the quota is exhausted and how to raise it."""
    with RecordingProxy(None, lambda _i, _a: THROTTLED) as proxy:
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable) as raised:
            make_client(proxy.url, deadline_seconds=0.2, throttled_seconds=0.8).fetch(["/t/a"])
        elapsed = time.monotonic() - started
    assert elapsed > 0.7
    assert_ended_by(elapsed, 0.8)
    assert "0.8 s throttled budget" in raised.value.message
    assert "throttle_deadline_seconds" in raised.value.message
    assert "high-throughput-enabled" in raised.value.message


def test_refused_connection_fails_at_the_short_deadline_whatever_the_throttled_budget() -> None:
    """An outage is not throttling: a closed port fails at the short deadline even with a long budget."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable, match="EndpointConnectionError"):
        make_client(f"http://127.0.0.1:{port}", deadline_seconds=0.3, throttled_seconds=60.0).fetch(["/a"])
    assert_ended_by(time.monotonic() - started, 0.3)


def test_an_outage_after_throttling_counts_from_the_last_answer() -> None:
    """Throttled, then no answer at all: the outage deadline counts from SSM's last answer."""
    answers = [THROTTLED] * 3
    dropped = CannedResponse(200, b"", delay_seconds=5.0)  # never answers within the read timeout
    with RecordingProxy(None, lambda i, _a: answers[i] if i < len(answers) else dropped) as proxy:
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable, match=r"did not answer ssm:GetParameters within the 0\.5 s"):
            make_client(
                proxy.url, deadline_seconds=0.5, throttled_seconds=60.0, read_timeout_seconds=0.2
            ).fetch(["/a"])
    assert_ended_by(time.monotonic() - started, 0.5)


def test_fallback_counts_one_call_a_name_while_throttled(admin: Any, clean_moto_url: str) -> None:
    """Falling back to GetParameter, a throttled agent reports the calls it really has left (one a name)."""
    for name in ("/f/a", "/f/b", "/f/c"):
        put(admin, name, "v")
    throttled: list[str] = []

    def respond(_index: int, action: str) -> Optional[CannedResponse]:
        if action == "GetParameters":
            return aws_json_error("AccessDeniedException", DENIED_ROLE_MESSAGE)
        if action == "GetParameter" and not throttled:
            throttled.append(action)
            return THROTTLED
        return None

    with RecordingProxy(clean_moto_url, respond) as proxy:
        with capture_logs() as logs:
            found, missing = make_client(proxy.url, role="app-role").fetch(["/f/a", "/f/b", "/f/c"])
        assert proxy.actions == [
            "GetParameters",
            "GetParameter",
            "GetParameter",
            "GetParameter",
            "GetParameter",
        ]
    assert sorted(found) == ["/f/a", "/f/b", "/f/c"]
    assert missing == []
    (waiting,) = [entry for entry in logs if entry["event"] == "ssm_throttled"]
    assert waiting["calls_left"] == 3
    assert [entry["event"] for entry in logs].count("ssm_get_parameters_denied") == 1


def test_a_describe_listing_whose_token_does_not_advance_is_retried_then_named() -> None:
    """DescribeParameters pages share the path listing's rule: a repeated token is never the end."""
    body = json.dumps({"Parameters": [{"Name": "/d/a", "Type": "SecureString"}], "NextToken": "t1"})
    repeating = CannedResponse(200, body.encode(), (("Content-Type", "application/x-amz-json-1.1"),))
    with (
        RecordingProxy(None, lambda _index, _action: repeating) as proxy,
        pytest.raises(ServiceUnavailable, match="the page token did not advance"),
    ):
        # make_client's deadline counts from when the client is ready; 1.5 s leaves room for a retry.
        make_client(proxy.url, deadline_seconds=1.5).describe_parameters(
            [{"Key": "Name", "Values": ["/d/a"]}]
        )
    assert proxy.count("DescribeParameters") > 2
