"""`secret()` end to end against moto's Secrets Manager over HTTP (behind a proxy that counts each
action server side), with the strict IMDSv2 fake: values byte for byte in every format, batched
fetches, the fallback without BatchGetSecretValue, missing secrets, stages and rotation checks."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest
from dotenv import dotenv_values

from agent.config import ServiceSettings, load_agent_settings, load_service_settings
from agent.host.state import read_record
from agent.observe.inventory import InventoryRow, render_inventory
from agent.observe.observed import record_versions
from devtools.systemd_envfile import parse_env
from tests.integration.cli_harness import Stack
from tests.integration.iam_world import IamWorld, allow, policy_of, ssm_proxy
from tests.integration.moto_server import CannedResponse, RecordingProxy, admin_client, aws_json_error
from tests.integration.test_refresh import FakeSystemd

REGION = "eu-west-1"
TEXT = "pa$$ \"w'ord` \\n\nline two\r\n \t"
FIELDS = {"username": "app", "password": 'rds-pa$$w"rd\n', "port": 5432}
BINARY = b"\x00\x01binary\xff\xfe\x00\x80 end"
# dotenv has no quoting for a value holding both quote characters and a line break.
DOTENV_TEXT = 'pa$$ "w`ord \\n tab\t end'
UTF8_BINARY = "caf\u00e9 \u2713 text".encode()


def admin_secrets(url: str) -> Any:
    """A plain boto3 Secrets Manager client on moto's server, to create and change secrets."""
    return admin_client("secretsmanager", url, REGION)


@dataclass
class SecretsStack(Stack):
    """The command's stack, with Secrets Manager reached through a proxy that counts each action."""

    proxy: Optional[RecordingProxy] = None

    @property
    def sm(self) -> Any:
        return admin_secrets(self.ssm_url)

    def calls(self, action: str) -> int:
        assert self.proxy is not None
        return self.proxy.count(action)


@pytest.fixture
def sm_stack(stack: Stack) -> Iterator[SecretsStack]:
    """The layer's one stack (tests/integration/cli_harness.py), with Secrets Manager reached at the
    same moto through a proxy that counts each action."""
    with RecordingProxy(stack.ssm_url) as proxy:
        yield SecretsStack(
            ssm_url=stack.ssm_url,
            imds=stack.imds,
            config=stack.config,
            runtime=stack.runtime,
            env={**stack.env, "AWS_ENDPOINT_URL_SECRETS_MANAGER": proxy.url},
            proxy=proxy,
        )


def load_service(stack: Stack) -> ServiceSettings:
    """app's settings as the commands load them."""
    settings = load_agent_settings(stack.env, config_dir=str(stack.config), runtime_dir=str(stack.runtime))
    return load_service_settings(settings, "app")


def _env(stack: Stack) -> dict[str, str]:
    return dict(parse_env(stack.output.read_bytes().decode("utf-8")))


def _put_hard_secrets(stack: SecretsStack) -> None:
    stack.sm.create_secret(Name="prod/text", SecretString=TEXT)
    stack.sm.create_secret(Name="prod/rds", SecretString=json.dumps(FIELDS))
    stack.sm.create_secret(Name="prod/utf8-binary", SecretBinary=UTF8_BINARY)


HARD_TEMPLATE = (
    'TEXT={{ secret("prod/text") }}\n'
    '{% set rds = secret("prod/rds") | from_json %}\n'
    'DB_USER={{ rds["username"] }}\n'
    "DB_PASSWORD={{ rds.password }}\n"
    "DB_PORT={{ rds.port }}\n"
    'UTF8={{ secret("prod/utf8-binary") }}\n'
)
HARD_EXPECTED = {
    "TEXT": TEXT,
    "DB_USER": "app",
    "DB_PASSWORD": FIELDS["password"],
    "DB_PORT": "5432",
    "UTF8": UTF8_BINARY.decode(),
}


def test_string_json_and_utf8_binary_secrets_arrive_exactly_in_env(sm_stack: SecretsStack) -> None:
    """Text, JSON fields and a UTF-8 SecretBinary arrive byte for byte in env, in one batch call."""
    _put_hard_secrets(sm_stack)
    sm_stack.template(HARD_TEMPLATE)

    code, _out, err = sm_stack.run("render", "app")

    assert code == 0, err
    assert _env(sm_stack) == HARD_EXPECTED
    assert sm_stack.calls("BatchGetSecretValue") == 1
    assert sm_stack.calls("GetSecretValue") == 0


