"""The refresh guard end to end (cli.main against moto and the fake IMDS): on a change, a refresh
first renders the new set in full without writing it, and acts only when that succeeds; a set that
does not render leaves the app, its file and state.json exactly as they were, and says why."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.config import CHECK_FILE_NAME
from agent.template.envfile import max_value_bytes
from tests.integration.cli_harness import Stack
from tests.integration.iam_world import IamWorld, allow, policy_of
from tests.integration.moto_server import admin_ssm_client
from tests.integration.test_iam import role_stack
from tests.integration.test_refresh import MARK, FakeSystemd, Rotation, _events, rotation  # noqa: F401

# The template reads a plain parameter, a field of a JSON secret and a value with no size margin.
TEMPLATE = (
    'TOKEN={{ param("/app/token") }}\n'
    'DB_USER={{ (param("/app/db") | from_json)["user"] }}\n'
    'BLOB={{ param("/app/blob") }}\n'
)
# One byte past what execve() lets BLOB carry (an EnvironmentFile value is one environment string).
TOO_BIG = "y" * (max_value_bytes("BLOB") + 1)
ACTIONS = {
    "restart": [("try-restart", "app.service")],
    "reload": [("try-reload-or-restart", "app.service")],
    "render": [],
    "none": [],
}


@dataclass(frozen=True)
class BadChange:
    """A change in SSM whose new set cannot render, what it must be reported as, and its repair."""

    do: Callable[[Stack], None]
    undo: Callable[[Stack], None]
    exit_code: int
    names: tuple[str, ...]
    repaired: dict[str, str]


def _put_json(host: Stack, document: dict[str, str]) -> None:
    host.put("/app/db", json.dumps(document))


BAD_CHANGES = {
    "parameter deleted": BadChange(
        do=lambda s: admin_ssm_client(s.ssm_url).delete_parameter(Name="/app/token"),
        undo=lambda s: s.put("/app/token", f"{MARK}token-restored"),
        exit_code=4,
        names=("/app/token", "put-parameter"),
        repaired={"TOKEN": f"{MARK}token-restored"},
    ),
    "json field gone": BadChange(
        do=lambda s: _put_json(s, {"username": f"{MARK}u2"}),
        undo=lambda s: _put_json(s, {"user": f"{MARK}u3"}),
        exit_code=3,
        names=("/app/db", '"user"', "put a value the template can read back in SSM"),
        repaired={"DB_USER": f"{MARK}u3"},
    ),
    "value too big": BadChange(
        # SSM caps one value at 8 KiB; moto does not, which stands in for a template that joins
        # values (a certificate chain, a Secrets Manager secret) growing past the limit.
        do=lambda s: s.put("/app/blob", TOO_BIG, Tier="Advanced"),
        undo=lambda s: s.put("/app/blob", f"{MARK}blob-small"),
        exit_code=3,
        names=("BLOB", "/app/blob", str(max_value_bytes("BLOB")), "the format can carry"),
        repaired={"BLOB": f"{MARK}blob-small"},
    ),
}


FIRST = {"TOKEN": f"{MARK}token-1", "DB_USER": f"{MARK}u1", "BLOB": f"{MARK}blob-1"}


def _settings(on_change: str) -> str:
    """NAME.toml for `on_change`: render and reload need a format the app reads itself."""
    rewrites = on_change in ("render", "reload")
    return ('format = "dotenv"\n' if rewrites else "") + f'on_change = "{on_change}"\n'


def _running(rotation: Rotation, on_change: str) -> None:  # noqa: F811
    rotation.settings(_settings(on_change))
    rotation.stack.put("/app/token", f"{MARK}token-1")
    _put_json(rotation.stack, {"user": f"{MARK}u1", "password": f"{MARK}pw"})
    rotation.stack.put("/app/blob", f"{MARK}blob-1")
    rotation.stack.template(TEMPLATE)
    rotation.render()


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file in the service's folder, byte for byte (a leftover temporary file shows up too),
    and its records in root's folder beside the runtime folder (state.json, the kept set), but for
    last-check.json, which records what the check found: the one file a held check writes."""
    files = {entry: (folder / entry).read_bytes() for entry in sorted(os.listdir(folder))}
    records = folder.parent.with_name(folder.parent.name + "-state") / folder.name
    if folder.parent.name != "credentials" and records.is_dir():
        files.update(
            {
                entry: (records / entry).read_bytes()
                for entry in sorted(os.listdir(records))
                if entry != CHECK_FILE_NAME
            }
        )
    return files


