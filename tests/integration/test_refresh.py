"""`secrets-agent refresh` end to end against moto's server through a recording proxy: what a check
asks SSM (versions only, WithDecryption=false), what it detects, and what it does on a change."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest

from devtools.systemd_envfile import parse_env
from tests.integration.cli_harness import Stack
from tests.integration.iam_world import IamWorld, allow, policy_of
from tests.integration.moto_server import CannedResponse, RecordingProxy, admin_ssm_client, aws_json_error
from tests.integration.test_iam import role_stack

MARK = "r0tat3d-v4lue-"


def record_path(stack: Stack) -> Path:
    """Where app's record is: RUNTIME_DIR-state/app/state.json, root's folder beside the runtime one."""
    return stack.runtime.with_name(stack.runtime.name + "-state") / "app" / "state.json"


@dataclass
class FakeSystemd:
    """Stands in for systemctl: which apps run, and every action refresh asked for."""

    active: list[str] = field(default_factory=lambda: ["app.service"])
    calls: list[tuple[str, str]] = field(default_factory=list)
    asked: int = 0

    def active_apps(self, name: str) -> list[str]:
        self.asked += 1
        return list(self.active)

    def try_restart(self, unit: str) -> None:
        self.calls.append(("try-restart", unit))

    def try_reload_or_restart(self, unit: str) -> None:
        self.calls.append(("try-reload-or-restart", unit))


@dataclass
class Rotation:
    """A stack whose SSM endpoint is a recording proxy in front of moto, and a fake systemd."""

    stack: Stack
    proxy: RecordingProxy
    systemd: FakeSystemd

    def refresh(self) -> tuple[int, str]:
        code, _out, err = self.stack.run("--log-format", "json", "refresh", "app", systemd=self.systemd)
        return code, err

    def render(self) -> None:
        code, _out, err = self.stack.run("render", "app")
        assert code == 0, err

    def render_db(self) -> None:
        """Render a template of one parameter, /app/db, at version 1."""
        self.stack.put("/app/db", f"{MARK}old")
        self.stack.template('DB={{ param("/app/db") }}\n')
        self.render()

    def settings(self, text: str) -> None:
        (self.stack.config / "app.toml").write_text(text)

    def since(self, start: int) -> list[tuple[str, dict[str, object]]]:
        """Every request the proxy received from the `start`th on, with its body."""
        pairs = list(zip(self.proxy.actions, self.proxy.bodies))[start:]
        return [(action, json.loads(body)) for action, body in pairs]

    def env_file(self) -> dict[str, str]:
        return dict(parse_env(self.stack.output.read_bytes().decode()))


@pytest.fixture
def rotation(stack: Stack) -> Iterator[Rotation]:
    """The CLI on moto through a recording proxy, with a fake systemd where app.service runs."""
    with RecordingProxy(stack.ssm_url) as proxy:
        stack.env["AWS_ENDPOINT_URL_SSM"] = proxy.url
        yield Rotation(stack=stack, proxy=proxy, systemd=FakeSystemd())


def _events(stderr: str, event: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == event]


@pytest.mark.parametrize("count", [1, 10, 23])
def test_five_unchanged_checks_cost_ceil_n_over_10_calls_without_decryption(
    rotation: Rotation, count: int
) -> None:
    """With nothing changed each check makes ceil(N/10) GetParameters with WithDecryption=false and
    nothing else, and asks systemd for no action."""
    names = [f"/app/p{i:02d}" for i in range(count)]
    for name in names:
        rotation.stack.put(name, f"{MARK}{name}")
    rotation.stack.template("".join(f'P{i}={{{{ param("{n}") }}}}\n' for i, n in enumerate(names)))
    rotation.render()

    for _ in range(5):
        start = len(rotation.proxy.actions)
        code, err = rotation.refresh()
        assert code == 0, err
        requests = rotation.since(start)
        assert [action for action, _ in requests] == ["GetParameters"] * math.ceil(count / 10)
        assert all(body["WithDecryption"] is False for _, body in requests)
        assert sorted(n for _, body in requests for n in body["Names"]) == names  # type: ignore[attr-defined]
        assert len(_events(err, "refresh_unchanged")) == 1
    assert rotation.systemd.calls == []


def test_a_new_version_restarts_the_app_and_logs_versions_never_values(rotation: Rotation) -> None:
    """A parameter overwritten in SSM is a change: refresh asks systemd to try-restart the app and
    logs names with old and new versions, never a value."""
    rotation.stack.put("/app/db", f"{MARK}old")
    rotation.stack.put("/app/key", f"{MARK}key")
    rotation.stack.template('DB={{ param("/app/db") }}\nKEY={{ param("/app/key") }}\n')
    rotation.render()
    rotation.stack.put("/app/db", f"{MARK}new")

    code, err = rotation.refresh()

    assert code == 0, err
    assert rotation.systemd.calls == [("try-restart", "app.service")]
    (changed,) = _events(err, "refresh_changed")
    assert changed["changes"] == [{"name": "/app/db", "old_version": 1, "new_version": 2}]
    assert MARK not in err


def test_the_record_holds_names_and_versions_never_values(rotation: Rotation) -> None:
    """state.json, root's 0600 file in root's 0700 folder beside the runtime folder, names selectors,
    versions and path listings only."""
    rotation.stack.put("/app/db", f"{MARK}db")
    rotation.stack.put("/app/dir/a", f"{MARK}a")
    rotation.stack.template(
        'DB={{ param("/app/db") }}\nOPT={{ param("/app/opt", default="x") }}\n'
        '{% for n, v in params("/app/dir/").items() %}{{ n | env_name }}={{ v }}\n{% endfor %}'
    )
    rotation.render()

    state = record_path(rotation.stack)
    assert state.stat().st_mode & 0o777 == 0o600
    assert (state.parent.stat().st_uid, state.parent.stat().st_mode & 0o777) == (os.geteuid(), 0o700)
    text = state.read_text()
    assert MARK not in text
    document = json.loads(text)
    assert document["parameters"] == [{"selector": "/app/db", "name": "/app/db", "version": 1}]
    assert document["missing"] == ["/app/opt"]
    assert document["paths"] == [{"path": "/app/dir/", "recursive": False, "versions": {"/app/dir/a": 1}}]


def test_a_moved_label_is_a_change_and_a_fixed_version_is_never_asked(rotation: Rotation) -> None:
    """ "/x:live" whose label moves to another version is a change; "/y:1" is not even asked for."""
    ssm = admin_ssm_client(rotation.stack.ssm_url)
    for value in ("one", "two"):
        rotation.stack.put("/app/x", f"{MARK}{value}")
        rotation.stack.put("/app/y", f"{MARK}{value}")
    ssm.label_parameter_version(Name="/app/x", ParameterVersion=1, Labels=["live"])
    rotation.stack.template('X={{ param("/app/x:live") }}\nY={{ param("/app/y:1") }}\n')
    rotation.render()
    start = len(rotation.proxy.actions)

    code, err = rotation.refresh()
    assert code == 0, err
    assert [body["Names"] for _, body in rotation.since(start)] == [["/app/x:live"]]
    assert _events(err, "refresh_unchanged")

    ssm.label_parameter_version(Name="/app/x", ParameterVersion=2, Labels=["live"])
    code, err = rotation.refresh()
    assert code == 0, err
    (changed,) = _events(err, "refresh_changed")
    assert changed["changes"] == [{"name": "/app/x:live", "old_version": 1, "new_version": 2}]


def test_a_parameter_added_or_removed_under_a_path_is_a_change(rotation: Rotation) -> None:
    """params() paths are listed with GetParametersByPath WithDecryption=false: a newcomer and a
    deletion under the path are each a change."""
    rotation.stack.put("/app/dir/a", f"{MARK}a")
    rotation.stack.template(
        '{% for n, v in params("/app/dir/").items() %}{{ n | env_name }}={{ v }}\n{% endfor %}'
    )
    rotation.settings('on_change = "none"\n')
    rotation.render()
    start = len(rotation.proxy.actions)
    assert rotation.refresh()[0] == 0
    assert [(a, b["WithDecryption"]) for a, b in rotation.since(start)] == [("GetParametersByPath", False)]

    rotation.stack.put("/app/dir/b", f"{MARK}b")
    code, err = rotation.refresh()
    assert code == 0, err
    (added,) = _events(err, "refresh_changed")
    assert added["changes"] == [
        {"name": "/app/dir/b", "old_version": None, "new_version": 1, "under": "/app/dir/"}
    ]

    rotation.render()
    admin_ssm_client(rotation.stack.ssm_url).delete_parameter(Name="/app/dir/a")
    code, err = rotation.refresh()
    assert code == 0, err
    (removed,) = _events(err, "refresh_changed")
    assert removed["changes"] == [
        {"name": "/app/dir/a", "old_version": 1, "new_version": None, "under": "/app/dir/"}
    ]


def test_a_parameter_that_appears_where_a_default_was_used_is_a_change(rotation: Rotation) -> None:
    """A parameter missing at render time (its default= used) that now exists is a change."""
    rotation.stack.template('OPT={{ param("/app/opt", default="fallback") }}\n')
    rotation.render()
    assert rotation.refresh()[0] == 0
    assert rotation.systemd.calls == []
    rotation.stack.put("/app/opt", f"{MARK}opt")

    code, err = rotation.refresh()

    assert code == 0, err
    assert rotation.systemd.calls == [("try-restart", "app.service")]


@pytest.mark.parametrize(
    ("action", "calls"),
    [("render", []), ("reload", [("try-reload-or-restart", "app.service")]), ("none", [])],
)
def test_on_change_render_reload_and_none(
    rotation: Rotation, action: str, calls: list[tuple[str, str]]
) -> None:
    """render writes the new value and touches nothing else; reload also asks systemd to reload;
    none leaves the file as it was and only logs."""
    rotation.settings(f'format = "dotenv"\non_change = "{action}"\n')
    rotation.render_db()
    rotation.stack.put("/app/db", f"{MARK}new")

    code, err = rotation.refresh()

    assert code == 0, err
    assert rotation.systemd.calls == calls
    assert _events(err, "refresh_changed")
    expected = f"{MARK}old" if action == "none" else f"{MARK}new"
    assert rotation.env_file() == {"DB": expected}
    if action != "none":
        # The record follows the file, so the next check sees nothing new.
        assert rotation.refresh()[0] == 0
        assert rotation.systemd.calls == calls


def test_a_failed_re_render_keeps_the_old_file_and_touches_no_app(rotation: Rotation) -> None:
    """on_change = "reload": a parameter deleted in SSM fails the re-render (exit 4), the old file
    stays and systemd is asked for nothing."""
    rotation.settings('format = "dotenv"\non_change = "reload"\n')
    rotation.render_db()
    admin_ssm_client(rotation.stack.ssm_url).delete_parameter(Name="/app/db")

    code, err = rotation.refresh()

    assert code == 4
    assert "/app/db" in err
    assert rotation.systemd.calls == []
    assert rotation.env_file() == {"DB": f"{MARK}old"}


def test_ssm_down_fails_the_check_and_the_next_one_acts(rotation: Rotation) -> None:
    """SSM failing until the deadline: exit 7, refresh_failed names the cause, no action; once SSM is
    back the next check detects the change as usual."""
    rotation.settings("deadline_seconds = 1\n")
    rotation.render_db()
    rotation.stack.put("/app/db", f"{MARK}new")
    down: Optional[CannedResponse] = aws_json_error("ServiceUnavailable", "Service Unavailable", 503)
    rotation.proxy.responder = lambda _index, _action: down

    code, err = rotation.refresh()

    assert code == 7
    (failed,) = _events(err, "refresh_failed")
    assert "ssm:GetParameters" in str(failed["error"])
    assert "1 s deadline" in str(failed["error"])
    assert rotation.systemd.calls == []
    assert rotation.env_file() == {"DB": f"{MARK}old"}

    down = None
    code, err = rotation.refresh()
    assert code == 0, err
    assert rotation.systemd.calls == [("try-restart", "app.service")]


def test_an_app_that_does_not_run_costs_no_call_at_all(rotation: Rotation) -> None:
    """When the app does not run, refresh asks neither IMDS nor SSM anything and exits 0."""
    rotation.render_db()
    rotation.stack.put("/app/db", f"{MARK}new")
    rotation.systemd.active = []
    ssm_before, imds_before = len(rotation.proxy.actions), len(rotation.stack.imds.requests)

    code, err = rotation.refresh()

    assert code == 0, err
    assert rotation.systemd.asked == 1
    assert len(rotation.proxy.actions) == ssm_before
    assert len(rotation.stack.imds.requests) == imds_before
    assert _events(err, "refresh_skipped")
    assert rotation.systemd.calls == []


def test_without_a_record_refresh_fails_and_says_how_to_get_one(rotation: Rotation) -> None:
    """An app running without state.json (started by an older agent): exit 10 with the fix, no call."""
    rotation.render_db()
    (record_path(rotation.stack)).unlink()
    before = len(rotation.proxy.actions)

    code, err = rotation.refresh()

    assert code == 10
    assert "start or restart it once (`systemctl restart app.service`" in err
    assert len(rotation.proxy.actions) == before


@pytest.mark.parametrize(("on_outage", "left"), [("fail", None), ("keep", ["set.json"])])
def test_clean_removes_the_record_with_the_file(rotation: Rotation, on_outage: str, left: Any) -> None:
    """clean removes state.json along with env, and both folders with them; only the kept set of
    on_outage = "keep" stays in the records folder, for a restart during an outage (systemd removes
    the folder at a stop)."""
    rotation.settings(f'on_outage = "{on_outage}"\n')
    rotation.render_db()
    assert record_path(rotation.stack).exists()
    assert rotation.stack.run("clean", "app")[0] == 0
    assert not Path(rotation.stack.output.parent).exists()
    folder = record_path(rotation.stack).parent
    assert (sorted(p.name for p in folder.iterdir()) if folder.exists() else None) == left


def test_a_rotated_secrets_manager_secret_is_detected_by_its_awscurrent_version(rotation: Rotation) -> None:
    """A Secrets Manager reference is asked in a call of its own with WithDecryption=true (SSM refuses
    it otherwise) and a new AWSCURRENT version is a change; the plain parameter still goes without."""
    import boto3

    secrets = boto3.client(
        "secretsmanager",
        region_name="eu-west-1",
        endpoint_url=rotation.stack.ssm_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    secrets.create_secret(Name="prod/db", SecretString=f"{MARK}sm-old")
    rotation.stack.put("/app/plain", f"{MARK}plain")
    reference = "/aws/reference/secretsmanager/prod/db"
    rotation.stack.template(f'DB={{{{ param("{reference}") }}}}\nPLAIN={{{{ param("/app/plain") }}}}\n')
    rotation.render()
    start = len(rotation.proxy.actions)

    code, err = rotation.refresh()
    assert code == 0, err
    asked = sorted((body["Names"], body["WithDecryption"]) for _, body in rotation.since(start))
    assert asked == [(["/app/plain"], False), ([reference], True)]
    assert _events(err, "refresh_unchanged")

    secrets.put_secret_value(SecretId="prod/db", SecretString=f"{MARK}sm-new")
    code, err = rotation.refresh()
    assert code == 0, err
    (changed,) = _events(err, "refresh_changed")
    (change,) = changed["changes"]  # type: ignore[misc]
    assert change["name"] == reference
    assert change["old_version"] != change["new_version"]
    assert isinstance(change["new_version"], str)
    assert MARK not in err
    assert rotation.systemd.calls == [("try-restart", "app.service")]


def test_a_check_needs_only_get_parameters_and_by_path_under_real_iam(
    iam: IamWorld, tmp_path: Path, tmpfs_path: Path
) -> None:
    """Under moto's IAM enforcement, a role allowed ssm:GetParameters and ssm:GetParametersByPath and
    nothing else checks a named parameter and a path without decryption, and sees a change."""
    iam.put("/prod/app/db", "first")
    iam.put("/prod/app/dir/a", "a")
    policy = policy_of(allow("ssm:GetParameters", "ssm:GetParametersByPath"))
    with role_stack(iam, tmp_path, tmpfs_path, policy) as (role_stack_, proxy):
        role_stack_.template(
            'DB={{ param("/prod/app/db") }}\n'
            '{% for n, v in params("/prod/app/dir/").items() %}{{ n | env_name }}={{ v }}\n{% endfor %}'
        )
        assert role_stack_.run("render", "app")[0] == 0
        checking = Rotation(stack=role_stack_, proxy=proxy, systemd=FakeSystemd())
        start = len(proxy.actions)

        code, err = checking.refresh()
        assert code == 0, err
        assert _events(err, "refresh_unchanged")
        asked = [(action, body["WithDecryption"]) for action, body in checking.since(start)]
        assert asked == [("GetParameters", False), ("GetParametersByPath", False)]

        iam.put("/prod/app/db", "second")
        code, err = checking.refresh()
        assert code == 0, err
        assert checking.systemd.calls == [("try-restart", "app.service")]

    # The same check under a role without ssm:GetParametersByPath is refused: the enforcement is real.
    narrow = policy_of(allow("ssm:GetParameters"))
    with role_stack(iam, tmp_path, tmpfs_path, narrow, role="narrow-role") as (narrow_stack, proxy):
        code, err = Rotation(stack=narrow_stack, proxy=proxy, systemd=FakeSystemd()).refresh()
        assert code == 5, err
        assert "ssm:GetParametersByPath on /prod/app/dir/ for role narrow-role" in err


_JSON = (("Content-Type", "application/x-amz-json-1.1"),)
NOT_SSM_ANSWERS = {
    "html page": CannedResponse(200, b"<html>Blocked by policy</html>", (("Content-Type", "text/html"),)),
    "a name missing": CannedResponse(200, b'{"Parameters": [], "InvalidParameters": []}', _JSON),
    "truncated json": CannedResponse(200, b'{"Parameters": [{"Name": "/app/db", "Version": 9', _JSON),
    "empty object": CannedResponse(200, b"{}", _JSON),
}


@pytest.mark.parametrize("on_change", ["restart", "render"])
@pytest.mark.parametrize("kind", sorted(NOT_SSM_ANSWERS))
def test_a_check_never_acts_on_an_answer_it_could_not_believe(
    rotation: Rotation, kind: str, on_change: str
) -> None:
    """A parameter did change, but every answer is not SSM's: exit 7, no restart, no re-render, the
    record unchanged; a missing name is never read as "removed"."""
    rotation.settings(f'format = "dotenv"\non_change = "{on_change}"\ndeadline_seconds = 1\n')
    rotation.render_db()
    record = (record_path(rotation.stack)).read_bytes()
    rotation.stack.put("/app/db", f"{MARK}new")
    rotation.proxy.responder = lambda _index, _action: NOT_SSM_ANSWERS[kind]

    code, err = rotation.refresh()

    assert code == 7, err
    (failed,) = _events(err, "refresh_failed")
    assert "not SSM's" in str(failed["error"])
    assert _events(err, "refresh_changed") == []
    assert rotation.systemd.calls == []
    assert rotation.env_file() == {"DB": f"{MARK}old"}
    assert (record_path(rotation.stack)).read_bytes() == record


def test_a_stale_set_is_healed_by_the_first_check_that_reaches_ssm(stack: Stack) -> None:
    """A set served stale (SSM down at a restart) makes `status` exit 7 and say stale; a check while
    SSM is still down fails and leaves it stale; the first check SSM answers, with the versions
    unchanged, writes the set fresh without restarting the app, and `status` exits 0 again."""
    down = [False]
    unavailable = aws_json_error("ServiceUnavailable", "Service unavailable", status=503)
    with RecordingProxy(stack.ssm_url, lambda _index, _action: unavailable if down[0] else None) as proxy:
        stack.env["AWS_ENDPOINT_URL_SSM"] = proxy.url
        rotation = Rotation(stack=stack, proxy=proxy, systemd=FakeSystemd())
        rotation.settings("deadline_seconds = 1\n")
        rotation.render_db()
        assert stack.run("status", "app")[0] == 0
        assert stack.run("clean", "app")[0] == 0  # the agent unit's stop, on the app's restart

        down[0] = True
        code, _out, err = stack.run("render", "app")
        assert code == 0, err
        assert rotation.env_file() == {"DB": f"{MARK}old"}
        status_code, status_out, _err = stack.run("status", "app")
        assert status_code == 7, status_out
        assert "stale" in status_out
        assert MARK not in status_out

        failed, _err = rotation.refresh()
        assert failed == 7
        assert stack.run("status", "app")[0] == 7

        down[0] = False
        healed, err = rotation.refresh()
        assert healed == 0, err
        assert _events(err, "refresh_fresh")
        assert rotation.systemd.calls == []  # unchanged versions: no restart
        assert rotation.env_file() == {"DB": f"{MARK}old"}
        healthy, out, _err = stack.run("status", "app")
        assert healthy == 0, out
        assert "stale" not in out