def test_secrets_arrive_exactly_in_dotenv(sm_stack: SecretsStack) -> None:
    """The same secrets (text dotenv can quote) read back exactly with python-dotenv."""
    sm_stack.sm.create_secret(Name="prod/text", SecretString=DOTENV_TEXT)
    sm_stack.sm.create_secret(Name="prod/rds", SecretString=json.dumps(FIELDS))
    sm_stack.sm.create_secret(Name="prod/utf8-binary", SecretBinary=UTF8_BINARY)
    (sm_stack.config / "app.toml").write_text('format = "dotenv"\n')
    sm_stack.template(HARD_TEMPLATE)

    code, _out, err = sm_stack.run("render", "app")

    assert code == 0, err
    assert dotenv_values(stream=io.StringIO(sm_stack.output.read_text())) == {
        **HARD_EXPECTED,
        "TEXT": DOTENV_TEXT,
    }


def test_secrets_arrive_exactly_in_json(sm_stack: SecretsStack) -> None:
    """format = "json" carries every secret's exact text as a JSON string."""
    _put_hard_secrets(sm_stack)
    (sm_stack.config / "app.toml").write_text('format = "json"\n')
    sm_stack.template(HARD_TEMPLATE)

    code, _out, err = sm_stack.run("render", "app")

    assert code == 0, err
    assert json.loads(sm_stack.output.read_bytes()) == HARD_EXPECTED


def test_binary_secret_arrives_exactly_in_credentials(sm_stack: SecretsStack) -> None:
    """A SecretBinary that is not text (NUL, invalid UTF-8) is one exact credentials file."""
    _put_hard_secrets(sm_stack)
    sm_stack.sm.create_secret(Name="prod/keystore", SecretBinary=BINARY)
    (sm_stack.config / "app.toml").write_text('format = "credentials"\n')
    sm_stack.template(HARD_TEMPLATE + 'keystore.p12={{ secret("prod/keystore") }}\n')

    code, _out, err = sm_stack.run("render", "app")

    assert code == 0, err
    folder = sm_stack.runtime / "app" / "credentials"
    files = {path.name: path.read_bytes() for path in folder.iterdir()}
    assert files == {**{k: v.encode() for k, v in HARD_EXPECTED.items()}, "keystore.p12": BINARY}


def test_binary_secret_is_refused_by_name_in_env(sm_stack: SecretsStack) -> None:
    """A SecretBinary holding a NUL cannot go into an EnvironmentFile: exit 3 naming the secret, no file."""
    sm_stack.sm.create_secret(Name="prod/keystore", SecretBinary=BINARY)
    sm_stack.template('KEYSTORE={{ secret("prod/keystore") }}\n')

    code, _out, err = sm_stack.run("render", "app")

    assert code == 3, err
    [failed] = [json.loads(line) for line in err.splitlines() if '"render_failed"' in line]
    assert 'secret("prod/keystore")' in failed["error"]
    assert BINARY.decode("latin-1") not in err
    assert not sm_stack.output.exists()


