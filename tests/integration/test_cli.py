"""The command end to end: strict IMDSv2 fake and moto's server over HTTP on 127.0.0.1."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest
from dotenv import dotenv_values

from agent import __version__
from devtools.systemd_envfile import parse_env
from tests.integration import cli_harness
from tests.integration.cli_harness import Stack
from tests.integration.moto_server import CannedResponse, RecordingProxy, admin_ssm_client, aws_json_error

# The `stack` fixture lives with its harness (tests/integration/cli_harness.py); still importable from here.
stack = cli_harness.stack

HARD_VALUES = {
    "/prod/DATABASE_URL": "postgres://app:p@ss'w\"rd$HOME`id`\\x@db:5432/app?x=1#frag",
    "/prod/JWT_SECRET": "line one\nEVIL=1\r\n\ttabbed  ",
    "/prod/STRIPE_SECRET_KEY": "  sk_live_ünïcødé-🔑 ; # = ",
}


def _read(path: Path) -> str:
    # read_text() would turn a value's CR LF into LF (universal newlines): read the bytes.
    return path.read_bytes().decode("utf-8")


def _hard_template(stack: Stack) -> None:
    for name, value in HARD_VALUES.items():
        stack.put(name, value)
    stack.template(
        "# app\n"
        'DATABASE_URL={{ param("/prod/DATABASE_URL") }}\n'
        'JWT_SECRET={{ param("/prod/JWT_SECRET") }}\n'
        'STRIPE_SECRET_KEY={{ param("/prod/STRIPE_SECRET_KEY") }}\n'
    )


def test_render_writes_exact_values(stack: Stack) -> None:
    """render fetches through IMDSv2 credentials and writes every hard value exactly, 0600 in 0700."""
    _hard_template(stack)
    code, _out, err = stack.run("render", "app")
    assert code == 0, err
    pairs = dict(parse_env(_read(stack.output)))
    assert pairs == {
        "DATABASE_URL": HARD_VALUES["/prod/DATABASE_URL"],
        "JWT_SECRET": HARD_VALUES["/prod/JWT_SECRET"],
        "STRIPE_SECRET_KEY": HARD_VALUES["/prod/STRIPE_SECRET_KEY"],
    }
    assert stack.output.stat().st_mode & 0o777 == 0o600
    assert stack.output.parent.stat().st_mode & 0o777 == 0o700
    assert stack.imds.count(method="PUT") == 1
    assert len(stack.imds.requests) <= 4


def test_region_comes_from_imds_when_not_configured(stack: Stack) -> None:
    """Without AWS_REGION or agent.toml the region is read from IMDS placement/region."""
    stack.put("/p/a", "v")
    stack.template('A={{ param("/p/a") }}\n')
    assert stack.run("render", "app")[0] == 0
    assert stack.imds.count(path_prefix="/latest/meta-data/placement/region") == 1


def test_named_parameters_cost_one_call_per_ten(stack: Stack) -> None:
    """25 named parameters cost exactly 3 GetParameters calls, counted at the server."""
    proxy = RecordingProxy(stack.ssm_url)
    proxy.start()
    try:
        lines = []
        for i in range(25):
            stack.put(f"/many/p{i}", f"value-{i}")
            lines.append(f'P{i}={{{{ param("/many/p{i}") }}}}')
        stack.template("\n".join(lines) + "\n")
        stack.env["AWS_ENDPOINT_URL_SSM"] = proxy.url
        code, _, err = stack.run("render", "app")
    finally:
        proxy.stop()
    assert code == 0, err
    assert proxy.count("GetParameters") == 3
    assert len(parse_env(_read(stack.output))) == 25


def test_paths_versions_and_labels(stack: Stack) -> None:
    """params() reads a path, and name:3 / name:label select versions."""
    stack.put("/prod/app/db-url", "db")
    stack.put("/prod/app/api.key", "key", kind="String")
    for i in range(3):
        stack.put("/prod/rotating", f"v{i + 1}")
    client = admin_ssm_client(stack.ssm_url)
    client.label_parameter_version(Name="/prod/rotating", ParameterVersion=2, Labels=["previous"])
    stack.template(
        '{% for name, value in params("/prod/app/").items() %}{{ name | env_name }}={{ value }}\n{% endfor %}'
        'FIRST={{ param("/prod/rotating:1") }}\n'
        'PREVIOUS={{ param("/prod/rotating:previous") }}\n'
        'LATEST={{ param("/prod/rotating") }}\n'
    )
    code, out, err = stack.run("check", "app")
    assert code == 0, err
    assert "/prod/rotating:previous" in out
    assert "version 2" in out
    assert stack.run("render", "app")[0] == 0
    assert parse_env(_read(stack.output)) == [
        ("API_KEY", "key"),
        ("DB_URL", "db"),
        ("FIRST", "v1"),
        ("PREVIOUS", "v2"),
        ("LATEST", "v3"),
    ]


def test_a_path_ssm_refuses_is_a_template_error_and_keeps_the_old_file(stack: Stack) -> None:
    """SSM's ValidationException for a path (real SSM refuses, moto does not validate: the proxy
    answers as AWS does) exits 3 naming the path, and the previous good file stays whole."""
    stack.put("/p/a", "good value")
    stack.template('A={{ param("/p/a") }}\n')
    assert stack.run("render", "app")[0] == 0
    before = stack.output.read_bytes()
    stack.template(
        'A={{ param("/p/a") }}\n{% for k, v in params("/ssm/x/").items() %}{{ k }}={{ v }}\n{% endfor %}'
    )
    refused = aws_json_error("ValidationException", "Parameter path: can't be prefixed with ssm")

    def refuse_paths(_index: int, action: str) -> Optional[CannedResponse]:
        return refused if action == "GetParametersByPath" else None

    with RecordingProxy(stack.ssm_url, refuse_paths) as proxy:
        stack.env["AWS_ENDPOINT_URL_SSM"] = proxy.url
        code, out, err = stack.run("render", "app")
    assert code == 3
    assert "SSM refused ssm:GetParametersByPath on /ssm/x/ as invalid (ValidationException)" in err
    assert out == ""
    assert stack.output.read_bytes() == before
    assert sorted(path.name for path in stack.output.parent.iterdir()) == ["env"]


def test_check_lists_parameters_and_never_values(stack: Stack) -> None:
    """check prints name, version and type of each parameter, writes nothing, and shows no value."""
    _hard_template(stack)
    code, out, err = stack.run("check", "app")
    assert code == 0, err
    assert "/prod/DATABASE_URL" in out
    assert "SecureString" in out
    assert "version 1" in out
    assert "3 parameters resolved" in out
    for value in HARD_VALUES.values():
        assert value not in out + err
    assert not stack.output.parent.exists()


def test_clean_removes_the_file(stack: Stack) -> None:
    """clean removes the rendered file and its folder; cleaning twice is fine."""
    _hard_template(stack)
    assert stack.run("render", "app")[0] == 0
    assert stack.run("clean", "app")[0] == 0
    assert not stack.output.parent.exists()
    assert stack.run("clean", "app")[0] == 0


@pytest.mark.parametrize("fmt", ["dotenv", "json"])
def test_other_formats(stack: Stack, fmt: str) -> None:
    """format = dotenv and json write files their readers load back exactly."""
    stack.put("/p/a", 'quote " and $dollar and \\ back')
    stack.put("/p/b", "multi\nline")
    stack.template('A={{ param("/p/a") }}\nB={{ param("/p/b") }}\n')
    (stack.config / "app.toml").write_text(f'format = "{fmt}"\n')
    code, _, err = stack.run("render", "app")
    assert code == 0, err
    text = _read(stack.output)
    expected = {"A": 'quote " and $dollar and \\ back', "B": "multi\nline"}
    loaded = json.loads(text) if fmt == "json" else dotenv_values(stream=io.StringIO(text))
    assert loaded == expected


def test_default_credential_chain_skips_imds(stack: Stack) -> None:
    """With AWS credentials in the environment, IMDS is not contacted."""
    stack.put("/p/a", "v")
    stack.template('A={{ param("/p/a") }}\n')
    env = {
        "AWS_ENDPOINT_URL_SSM": stack.ssm_url,
        "AWS_REGION": "eu-west-1",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": stack.env["AWS_EC2_METADATA_SERVICE_ENDPOINT"],
    }
    assert stack.run("render", "app", env=env)[0] == 0
    assert stack.imds.requests == []


# -- bad inputs: message, exit code, and nothing written ------------------------------------------


def _assert_failed(stack: Stack, args: tuple[str, ...], code: int, *messages: str) -> str:
    got, _out, err = stack.run(*args)
    assert got == code, err
    for message in messages:
        assert message in err, err
    assert not stack.output.exists()
    assert not [p for p in stack.runtime.rglob("*") if p.is_file()]
    return err


def test_missing_parameters_are_named_together(stack: Stack) -> None:
    """Every missing parameter is named in one error; exit 4; no file."""
    stack.put("/p/present", "v")
    stack.template(
        'A={{ param("/p/missing1") }}\nB={{ param("/p/present") }}\nC={{ param("/p/missing2") }}\n'
    )
    _assert_failed(stack, ("render", "app"), 4, "/p/missing1", "/p/missing2")


def test_failure_keeps_previous_good_file(stack: Stack) -> None:
    """A failed render keeps the earlier good file intact."""
    stack.put("/p/a", "good")
    stack.template('A={{ param("/p/a") }}\n')
    assert stack.run("render", "app")[0] == 0
    before = stack.output.read_bytes()
    stack.template('A={{ param("/p/a") }}\nB={{ param("/p/gone") }}\n')
    assert stack.run("render", "app")[0] == 4
    assert stack.output.read_bytes() == before
    assert sorted(os.listdir(stack.output.parent)) == ["env"]


@pytest.mark.parametrize(
    ("template", "code", "message"),
    [
        ('A={{ param("/p/a") ', 3, "app.env.j2:1"),
        ('A="{{ param("/p/a") }}"\n', 3, "remove the quotes"),
        ('A={{ param("/p/a") }}\nB={{ nope }}\n', 3, "undefined"),
        ('A={{ param("/p/a") * 40 }}\n', 3, "/p/a"),
    ],
)
def test_template_errors(stack: Stack, template: str, code: int, message: str) -> None:
    """Template mistakes and values systemd cannot carry fail with exit 3 and no file."""
    stack.put("/p/a", "x" * 4000)
    stack.template(template)
    _assert_failed(stack, ("render", "app"), code, message)


def test_missing_template(stack: Stack) -> None:
    """A service without a template is a config error that says where to put it."""
    _assert_failed(stack, ("render", "app"), 2, "app.env.j2", "secrets-agent enable app")


def test_invalid_service_name(stack: Stack) -> None:
    """A name that could escape the runtime folder is refused."""
    _assert_failed(stack, ("render", "../etc"), 2, "invalid service name")


def test_bad_settings_file(stack: Stack) -> None:
    """A typo in <name>.toml is named."""
    stack.template("A=1\n")
    (stack.config / "app.toml").write_text("fromat = 'env'\n")
    _assert_failed(stack, ("render", "app"), 2, "unknown setting fromat")


def test_imds_disabled(stack: Stack) -> None:
    """IMDS answering 403 fails at once with exit 6 and how to fix it."""
    stack.template('A={{ param("/p/a") }}\n')
    stack.imds.disabled = True
    _assert_failed(stack, ("render", "app"), 6, "IMDS is disabled or blocked")


def test_no_role_attached(stack: Stack) -> None:
    """An instance without a role fails with exit 6 and says to attach an instance profile."""
    stack.template('A={{ param("/p/a") }}\n')
    stack.imds.role = None
    _assert_failed(stack, ("render", "app"), 6, "no IAM role is attached to this instance")


def test_imds_down_until_deadline(stack: Stack) -> None:
    """IMDS that never answers fails with exit 7 once deadline_seconds has passed."""
    stack.template('A={{ param("/p/a") }}\n')
    (stack.config / "agent.toml").write_text("deadline_seconds = 1.5\n")
    stack.imds.stop()
    _assert_failed(stack, ("render", "app"), 7, "did not answer")


def test_persistent_runtime_dir_is_refused(stack: Stack, tmp_path: Path) -> None:
    """A runtime folder on persistent disk is refused with exit 8 and nothing is written."""
    stack.put("/p/a", "v")
    stack.template('A={{ param("/p/a") }}\n')
    stack.runtime = tmp_path / "run"
    stack.runtime.mkdir()
    _assert_failed(stack, ("render", "app"), 8, "not on tmpfs")


def test_symlink_planted_at_output_is_refused(stack: Stack, tmp_path: Path) -> None:
    """A symlink planted at the output file is refused with exit 8; its target is untouched."""
    stack.put("/p/a", "v")
    stack.template('A={{ param("/p/a") }}\n')
    (stack.runtime / "app").mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("original")
    stack.output.symlink_to(victim)
    code, _, err = stack.run("render", "app")
    assert code == 8
    assert "not a regular file" in err
    assert victim.read_text() == "original"


def test_version_matches_package() -> None:
    """--version prints the package version."""
    result = subprocess.run(
        [sys.executable, "-m", "agent", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == f"secrets-agent {__version__}"


def test_no_secret_reaches_any_output(stack: Stack) -> None:
    """With debug logs on, no value, token or credential appears in any byte of stdout or stderr."""
    _hard_template(stack)
    stack.put("/prod/extra", "extra-secret-value")
    env = {**os.environ, **stack.env}
    base = [
        sys.executable,
        "-m",
        "agent",
        "-v",
        "--config-dir",
        str(stack.config),
        "--runtime-dir",
        str(stack.runtime),
    ]
    outputs = []
    for args in (["check", "app"], ["render", "app"], ["clean", "app"]):
        result = subprocess.run([*base, *args], env=env, capture_output=True, check=False)
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout + result.stderr)
    # And a failing run whose error message Jinja builds from the value's repr.
    stack.template('A={{ param("/prod/JWT_SECRET") }}\nB={{ {}[param("/prod/extra")] }}\n')
    failed = subprocess.run([*base, "render", "app"], env=env, capture_output=True, check=False)
    assert failed.returncode == 3
    assert b"has no attribute <value of /prod/extra>" in failed.stderr, failed.stderr
    outputs.append(failed.stdout + failed.stderr)
    everything = b"\n".join(outputs)
    secrets = [
        *HARD_VALUES.values(),
        "extra-secret-value",
        stack.imds.secret_access_key,
        stack.imds.session_token,
        *stack.imds.issued_tokens,
    ]
    for secret in secrets:
        for piece in {secret, *secret.split("\n")}:
            if len(piece.strip()) >= 8:
                assert piece.strip().encode() not in everything, piece
    assert b'"event": "rendered"' in everything or b"rendered" in everything


PROXY_PAGE = CannedResponse(
    200, b"<html><body>Blocked by policy</body></html>", (("Content-Type", "text/html"),)
)


def test_a_proxy_page_never_turns_a_secret_into_its_default(stack: Stack) -> None:
    """An endpoint answering 200 with a page: exit 7 naming it, the default never used, the old file kept."""
    stack.put("/prod/real", "the-real-secret")
    stack.template(
        'X={{ param("/prod/real", default="fallback") }}\nY={{ param("/prod/other", default="d") }}\n'
    )
    assert stack.run("render", "app")[0] == 0
    before = _read(stack.output)
    # on_outage = "fail": the render's own behaviour (tests/integration/test_faults.py has "keep"'s).
    (stack.config / "agent.toml").write_text('deadline_seconds = 1\non_outage = "fail"\n')
    with RecordingProxy(stack.ssm_url, lambda _index, _action: PROXY_PAGE) as proxy:
        code, _out, err = stack.run("render", "app", env={**stack.env, "AWS_ENDPOINT_URL_SSM": proxy.url})
    assert code == 7, err
    assert f"SSM at {proxy.url}" in err
    assert "not SSM's" in err
    assert "fallback" not in err
    assert "Blocked by policy" not in err
    assert _read(stack.output) == before
    assert sorted(p.name for p in stack.output.parent.iterdir()) == ["env"]


def test_a_proxy_page_then_ssm_renders_the_real_value(stack: Stack) -> None:
    """After two pages that are not SSM's, SSM's own answer is used: the secret, not its default."""
    stack.put("/prod/real", "the-real-secret")
    stack.template(
        'X={{ param("/prod/real", default="fallback") }}\nY={{ param("/prod/other", default="d") }}\n'
    )
    with RecordingProxy(stack.ssm_url, lambda index, _action: PROXY_PAGE if index < 2 else None) as proxy:
        code, _out, err = stack.run("render", "app", env={**stack.env, "AWS_ENDPOINT_URL_SSM": proxy.url})
    assert code == 0, err
    assert dict(parse_env(_read(stack.output))) == {"X": "the-real-secret", "Y": "d"}
    assert proxy.count("GetParameters") == 3


def test_a_throttled_render_tells_systemd_and_the_journal_that_it_waits(stack: Stack) -> None:
    """Under throttling, STATUS= reaches the notify socket and a waiting line is logged, with no value."""

    stack.put("/prod/real", "the-real-secret")
    stack.template('X={{ param("/prod/real") }}\n')
    throttled = aws_json_error("ThrottlingException", "Rate exceeded")
    notify_path = stack.runtime / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(0)
        with RecordingProxy(stack.ssm_url, lambda index, _action: throttled if index < 2 else None) as proxy:
            env = {**stack.env, "AWS_ENDPOINT_URL_SSM": proxy.url, "NOTIFY_SOCKET": str(notify_path)}
            code, _out, err = stack.run("render", "app", env=env)
        messages = []
        with contextlib.suppress(BlockingIOError):
            while True:
                messages.append(notify.recv(4096).decode())
    assert code == 0, err
    assert messages[0].startswith("STATUS=SSM is throttling (fleet boot?): waiting 0 s so far, 1 call left")
    assert messages[-1] == "STATUS=SSM let the call through; fetching"
    assert "ssm_throttled" in err
    assert "the-real-secret" not in err
    assert "the-real-secret" not in "".join(messages)