def _held(err: str) -> dict[str, object]:
    """The one error line of a held refresh (and there is exactly one)."""
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    errors = [line for line in lines if line.get("level") == "error"]
    assert len(errors) == 1, err
    assert errors[0]["event"] == "refresh_failed"
    return errors[0]


@pytest.mark.parametrize("on_change", sorted(ACTIONS))
@pytest.mark.parametrize("kind", sorted(BAD_CHANGES))
def test_a_change_that_does_not_render_leaves_everything_and_the_repair_acts(
    rotation: Rotation,  # noqa: F811
    kind: str,
    on_change: str,
) -> None:
    """A bad change fails the refresh with render's exit code and one line naming the cause, asks
    systemd for nothing, leaves the file, state.json and the folder byte for byte; a second check
    still refuses; once SSM is repaired, the next check acts as on_change says."""
    bad = BAD_CHANGES[kind]
    _running(rotation, on_change)
    folder = rotation.stack.output.parent
    before = _snapshot(folder)
    bad.do(rotation.stack)

    for _attempt in range(2):
        code, err = rotation.refresh()
        assert code == bad.exit_code, err
        held = _held(err)
        for name in bad.names:
            assert name in str(held["error"]), held
        assert "app.service keeps running" in str(held["error"])
        assert _events(err, "refresh_changed")
        assert rotation.systemd.calls == []
        assert _snapshot(folder) == before
        assert MARK not in err

    bad.undo(rotation.stack)
    code, err = rotation.refresh()
    assert code == 0, err
    assert rotation.systemd.calls == ACTIONS[on_change]
    if on_change in ("render", "reload"):
        assert rotation.env_file() == {**FIRST, **bad.repaired}
        # The record follows the file it now describes: the next check sees nothing new.
        assert _snapshot(folder)["state.json"] != before["state.json"]
        assert rotation.refresh()[0] == 0
        assert rotation.systemd.calls == ACTIONS[on_change]
    else:
        # restart: the agent renders again at the app's start; none: nothing but the log.
        assert _snapshot(folder) == before
    assert _events(err, "refresh_ready")