@pytest.mark.parametrize("count", [1, 20, 21, 45])
def test_named_secrets_cost_ceil_n_over_20_batch_calls(sm_stack: SecretsStack, count: int) -> None:
    """N named secrets cost exactly ceil(N/20) BatchGetSecretValue calls, counted at the server."""
    for index in range(count):
        sm_stack.sm.create_secret(Name=f"fleet/s{index:02d}", SecretString=f"value-{index}")
    sm_stack.template("".join(f'S{i:02d}={{{{ secret("fleet/s{i:02d}") }}}}\n' for i in range(count)))

    code, _out, err = sm_stack.run("render", "app")

    assert code == 0, err
    assert _env(sm_stack) == {f"S{i:02d}": f"value-{i}" for i in range(count)}
    assert sm_stack.calls("BatchGetSecretValue") == -(-count // 20)
    assert sm_stack.calls("GetSecretValue") == 0
    batches = sm_stack.proxy.requests("BatchGetSecretValue") if sm_stack.proxy else []
    assert sorted(len(body["SecretIdList"]) for body in batches) == sorted(
        [20] * (count // 20) + ([count % 20] if count % 20 else [])
    )


def test_missing_secrets_exit_4_naming_every_one(sm_stack: SecretsStack) -> None:
    """Two missing secrets (one batched, one by stage) are named in one exit-4 error; nothing is written."""
    sm_stack.sm.create_secret(Name="prod/here", SecretString="x")
    sm_stack.template(
        'A={{ secret("prod/here") }}\nB={{ secret("prod/gone") }}\n'
        'C={{ secret("prod/here", stage="NOPE") }}\n'
    )

    code, _out, err = sm_stack.run("render", "app")

    assert code == 4, err
    [failed] = [json.loads(line) for line in err.splitlines() if '"parameters_missing"' in line]
    assert failed["secrets"] == ['secret("prod/gone")', 'secret("prod/here", stage="NOPE")']
    assert "Secrets Manager has no secrets" in failed["error"]
    assert not sm_stack.output.exists()


def test_default_covers_a_missing_secret(sm_stack: SecretsStack) -> None:
    """default= stands in for a secret that does not exist, as for param()."""
    sm_stack.template('A={{ secret("prod/optional", default="fallback") }}\n')

    code, _out, err = sm_stack.run("render", "app")

    assert code == 0, err
    assert _env(sm_stack) == {"A": "fallback"}


def test_previous_stage_after_a_rotation(sm_stack: SecretsStack) -> None:
    """After PutSecretValue, stage="AWSPREVIOUS" gives the old value, the plain call the new one, and a
    pinned version_id its own."""
    first = sm_stack.sm.create_secret(Name="prod/db", SecretString="old")["VersionId"]
    sm_stack.sm.put_secret_value(SecretId="prod/db", SecretString="new")
    sm_stack.template(
        'NOW={{ secret("prod/db") }}\nBEFORE={{ secret("prod/db", stage="AWSPREVIOUS") }}\n'
        f'PINNED={{{{ secret("prod/db", version_id="{first}") }}}}\n'
    )

    code, _out, err = sm_stack.run("render", "app")

    assert code == 0, err
    assert _env(sm_stack) == {"NOW": "new", "BEFORE": "old", "PINNED": "old"}
    assert sm_stack.calls("BatchGetSecretValue") == 1
    assert sm_stack.calls("GetSecretValue") == 2


def test_secret_by_arn(sm_stack: SecretsStack) -> None:
    """A secret named by its ARN is fetched and checked against the answer's ARN."""
    arn = sm_stack.sm.create_secret(Name="prod/arn", SecretString="by-arn")["ARN"]
    sm_stack.template(f'A={{{{ secret("{arn}") }}}}\n')

    code, _out, err = sm_stack.run("render", "app")

    assert code == 0, err
    assert _env(sm_stack) == {"A": "by-arn"}


@pytest.mark.parametrize(
    ("throttled_answers", "batch_calls", "single_calls"),
    [(1, 2, 0), (None, 2, 5)],
    ids=["throttled-once-stays-batch", "throttled-twice-moves-to-single"],
)
def test_a_throttled_batch_call_is_retried_once_then_moves_to_single_calls(
    sm_stack: SecretsStack, throttled_answers: Optional[int], batch_calls: int, single_calls: int
) -> None:
    """One throttled BatchGetSecretValue answer is waited out and the retried batch call answers (no
    GetSecretValue call); a second moves the fetch to GetSecretValue calls, which succeed."""
    assert sm_stack.proxy is not None
    sm_stack.proxy.responder = lambda _index, action: (
        aws_json_error("ThrottlingException", "Rate exceeded")
        if action == "BatchGetSecretValue"
        and (throttled_answers is None or sm_stack.calls("BatchGetSecretValue") <= throttled_answers)
        else None
    )
    for index in range(5):
        sm_stack.sm.create_secret(Name=f"fleet/t{index}", SecretString=f"v{index}")
    sm_stack.template("".join(f'T{i}={{{{ secret("fleet/t{i}") }}}}\n' for i in range(5)))

    code, _out, err = sm_stack.run("render", "app")

    assert code == 0, err
    assert _env(sm_stack) == {f"T{i}": f"v{i}" for i in range(5)}
    assert sm_stack.calls("BatchGetSecretValue") == batch_calls
    assert sm_stack.calls("GetSecretValue") == single_calls


def _batch_answer_listing(stack: SecretsStack, code: str, *secret_ids: str) -> None:
    """Every BatchGetSecretValue answered with no value and each of `secret_ids` in Errors with `code`;
    other calls reach moto."""
    assert stack.proxy is not None
    errors = [{"SecretId": secret_id, "ErrorCode": code, "Message": "listed"} for secret_id in secret_ids]
    listed = json.dumps({"SecretValues": [], "Errors": errors}).encode()
    stack.proxy.responder = lambda _index, action: (
        CannedResponse(200, listed, (("Content-Type", "application/x-amz-json-1.1"),))
        if action == "BatchGetSecretValue"
        else None
    )


def test_a_transient_error_listed_in_a_batch_answer_is_retried_through_get_secret_value(
    sm_stack: SecretsStack,
) -> None:
    """A BatchGetSecretValue answer listing a secret in Errors with InternalServiceError (a 5xx of that
    secret) is not a refusal: that secret is fetched again with GetSecretValue and the render exits 0."""
    sm_stack.sm.create_secret(Name="prod/flaky", SecretString="flaky-value")
    sm_stack.sm.create_secret(Name="prod/fine", SecretString="fine-value")
    _batch_answer_listing(sm_stack, "InternalServiceError", "prod/flaky", "prod/fine")
    sm_stack.template('A={{ secret("prod/flaky") }}\nB={{ secret("prod/fine") }}\n')

    code, _out, err = sm_stack.run("render", "app")

    assert code == 0, err
    assert _env(sm_stack) == {"A": "flaky-value", "B": "fine-value"}
    assert sm_stack.calls("BatchGetSecretValue") == 1
    assert sm_stack.calls("GetSecretValue") == 2


def test_a_refusal_listed_in_a_batch_answer_is_not_retried(sm_stack: SecretsStack) -> None:
    """Control: the same answer listing AccessDeniedException instead fails with exit 5 naming the
    secret, and asks GetSecretValue nothing."""
    sm_stack.sm.create_secret(Name="prod/denied", SecretString="denied-value")
    _batch_answer_listing(sm_stack, "AccessDeniedException", "prod/denied")
    sm_stack.template('A={{ secret("prod/denied") }}\n')

    code, _out, err = sm_stack.run("render", "app")

    assert code == 5, err
    assert "prod/denied" in err
    assert sm_stack.calls("GetSecretValue") == 0
    assert not sm_stack.output.exists()


def test_an_answer_naming_another_secret_is_not_believed(sm_stack: SecretsStack) -> None:
    """A GetSecretValue answer naming another secret is retried as not Secrets Manager's, then exit 7."""
    sm_stack.sm.create_secret(Name="prod/a", SecretString="a1")
    sm_stack.sm.put_secret_value(SecretId="prod/a", SecretString="a2")
    assert sm_stack.proxy is not None

    def swap(answer: CannedResponse, headers: dict[str, str], body: bytes) -> CannedResponse:
        parsed = json.loads(answer.body)
        if headers.get("X-Amz-Target", "").endswith(".GetSecretValue"):
            parsed["Name"], parsed["ARN"] = "prod/b", parsed["ARN"].replace("prod/a", "prod/b")
        return CannedResponse(status=answer.status, body=json.dumps(parsed).encode(), headers=answer.headers)

    sm_stack.proxy.rewrite = swap
    (sm_stack.config / "agent.toml").write_text("deadline_seconds = 1\n")
    sm_stack.template('A={{ secret("prod/a", stage="AWSPREVIOUS") }}\n')

    code, _out, err = sm_stack.run("render", "app")

    assert code == 7, err
    assert "names another secret" in err
    assert "a1" not in err
    assert not sm_stack.output.exists()


# -- IAM: moto's enforcement ------------------------------------------------------------------


@pytest.fixture
def iam_stack(
    iam: IamWorld, tmp_path: Path, tmpfs_path: Path
) -> Iterator[tuple[IamWorld, Path, RecordingProxy]]:
    config = tmp_path / "etc"
    config.mkdir()
    with ssm_proxy(iam.url) as proxy:
        yield iam, config, proxy


def _run_as(
    world: IamWorld, config: Path, runtime: Path, proxy: RecordingProxy, actions: list[str]
) -> tuple[int, str, str]:
    keys = world.role("app-role", policy_of(allow(*actions)))
    imds = world.imds("app-role", keys)
    url = imds.start()
    try:
        stack = Stack(
            ssm_url=world.url,
            imds=imds,
            config=config,
            runtime=runtime,
            env={
                "AWS_EC2_METADATA_SERVICE_ENDPOINT": url,
                "AWS_ENDPOINT_URL_SSM": world.url,
                "AWS_ENDPOINT_URL_SECRETS_MANAGER": proxy.url,
            },
        )
        return stack.run("render", "app")
    finally:
        imds.stop()


def test_role_without_batch_permission_falls_back_to_single_calls(
    iam_stack: tuple[IamWorld, Path, RecordingProxy], tmpfs_path: Path
) -> None:
    """With only secretsmanager:GetSecretValue, the denied batch call falls back (one warning) and works."""
    world, config, proxy = iam_stack
    for index in range(3):
        world.client("secretsmanager").create_secret(Name=f"iam/s{index}", SecretString=f"v{index}")
    (config / "app.env.j2").write_text("".join(f'S{i}={{{{ secret("iam/s{i}") }}}}\n' for i in range(3)))

    code, _out, err = _run_as(world, config, tmpfs_path, proxy, ["secretsmanager:GetSecretValue"])

    assert code == 0, err
    assert dict(parse_env((tmpfs_path / "app" / "env").read_text())) == {f"S{i}": f"v{i}" for i in range(3)}
    assert proxy.count("BatchGetSecretValue") == 1
    assert proxy.count("GetSecretValue") == 3
    assert err.count("secretsmanager_batch_denied") == 1


def test_role_without_any_secret_permission_is_exit_5(
    iam_stack: tuple[IamWorld, Path, RecordingProxy], tmpfs_path: Path
) -> None:
    """Control: with neither action allowed the render fails with exit 5 naming the secret and the action."""
    world, config, proxy = iam_stack
    world.client("secretsmanager").create_secret(Name="iam/denied", SecretString="v")
    (config / "app.env.j2").write_text('S={{ secret("iam/denied") }}\n')

    code, _out, err = _run_as(world, config, tmpfs_path, proxy, ["ssm:GetParameters"])

    assert code == 5, err
    assert "secretsmanager:GetSecretValue" in err
    assert "iam/denied" in err
    assert not (tmpfs_path / "app" / "env").exists()


# -- rotation checks: DescribeSecret, never a value -----------------------------------------------


def _refresh(stack: SecretsStack, systemd: FakeSystemd) -> tuple[int, str]:
    code, _out, err = stack.run("refresh", "app", systemd=systemd)
    return code, err


def _value_calls(stack: SecretsStack) -> int:
    return stack.calls("GetSecretValue") + stack.calls("BatchGetSecretValue")


def test_refresh_with_nothing_changed_makes_no_value_call(sm_stack: SecretsStack) -> None:
    """A check with nothing changed asks DescribeSecret once per secret and never a value (counted)."""
    first = sm_stack.sm.create_secret(Name="prod/db", SecretString="one")["VersionId"]
    sm_stack.sm.put_secret_value(SecretId="prod/db", SecretString="two")
    sm_stack.template(
        'DB={{ secret("prod/db") }}\nOLD={{ secret("prod/db", stage="AWSPREVIOUS") }}\n'
        f'PIN={{{{ secret("prod/db", version_id="{first}") }}}}\n'
        'OPT={{ secret("prod/optional", default="none") }}\n'
    )
    assert sm_stack.run("render", "app")[0] == 0
    before = _value_calls(sm_stack)
    assert before == 3  # control: the proxy sees value calls (one batch, two by stage or version)
    systemd = FakeSystemd()

    code, err = _refresh(sm_stack, systemd)

    assert code == 0, err
    assert "refresh_unchanged" in err
    assert _value_calls(sm_stack) == before
    # prod/db once (its two stages from one description), prod/optional once; the pinned version never.
    assert sm_stack.calls("DescribeSecret") == 2
    assert systemd.calls == []


def test_refresh_restarts_the_app_after_put_secret_value(sm_stack: SecretsStack) -> None:
    """A new AWSCURRENT is a change: the new set is rendered (checked) first, then the app restarted."""
    sm_stack.sm.create_secret(Name="prod/db", SecretString="one")
    sm_stack.template('DB={{ secret("prod/db") }}\n')
    assert sm_stack.run("render", "app")[0] == 0
    sm_stack.sm.put_secret_value(SecretId="prod/db", SecretString="two")
    systemd = FakeSystemd()

    code, err = _refresh(sm_stack, systemd)

    assert code == 0, err
    assert "refresh_changed" in err
    assert systemd.calls == [("try-restart", "app.service")]


def test_refresh_holds_when_the_changed_secret_does_not_render(sm_stack: SecretsStack) -> None:
    """A new AWSCURRENT that is not JSON where the template reads a field: nothing restarted, exit 3."""
    sm_stack.sm.create_secret(Name="prod/rds", SecretString=json.dumps(FIELDS))
    sm_stack.template('{% set rds = secret("prod/rds") | from_json %}\nPW={{ rds.password }}\n')
    assert sm_stack.run("render", "app")[0] == 0
    sm_stack.sm.put_secret_value(SecretId="prod/rds", SecretString="not json")
    systemd = FakeSystemd()

    code, err = _refresh(sm_stack, systemd)

    assert code == 3, err
    assert systemd.calls == []
    assert _env(sm_stack) == {"PW": FIELDS["password"]}


# -- what operators see: status, metrics, inventory ----------------------------------------------


def test_status_metrics_and_inventory_show_version_id_and_stage_never_a_value(
    sm_stack: SecretsStack, tmp_path: Path
) -> None:
    """After a render, status --json, the metrics file and the inventory file name each secret with its
    version id and stage, and hold no value."""
    folder = tmp_path / "node-exporter"
    folder.mkdir()
    (sm_stack.config / "agent.toml").write_text(f'metrics_dir = "{folder}"\n')
    old = sm_stack.sm.create_secret(Name="prod/db", SecretString="value-one-never-shown")["VersionId"]
    new = sm_stack.sm.put_secret_value(SecretId="prod/db", SecretString="value-two-never-shown")["VersionId"]
    sm_stack.template('DB={{ secret("prod/db") }}\nOLD={{ secret("prod/db", stage="AWSPREVIOUS") }}\n')
    code, _out, err = sm_stack.run("render", "app")
    assert code == 0, err

    code, out, err = sm_stack.run("status", "app", "--json")
    assert code == 0, err
    (service,) = json.loads(out)["services"]
    assert {p["selector"]: (p["name"], p["version"]) for p in service["parameters"]} == {
        "secretsmanager:prod/db|stage=AWSCURRENT": ("prod/db", new),
        "secretsmanager:prod/db|stage=AWSPREVIOUS": ("prod/db", old),
    }
    metrics = (folder / "secrets-agent-app.prom").read_text()
    series = [line for line in metrics.splitlines() if line.startswith("secrets_agent_secret_version_info")]
    assert any(f'version_id="{new}"' in line and 'stage="AWSCURRENT"' in line for line in series)
    assert any(f'version_id="{old}"' in line and 'stage="AWSPREVIOUS"' in line for line in series)
    inventory = render_inventory(
        [
            InventoryRow("app", name, selector, str(version), None)
            for selector, name, version in record_versions(read_record(load_service(sm_stack)))
        ]
    )
    items = json.loads(inventory)["Content"]
    assert {(item["Selector"], item["Version"]) for item in items} == {
        ("secretsmanager:prod/db|stage=AWSCURRENT", new),
        ("secretsmanager:prod/db|stage=AWSPREVIOUS", old),
    }
    for text in (out, err, metrics, inventory.decode()):
        assert "never-shown" not in text


def test_check_lists_each_secret_with_stage_and_version_never_a_value(sm_stack: SecretsStack) -> None:
    """`check` prints every secret with its stage, version id and kind, and writes nothing."""
    version = sm_stack.sm.create_secret(Name="prod/db", SecretString="check-never-shows-this")["VersionId"]
    sm_stack.template('DB={{ secret("prod/db") }}\n')

    code, out, err = sm_stack.run("check", "app")

    assert code == 0, err
    assert f"secret prod/db  stage AWSCURRENT, version {version}  SecretString" in out
    assert "1 parameters" not in out
    assert "0 parameters and 1 secrets resolved" in out
    assert "check-never-shows-this" not in out + err
    assert not sm_stack.output.exists()


@pytest.mark.parametrize(
    "expression",
    ['secret("prod/named")', '(secret("prod/fields") | from_json).password'],
    ids=["value", "json-field"],
)
def test_a_secret_value_a_message_would_quote_is_redacted_in_every_form(
    sm_stack: SecretsStack, expression: str
) -> None:
    """A parameter name computed from a secret's value (or a JSON field of it) that fails: the error
    names it as [REDACTED], never the value raw or JSON-escaped."""
    value = 'pa"ss\\w\u00f6rd-7781'
    sm_stack.sm.create_secret(Name="prod/named", SecretString=value)
    sm_stack.sm.create_secret(Name="prod/fields", SecretString=json.dumps({"password": value}))
    sm_stack.template(f'A={{{{ param("/app/" ~ {expression}) }}}}\n')

    code, out, err = sm_stack.run("render", "app")

    assert code in (3, 4), err
    assert "[REDACTED]" in err
    for form in (value, json.dumps(value)[1:-1], repr(value)[1:-1]):
        assert form not in err + out
    assert not sm_stack.output.exists()
