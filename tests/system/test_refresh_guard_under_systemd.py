"""The refresh guard under a real systemd (252 and 257): a change in SSM whose new set does not
render fails secrets-agent-refresh@NAME with the cause in its journal, and the running app keeps
its process, its environment, its file and state.json; once SSM holds a set that renders, the
next check acts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable

import pytest
from nspawn import Machine
from system_helpers import MARK, App, put

from agent.template.envfile import max_value_bytes
from tests.integration.iam_world import IamWorld, allow, enforcing_moto_server, policy_of, ssm_proxy

pytestmark = pytest.mark.system

NewApp = Callable[..., App]
# (name, what breaks the set, exit code, what the error names, its repair, the variable it sets)
BadChange = tuple[str, Callable[[], Any], int, tuple[str, ...], Callable[[], Any], str]


@dataclass
class Guarded:
    """An app behind the agent, and its rotation check started by hand (back to back: the
    machine's start limit is raised, nspawn.raise_start_limit)."""

    machine: Machine
    app: App

    def check(self) -> tuple[int, str]:
        """Start the refresh unit once (as its timer does); its exit status and journal."""
        cursor = self.machine.journal_cursor()
        self.machine.systemctl("start", self.app.refresh_unit, check=False)
        status = int(self.machine.show(self.app.refresh_unit, "ExecMainStatus"))
        return status, self.machine.journal(after=cursor, unit=self.app.refresh_unit)

    def files(self) -> dict[str, bytes]:
        """Every file in the app's runtime folder and in its record's folder (root's, beside it),
        byte for byte (a leftover temp file shows), but last-check.json: what the check found, the one
        file a held check writes."""
        found = {}
        for folder in (self.app.folder, f"/run/secrets-agent-state/{self.app.name}"):
            listed = self.machine.text("ls", "-A", folder).split()
            names = [name for name in listed if name != "last-check.json"]
            found.update({name: self.machine.run("cat", f"{folder}/{name}").stdout for name in names})
        return found

    def assert_held(self, status: int, journal: str, exit_code: int, names: tuple[str, ...]) -> None:
        """The check failed with `exit_code` and one error line naming `names`."""
        assert status == exit_code, journal
        assert self.machine.show(self.app.refresh_unit, "Result") == "exit-code"
        (line,) = [json.loads(x) for x in journal.splitlines() if '"level": "error"' in x]
        assert line["event"] == "refresh_failed"
        for name in names:
            assert name in line["error"], line
        assert f"{self.app.unit} keeps running" in line["error"]
        assert MARK not in journal


@contextmanager
def _pointed(machine: Machine, units: tuple[str, ...], imds_url: str, ssm_url: str) -> Iterator[None]:
    dropins = []
    for unit in units:
        dropin = machine.path(f"/etc/systemd/system/{unit}.d/zz-guard.conf")
        dropin.parent.mkdir(exist_ok=True)
        dropin.write_text(
            f"[Service]\nEnvironment=AWS_EC2_METADATA_SERVICE_ENDPOINT={imds_url}\n"
            f"Environment=AWS_ENDPOINT_URL_SSM={ssm_url}\n"
        )
        dropins.append(dropin)
    machine.daemon_reload()
    try:
        yield
    finally:
        for dropin in dropins:
            dropin.unlink()
            dropin.parent.rmdir()
        machine.daemon_reload()


@pytest.fixture(scope="module")
def enforcing_url() -> Iterator[str]:
    """moto enforcing IAM, in its own process on the host's 127.0.0.1 (the machine's too)."""
    with enforcing_moto_server() as url:
        yield url


def test_bad_changes_leave_the_running_app_and_each_repair_restarts_it(
    machine: Machine, new_app: NewApp, enforcing_url: str
) -> None:
    """on_change = "restart" under moto's IAM enforcement: a parameter deleted, one moved under a
    KMS key the role cannot use, a JSON secret without the field the template reads and a value
    past the EnvironmentFile limit each fail the check naming the cause, with the app's MainPID,
    environment, file and state.json unchanged; each repair (a new value) restarts it with it."""
    iam = IamWorld(enforcing_url)
    app = new_app("guarded")
    p = app.prefix
    iam.put(f"{p}/TOKEN", f"token-1 {MARK}")
    iam.put(f"{p}/LOCKED", f"locked-1 {MARK}")
    iam.put(f"{p}/DB", json.dumps({"user": f"user-1 {MARK}"}))
    iam.put(f"{p}/BLOB", f"blob-1 {MARK}")
    app.write_template(
        f'TOKEN={{{{ param("{p}/TOKEN") }}}}\nLOCKED={{{{ param("{p}/LOCKED") }}}}\n'
        f'DB_USER={{{{ (param("{p}/DB") | from_json)["user"] }}}}\nBLOB={{{{ param("{p}/BLOB") }}}}\n'
    )
    key = iam.client("kms").create_key(Description="a key the role may not use")["KeyMetadata"]["KeyId"]
    # Versions only for the check, values under the AWS managed key: no kms:Decrypt at all.
    keys = iam.role("guard-role", policy_of(allow("ssm:GetParameters", "ssm:GetParametersByPath")))
    too_big = "y" * (max_value_bytes("BLOB") + 1)
    bad_changes: list[BadChange] = [
        (
            "deleted",
            lambda: iam.client("ssm").delete_parameter(Name=f"{p}/TOKEN"),
            4,
            (f"{p}/TOKEN",),
            lambda: iam.put(f"{p}/TOKEN", f"token-2 {MARK}"),
            "TOKEN",
        ),
        (
            "access denied",
            lambda: iam.put(f"{p}/LOCKED", f"locked-x {MARK}", KeyId=key),
            5,
            ("kms:Decrypt", key),
            lambda: iam.put(f"{p}/LOCKED", f"locked-2 {MARK}", KeyId="alias/aws/ssm"),
            "LOCKED",
        ),
        (
            "json field gone",
            lambda: iam.put(f"{p}/DB", json.dumps({"username": f"user-x {MARK}"})),
            3,
            (f"{p}/DB", '"user"'),
            lambda: iam.put(f"{p}/DB", json.dumps({"user": f"user-2 {MARK}"})),
            "DB_USER",
        ),
        (
            "too big",
            lambda: iam.put(f"{p}/BLOB", too_big, Tier="Advanced"),
            3,
            ("BLOB", f"{p}/BLOB", str(max_value_bytes("BLOB"))),
            lambda: iam.put(f"{p}/BLOB", f"blob-2 {MARK}"),
            "BLOB",
        ),
    ]
    repaired = {
        "TOKEN": f"token-2 {MARK}",
        "LOCKED": f"locked-2 {MARK}",
        "DB_USER": f"user-2 {MARK}",
        "BLOB": f"blob-2 {MARK}",
    }
    with iam.imds("guard-role", keys) as imds, ssm_proxy(iam.url, iam) as proxy:
        units = (app.agent_unit, app.refresh_unit)
        with _pointed(machine, units, imds.url, proxy.url):
            _bad_changes_then_repairs(machine, app, bad_changes, repaired)


def _bad_changes_then_repairs(
    machine: Machine,
    app: App,
    bad_changes: list[BadChange],
    repaired: dict[str, str],
) -> None:
    """Each bad change, its failed check and its repair's check, on the running app."""
    guarded = Guarded(machine, app)
    machine.systemctl("start", app.unit)
    environ = app.environ()
    assert environ[b"TOKEN"] == f"token-1 {MARK}".encode()
    for kind, do, exit_code, names, undo, variable in bad_changes:
        pid, files = app.main_pid(), guarded.files()
        do()
        status, journal = guarded.check()
        guarded.assert_held(status, journal, exit_code, names)
        assert app.main_pid() == pid, kind
        assert app.environ() == environ, kind
        assert guarded.files() == files, kind

        undo()
        status, journal = guarded.check()
        assert status == 0, journal
        assert app.main_pid() != pid, kind
        environ = app.environ()
        assert environ[variable.encode()] == repaired[variable].encode(), kind
    machine.systemctl("stop", app.unit)


def test_under_render_and_reload_a_failed_check_leaves_the_file_byte_for_byte(
    machine: Machine, new_app: NewApp, ssm: Any
) -> None:
    """on_change = "render" then "reload": a deleted parameter, then a JSON secret without its
    field, fail the check and leave the folder's files byte for byte (no temp file, no swap), the
    app neither reloaded nor restarted; once repaired, the next check writes and reloads."""
    app = new_app("guardfile", reloadable=True)
    p = app.prefix
    put(ssm, f"{p}/TOKEN", f"token-1 {MARK}")
    put(ssm, f"{p}/DB", json.dumps({"user": f"user-1 {MARK}"}))
    app.write_template(
        f'TOKEN={{{{ param("{p}/TOKEN") }}}}\nDB_USER={{{{ (param("{p}/DB") | from_json)["user"] }}}}\n'
    )
    app.write_settings('format = "dotenv"\non_change = "render"\n')
    guarded = Guarded(machine, app)
    machine.systemctl("start", app.unit)
    environ, pid, files = app.environ(), app.main_pid(), guarded.files()
    reloads = app.reloads

    ssm.delete_parameter(Name=f"{p}/TOKEN")
    guarded.assert_held(*guarded.check(), 4, (f"{p}/TOKEN",))
    assert guarded.files() == files

    app.write_settings('format = "dotenv"\non_change = "reload"\n')
    put(ssm, f"{p}/TOKEN", f"token-2 {MARK}")
    put(ssm, f"{p}/DB", json.dumps({"username": f"user-x {MARK}"}))
    guarded.assert_held(*guarded.check(), 3, (f"{p}/DB", '"user"'))
    assert guarded.files() == files
    assert not app.exists(reloads)
    assert app.main_pid() == pid
    assert app.environ() == environ

    put(ssm, f"{p}/DB", json.dumps({"user": f"user-2 {MARK}"}))
    status, journal = guarded.check()
    assert status == 0, journal
    assert machine.text("cat", reloads).split() == ["reloaded"]
    written = guarded.files()
    # The new set, its record and (on_outage = "keep", the default) this boot's kept copy of it.
    assert sorted(written) == ["env", "set.json", "state.json"]
    assert f"token-2 {MARK}".encode() in written["env"]
    assert f"user-2 {MARK}".encode() in written["env"]
    assert app.main_pid() == pid