def test_an_unrenderable_change_under_render_writes_exactly_what_it_checked(
    rotation: Rotation,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """on_change = "render": the bytes written are the ones the check rendered, even when SSM
    moves on between the check and the write (no second fetch)."""
    _running(rotation, "render")
    rotation.stack.put("/app/token", f"{MARK}token-2")

    import agent.commands.refresh

    checked = agent.commands.refresh.log.info
    admin = admin_ssm_client(rotation.stack.ssm_url)
    moved: list[str] = []

    def moved_on(event: str, **kw: object) -> None:
        checked(event, **kw)
        if event == "refresh_ready":
            admin.delete_parameter(Name="/app/token")
            moved.append(event)

    monkeypatch.setattr(agent.commands.refresh.log, "info", moved_on)
    code, err = rotation.refresh()

    # SSM did move on, once, between the check and the write: the parameter is gone there.
    assert moved == ["refresh_ready"], err
    with pytest.raises(admin.exceptions.ParameterNotFound):
        admin.get_parameter(Name="/app/token", WithDecryption=True)
    assert code == 0, err
    assert rotation.env_file()["TOKEN"] == f"{MARK}token-2"


def test_credentials_format_keeps_the_whole_set_when_the_change_does_not_render(
    rotation: Rotation,  # noqa: F811
) -> None:
    """format = "credentials": a deleted parameter leaves the credentials folder file for file as it
    was (on_change = "restart": render and reload cannot deliver credentials and are refused)."""
    rotation.settings('format = "credentials"\n')
    rotation.stack.put("/app/token", f"{MARK}token-1")
    rotation.stack.put("/app/other", f"{MARK}other-1")
    rotation.stack.template('TOKEN={{ param("/app/token") }}\nOTHER={{ param("/app/other") }}\n')
    rotation.render()
    folder = rotation.stack.runtime / "app" / "credentials"
    before = _snapshot(folder)
    admin_ssm_client(rotation.stack.ssm_url).delete_parameter(Name="/app/token")
    rotation.stack.put("/app/other", f"{MARK}other-2")

    code, err = rotation.refresh()

    assert code == 4, err
    assert "/app/token" in str(_held(err)["error"])
    assert _snapshot(folder) == before
    assert sorted(os.listdir(folder.parent)) == ["credentials"]


@pytest.mark.parametrize("on_change", ["restart", "render"])
def test_a_secure_string_the_role_cannot_decrypt_is_named_and_nothing_moves(
    iam: IamWorld, tmp_path: Path, tmpfs_path: Path, on_change: str
) -> None:
    """Under moto's IAM enforcement, a role without kms:Decrypt: one parameter moved under a
    customer managed key fails the refresh with exit 5 naming kms:Decrypt and the key, the app
    and its file untouched; moved back under the AWS managed key, the next check acts."""
    iam.put("/prod/app/db", f"{MARK}db-1")
    iam.put("/prod/app/api", f"{MARK}api-1")
    key = iam.client("kms").create_key(Description="app")["KeyMetadata"]
    policy = policy_of(allow("ssm:GetParameters", "ssm:GetParametersByPath"))
    with role_stack(iam, tmp_path, tmpfs_path, policy) as (host, proxy):
        host.template('DB={{ param("/prod/app/db") }}\nAPI={{ param("/prod/app/api") }}\n')
        (host.config / "app.toml").write_text(_settings(on_change))
        assert host.run("render", "app")[0] == 0
        checking = Rotation(stack=host, proxy=proxy, systemd=FakeSystemd())
        folder = host.output.parent
        before = _snapshot(folder)
        iam.put("/prod/app/api", f"{MARK}api-2", KeyId=key["KeyId"])

        code, err = checking.refresh()

        assert code == 5, err
        message = str(_held(err)["error"])
        assert "kms:Decrypt" in message
        assert key["KeyId"] in message
        assert checking.systemd.calls == []
        assert _snapshot(folder) == before

        iam.put("/prod/app/api", f"{MARK}api-3", KeyId="alias/aws/ssm")
        code, err = checking.refresh()
        assert code == 0, err
        assert checking.systemd.calls == ACTIONS[on_change]
        if on_change == "render":
            assert checking.env_file()["API"] == f"{MARK}api-3"


def test_a_parameter_deleted_and_created_again_is_a_change(rotation: Rotation) -> None:  # noqa: F811
    """A parameter deleted and put again is back at version 1 in SSM: its new LastModifiedDate
    makes it a change (logged as recreated), so the app gets the new value."""
    rotation.render_db()
    assert rotation.refresh()[0] == 0
    admin_ssm_client(rotation.stack.ssm_url).delete_parameter(Name="/app/db")
    assert rotation.stack.put("/app/db", f"{MARK}new") == 1

    code, err = rotation.refresh()

    assert code == 0, err
    (changed,) = _events(err, "refresh_changed")
    assert changed["changes"] == [{"name": "/app/db", "old_version": 1, "new_version": 1, "recreated": True}]
    assert rotation.systemd.calls == [("try-restart", "app.service")]
