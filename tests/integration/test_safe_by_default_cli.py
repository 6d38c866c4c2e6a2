"""Issue 27 end to end (strict IMDSv2 fake, moto over HTTP): the record root reads is root's alone,
exit codes keep their meaning whatever publishing does, and names computed from a secret stay hidden.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.cli_harness import Stack
from tests.integration.test_refresh import FakeSystemd

SECRET_NAME_PART = "blue-primary-database"


def _records(stack: Stack) -> Path:
    return stack.runtime.with_name(stack.runtime.name + "-state") / "app"


def _render_for_owner(stack: Stack) -> None:
    stack.put("/app/db", "postgres://owner-test")
    stack.template('DB={{ param("/app/db") }}\n')
    (stack.config / "app.toml").write_text('format = "dotenv"\nowner = "nobody"\n')
    code, _out, err = stack.run("render", "app")
    assert code == 0, err


@pytest.mark.skipif(os.geteuid() != 0, reason="owner= needs root to hand the folder to another user")
def test_with_owner_the_record_is_roots_in_a_folder_the_app_cannot_write(stack: Stack) -> None:
    """With owner=, the rendered file and its folder are the app's, but the record of the render sits in
    RUNTIME_DIR-state/NAME, root's 0700 folder, as root's 0600 file: nothing of it in the app's folder."""
    _render_for_owner(stack)
    nobody = pwd.getpwnam("nobody").pw_uid
    assert stack.output.parent.stat().st_uid == nobody
    assert sorted(os.listdir(stack.output.parent)) == ["env"]
    record = _records(stack) / "state.json"
    assert (record.stat().st_uid, record.stat().st_mode & 0o777) == (0, 0o600)
    assert (record.parent.stat().st_uid, record.parent.stat().st_mode & 0o777) == (0, 0o700)
    assert json.loads(record.read_text())["parameters"][0]["name"] == "/app/db"


@pytest.mark.skipif(os.geteuid() != 0, reason="the forged record must belong to another user")
@pytest.mark.parametrize("planted", ["fifo", "app-owned", "symlink"])
def test_a_record_root_did_not_write_is_refused_without_hanging(
    stack: Stack,
    planted: str,
) -> None:
    """A FIFO, a file another user owns or a symlink in the record's place is refused at once: refresh
    exits 10 naming it (no 660 s hang on a FIFO), and status shows no forged version."""
    _render_for_owner(stack)
    record = _records(stack) / "state.json"
    forged = json.loads(record.read_text())
    forged["parameters"][0]["version"] = 999
    record.unlink()
    if planted == "fifo":
        os.mkfifo(record, 0o600)
    elif planted == "app-owned":
        record.write_text(json.dumps(forged))
        os.chown(record, pwd.getpwnam("nobody").pw_uid, -1)
    else:
        elsewhere = stack.runtime / "forged.json"
        elsewhere.write_text(json.dumps(forged))
        record.symlink_to(elsewhere)
    args = ["--config-dir", str(stack.config), "--runtime-dir", str(stack.runtime)]
    env = {**os.environ, **stack.env}
    status = subprocess.run(
        [sys.executable, "-m", "agent", *args, "status", "app", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert "999" not in status.stdout
    assert json.loads(status.stdout)["services"][0]["parameters"] == []
    code, _out, err = stack.run("refresh", "app", systemd=FakeSystemd())
    assert code == 10
    assert str(record) in err


def test_no_credentials_in_the_default_chain_is_exit_6(
    stack: Stack,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Off EC2 (IMDS disabled), a default credential chain whose credential_process fails is exit 6
    with the fix, not 1 (the agent's own bug) nor 2."""
    config = tmp_path / "aws-config"
    config.write_text("[default]\ncredential_process = /bin/false\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "absent"))
    stack.template('DB={{ param("/app/db") }}\n')
    env = {
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_REGION": "eu-west-1",
        "AWS_ENDPOINT_URL_SSM": stack.ssm_url,
    }
    code, _out, err = stack.run("render", "app", env=env)
    assert code == 6, err
    assert "CredentialRetrievalError" in err
    assert "unexpected_error" not in err


def test_publishing_that_fails_never_changes_the_exit_code(
    stack: Stack,
    tmp_path: Path,
) -> None:
    """A render whose metrics cannot be published (the check record is a folder) still exits with the
    render's own code, 0 or 4, with no traceback; publishing logs one warning at most."""
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (stack.config / "agent.toml").write_text(f'metrics_dir = "{metrics}"\n')
    check_record = stack.runtime.with_name(stack.runtime.name + "-state") / "app" / "last-check.json"
    check_record.mkdir(parents=True)
    stack.put("/app/db", "v")
    stack.template('DB={{ param("/app/db") }}\n')
    code, _out, err = stack.run("render", "app")
    assert code == 0, err
    assert "Traceback" not in err
    stack.template('DB={{ param("/app/absent") }}\n')
    code, _out, err = stack.run("render", "app")
    assert code == 4, err
    assert "Traceback" not in err


def test_a_bug_while_publishing_is_one_warning_and_keeps_the_code(
    stack: Stack,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Even a bug in the metrics code (an exception that is no AgentError) is one journal warning: the
    command's exit code stays the render's."""
    from agent.observe import metrics

    def broken(*_args: object, **_kwargs: object) -> str:
        raise RuntimeError("a bug in the metrics code")

    monkeypatch.setattr(metrics, "render_metrics", broken)
    (stack.config / "agent.toml").write_text(f'metrics_dir = "{tmp_path}"\n')
    stack.put("/app/db", "v")
    stack.template('DB={{ param("/app/db") }}\n')
    code, _out, err = stack.run("render", "app")
    assert code == 0, err
    assert "publish_failed" in err
    assert "Traceback" not in err


def test_a_name_computed_from_a_secret_is_hidden_in_the_record_status_and_metrics(
    stack: Stack,
    tmp_path: Path,
) -> None:
    """A parameter name the template computed from a fetched value is redacted in state.json, status,
    check's list and the metrics labels, as in the logs; refresh still sees it change (by rendering again)."""
    (stack.config / "agent.toml").write_text(f'metrics_dir = "{tmp_path}"\n')
    stack.put("/app/which", SECRET_NAME_PART)
    stack.put(f"/app/{SECRET_NAME_PART}", "the-value")
    stack.template('DB={{ param("/app/" ~ param("/app/which")) }}\n')
    code, _out, err = stack.run("render", "app")
    assert code == 0, err
    record = (_records(stack) / "state.json").read_text()
    assert "/app/which" in record  # control: the constant name is kept
    code, status, err = stack.run("status", "app", "--json")
    assert code == 0, err
    code, checked, err = stack.run("check", "app")
    assert code == 0, err
    assert "/app/which" in checked  # control: check lists the parameters
    metrics = (tmp_path / "secrets-agent-app.prom").read_text()
    for written in (record, status, checked, metrics, err):
        assert SECRET_NAME_PART not in written
    assert "[REDACTED]" in record
    assert "[REDACTED]" in status

    systemd = FakeSystemd()

    def refresh() -> tuple[int, str]:
        code, _out, err = stack.run("refresh", "app", systemd=systemd)
        return code, err

    code, err = refresh()
    assert (code, systemd.calls) == (0, []), err
    stack.put(f"/app/{SECRET_NAME_PART}", "the-new-value")
    code, err = refresh()
    assert (code, systemd.calls) == (0, [("try-restart", "app.service")]), err
    assert SECRET_NAME_PART not in err
