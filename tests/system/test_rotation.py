"""Rotation under a real systemd 252: secrets-agent-refresh@NAME.timer and .service check the versions
NAME's last render used, and restart, reload, re-render for or leave the app as on_change says."""

from __future__ import annotations

import hashlib
import math
import subprocess
import time
from collections.abc import Iterator
from typing import Any, Callable, Optional

import pytest
from nspawn import Machine
from system_helpers import MARK, REGION, App, put

from devtools.fakeimds import FakeImds
from tests.integration.moto_server import CannedResponse, RecordingProxy, admin_client, aws_json_error
from tests.timing import Lines, wait_until

pytestmark = pytest.mark.system

NewApp = Callable[..., App]
# The timer's interval in the test, and its randomized delay (a third, as `enable` writes it).
TEST_INTERVAL_SECONDS = 6
POLL_SECONDS = 0.25
CHECK_AND_RESTART_SECONDS = 10
# systemd's catalog id of "Started UNIT." (a start job, or the start half of a restart job, done).
UNIT_STARTED_MESSAGE_ID = "39f53479d3a045ac8e11786248231fbf"
# How long the reader's first or last pass may take: a limit against hanging, not a speed target.
READER_TIMEOUT_SECONDS = 60.0


def _template(app: App, keys: Any) -> str:
    return "".join(f'{key}={{{{ param("{app.prefix}/{key}") }}}}\n' for key in keys)


def _exec_done_pid(app: App, timeout: float = 30.0) -> int:
    """The app's MainPID once that process runs the app's own program (after exec, not in the fork)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = app.main_pid()
        if pid > 0:
            exe = app.machine.run("readlink", f"/proc/{pid}/exe", check=False).stdout.decode().strip()
            if exe.endswith("/sleep") and app.machine.show(app.unit, "ActiveState") == "active":
                return pid
        time.sleep(POLL_SECONDS)
    raise AssertionError(f"{app.unit} did not come up running sleep within {timeout} s")


def _starts(machine: Machine, unit: str, cursor: str) -> int:
    """How many times systemd started (or restarted) `unit` since `cursor`: its "Started" lines."""
    lines = machine.text(
        "journalctl", "-q", "--no-pager", "-o", "cat", "--after-cursor", cursor,
        f"UNIT={unit}", f"MESSAGE_ID={UNIT_STARTED_MESSAGE_ID}",
    )  # fmt: skip
    return len(lines.splitlines())


def _token(app: App) -> bytes:
    _exec_done_pid(app)
    return app.environ()[b"TOKEN"]


@pytest.fixture
def proxy(moto_url: str) -> Iterator[RecordingProxy]:
    """A recording proxy on the host's loopback in front of moto, for the rotation checks to use."""
    with RecordingProxy(moto_url) as recording:
        yield recording


@pytest.fixture
def rotating(machine: Machine, proxy: RecordingProxy) -> Iterator[Callable[[App], None]]:
    """Point an app's rotation check at the recording proxy; timers off and drop-ins gone afterwards."""
    apps: list[App] = []

    def point(app: App) -> None:
        dropin = machine.path(f"/etc/systemd/system/{app.refresh_unit}.d/zz-proxy.conf")
        dropin.parent.mkdir(parents=True, exist_ok=True)
        dropin.write_text(f"[Service]\nEnvironment=AWS_ENDPOINT_URL_SSM={proxy.url}\n")
        machine.daemon_reload()
        apps.append(app)

    yield point
    for app in apps:
        machine.run("secrets-agent", "disable", app.name, "--refresh", check=False)
        machine.systemctl("stop", app.refresh_unit, check=False)
        machine.systemctl("reset-failed", app.refresh_unit, check=False)
        dropin = machine.path(f"/etc/systemd/system/{app.refresh_unit}.d/zz-proxy.conf")
        dropin.unlink()
        dropin.parent.rmdir()
    machine.daemon_reload()


def _check(machine: Machine, app: App) -> subprocess.CompletedProcess[bytes]:
    """One rotation check, started by hand (the timer starts the very same unit)."""
    return machine.systemctl("start", app.refresh_unit, check=False)


def _started_app(app: App, ssm: Any, settings: str = "", keys: tuple[str, ...] = ("TOKEN",)) -> int:
    for key in keys:
        put(ssm, f"{app.prefix}/{key}", f"old {key} {MARK}")
    app.write_template(_template(app, keys))
    if settings:
        app.write_settings(settings)
    app.machine.systemctl("start", app.unit)
    return _exec_done_pid(app)


def test_the_timer_brings_a_rotated_parameter_to_the_running_app(
    machine: Machine, new_app: NewApp, ssm: Any, rotating: Callable[[App], None]
) -> None:
    """`enable --refresh 6s`: a parameter overwritten in SSM reaches the app's environ within one
    interval plus its random delay, by the timer firing on its own; the app was restarted once."""
    app = new_app("rottimer")
    rotating(app)
    machine.run("secrets-agent", "enable", app.name, "--refresh", f"{TEST_INTERVAL_SECONDS}s")
    timer = f"secrets-agent-refresh@{app.name}.timer"
    assert machine.show(timer, "ActiveState") == "active"
    assert machine.text("systemctl", "is-enabled", timer).strip() == "enabled"
    first_pid = _started_app(app, ssm)
    assert app.environ()[b"TOKEN"] == f"old TOKEN {MARK}".encode()
    cursor = machine.journal_cursor()

    put(ssm, f"{app.prefix}/TOKEN", f"new TOKEN {MARK}")
    rotated_at = time.monotonic()
    # One period (the interval and its fixed random delay, at most a third of it), plus what the
    # check that catches the change and the app's restart themselves take.
    bound = TEST_INTERVAL_SECONDS + TEST_INTERVAL_SECONDS / 3 + CHECK_AND_RESTART_SECONDS
    while time.monotonic() - rotated_at < bound:
        if app.main_pid() not in (0, first_pid) and _token(app) == f"new TOKEN {MARK}".encode():
            break
        time.sleep(POLL_SECONDS)
    journal = machine.journal(after=cursor, unit=app.refresh_unit)
    assert _token(app) == f"new TOKEN {MARK}".encode(), journal
    assert "refresh_changed" in journal
    assert MARK not in journal
    # Restarted once: systemd logs one "Started" per start or restart of the unit (journald may
    # write it a moment after the new process is seen).
    wait_until(lambda: _starts(machine, app.unit, cursor) >= 1, READER_TIMEOUT_SECONDS, "a Started line")
    assert _starts(machine, app.unit, cursor) == 1, machine.journal(after=cursor, unit=app.unit)
    # Started by the timer: nothing in this test started the check unit.
    assert machine.show(timer, "LastTriggerUSecMonotonic") not in ("", "0")


def test_five_unchanged_checks_keep_the_app_and_cost_ceil_n_over_10_calls(
    machine: Machine, new_app: NewApp, ssm: Any, proxy: RecordingProxy, rotating: Callable[[App], None]
) -> None:
    """Nothing changed: five checks leave MainPID alone, and SSM sees exactly ceil(N/10)
    GetParameters with WithDecryption=false per check and nothing else."""
    app = new_app("rotquiet")
    rotating(app)
    keys = tuple(f"K{i:02d}" for i in range(12))
    pid = _started_app(app, ssm, keys=keys)

    for _ in range(5):
        start = len(proxy.actions)
        result = _check(machine, app)
        assert result.returncode == 0, result.stderr
        assert machine.show(app.refresh_unit, "Result") == "success"
        assert proxy.actions[start:] == ["GetParameters"] * math.ceil(len(keys) / 10)
        bodies = proxy.requests("GetParameters")[-math.ceil(len(keys) / 10) :]
        assert all(body["WithDecryption"] is False for body in bodies)
        assert app.main_pid() == pid
    assert machine.show(app.unit, "NRestarts") == "0"


class _HashReader:
    """A reader inside the machine that reads `path` pass after pass and prints the SHA-256 of each
    distinct content it shows, until stop(); its first pass has happened when started() returns."""

    def __init__(self, machine: Machine, path: str, stop_file: str) -> None:
        self.machine, self.stop_file = machine, stop_file
        machine.run("rm", "-f", stop_file)
        script = (
            "import hashlib, os\n"
            "seen = set()\n"
            "while True:\n"
            # Looked at before the read: the pass after stop() reads what is there by then.
            f"    stopping = os.path.exists({stop_file!r})\n"
            f"    with open({path!r}, 'rb') as f:\n"
            "        digest = hashlib.sha256(f.read()).hexdigest()\n"
            "    if digest not in seen:\n"
            "        seen.add(digest)\n"
            "        print(digest, flush=True)\n"
            "    if stopping:\n"
            "        break\n"
        )
        self.process = subprocess.Popen(
            ["nsenter", "-t", str(machine.init_pid), "-a", "--", "python3", "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.lines = Lines(self.process.stdout)

    def started(self) -> str:
        """Wait for the first pass (the event itself, not a sleep); the digest it saw."""
        first = self.lines.next(READER_TIMEOUT_SECONDS, "the reader's first pass")
        assert first is not None, self.process.stderr.read() if self.process.stderr else ""
        return first

    def stop(self) -> list[str]:
        """End the reader after one more pass; every later digest it printed, in order."""
        self.machine.run("touch", self.stop_file)
        digests = []
        while (line := self.lines.next(READER_TIMEOUT_SECONDS, "the reader's last pass")) is not None:
            digests.append(line)
        _out, err = self.process.communicate(timeout=READER_TIMEOUT_SECONDS)
        assert self.process.returncode == 0, err
        self.machine.run("rm", "-f", self.stop_file)
        return digests


def test_on_change_render_replaces_the_file_atomically_and_leaves_the_app(
    machine: Machine, new_app: NewApp, ssm: Any, rotating: Callable[[App], None]
) -> None:
    """on_change = "render": a reader sees the old file or the new one, never anything else; the
    app's MainPID does not change."""
    app = new_app("rotrender")
    rotating(app)
    pid = _started_app(app, ssm, settings='format = "dotenv"\non_change = "render"\n')
    env = f"{app.folder}/env"
    old = hashlib.sha256(machine.run("cat", env).stdout).hexdigest()
    reader = _HashReader(machine, env, f"/run/reader-stop-{app.name}")
    assert reader.started() == old

    put(ssm, f"{app.prefix}/TOKEN", f"new TOKEN {MARK}")
    assert _check(machine, app).returncode == 0

    later = reader.stop()
    new_content = machine.run("cat", env).stdout
    assert f"new TOKEN {MARK}".encode() in new_content
    new = hashlib.sha256(new_content).hexdigest()
    assert later == [new]
    assert app.main_pid() == pid
    assert app.environ()[b"TOKEN"] == f"old TOKEN {MARK}".encode()


def test_on_change_reload_reloads_the_app_after_rendering(
    machine: Machine, new_app: NewApp, ssm: Any, rotating: Callable[[App], None]
) -> None:
    """on_change = "reload": the file holds the new value and systemd ran the app's ExecReload=,
    without a restart."""
    app = new_app("rotreload", reloadable=True)
    rotating(app)
    pid = _started_app(app, ssm, settings='format = "dotenv"\non_change = "reload"\n')

    put(ssm, f"{app.prefix}/TOKEN", f"new TOKEN {MARK}")
    assert _check(machine, app).returncode == 0

    assert machine.text("cat", app.reloads).split() == ["reloaded"]
    assert f"new TOKEN {MARK}".encode() in machine.run("cat", f"{app.folder}/env").stdout
    assert app.main_pid() == pid


def test_on_change_none_only_logs(
    machine: Machine, new_app: NewApp, ssm: Any, rotating: Callable[[App], None]
) -> None:
    """on_change = "none": the journal names the change and versions; file and app stay as they were."""
    app = new_app("rotnone")
    rotating(app)
    pid = _started_app(app, ssm, settings='on_change = "none"\n')
    before = machine.run("cat", f"{app.folder}/env").stdout
    cursor = machine.journal_cursor()

    put(ssm, f"{app.prefix}/TOKEN", f"new TOKEN {MARK}")
    assert _check(machine, app).returncode == 0

    journal = machine.journal(after=cursor, unit=app.refresh_unit)
    assert "refresh_changed" in journal
    assert f"{app.prefix}/TOKEN" in journal
    assert machine.run("cat", f"{app.folder}/env").stdout == before
    assert app.main_pid() == pid


def test_ssm_down_fails_the_check_keeps_the_app_and_the_next_check_acts(
    machine: Machine, new_app: NewApp, ssm: Any, proxy: RecordingProxy, rotating: Callable[[App], None]
) -> None:
    """SSM answering 503 past the deadline: the check unit fails with the cause in its journal, the
    app keeps running with its values; once SSM is back the next check restarts it with the new one."""
    app = new_app("rotdown")
    rotating(app)
    pid = _started_app(app, ssm, settings="deadline_seconds = 2\n")
    put(ssm, f"{app.prefix}/TOKEN", f"new TOKEN {MARK}")
    down: Optional[CannedResponse] = aws_json_error("ServiceUnavailable", "Service Unavailable", 503)
    proxy.responder = lambda _index, _action: down
    cursor = machine.journal_cursor()

    assert _check(machine, app).returncode != 0

    assert machine.show(app.refresh_unit, "Result") == "exit-code"
    assert machine.show(app.refresh_unit, "ExecMainStatus") == "7"
    journal = machine.journal(after=cursor, unit=app.refresh_unit)
    assert "refresh_failed" in journal
    assert "ssm:GetParameters within the 2 s deadline" in journal
    assert app.main_pid() == pid
    assert app.environ()[b"TOKEN"] == f"old TOKEN {MARK}".encode()

    down = None
    assert _check(machine, app).returncode == 0
    assert app.main_pid() != pid
    assert _token(app) == f"new TOKEN {MARK}".encode()


def test_a_stopped_app_costs_no_call_at_all(
    machine: Machine,
    *,
    new_app: NewApp,
    ssm: Any,
    proxy: RecordingProxy,
    imds: FakeImds,
    rotating: Callable[[App], None],
) -> None:
    """With the app stopped a check asks neither IMDS nor SSM anything, and succeeds."""
    app = new_app("rotstopped")
    rotating(app)
    _started_app(app, ssm)
    machine.systemctl("stop", app.unit)
    put(ssm, f"{app.prefix}/TOKEN", f"new TOKEN {MARK}")
    imds_before = len(imds.requests)

    assert _check(machine, app).returncode == 0

    assert proxy.actions == []
    assert len(imds.requests) == imds_before
    assert machine.show(app.unit, "ActiveState") == "inactive"


def test_put_secret_value_restarts_the_app_with_the_new_secret(
    machine: Machine, new_app: NewApp, moto_url: str
) -> None:
    """A `secret()` rendered at start: after PutSecretValue the rotation check (DescribeSecret) sees a
    new AWSCURRENT and the app restarts with the new value; the journal holds no value. Debian 12's
    botocore has no BatchGetSecretValue, so its agent says so and fetches with GetSecretValue."""
    app = new_app("rotsecret")
    secrets_manager = admin_client("secretsmanager", moto_url, REGION)
    name = f"{app.name}-{machine.release.suite}/token"
    secrets_manager.create_secret(Name=name, SecretString=f"old secret {MARK}")
    app.write_template(f'TOKEN={{{{ secret("{name}") }}}}\n')
    cursor = machine.journal_cursor()
    machine.systemctl("start", app.unit)
    first_pid = _exec_done_pid(app)
    assert app.environ()[b"TOKEN"] == f"old secret {MARK}".encode()
    started = machine.journal(after=cursor, unit=app.agent_unit)
    assert ("secretsmanager_batch_unavailable" in started) == (machine.release.suite == "bookworm"), started

    secrets_manager.put_secret_value(SecretId=name, SecretString=f"new secret {MARK}")
    cursor = machine.journal_cursor()
    result = _check(machine, app)

    journal = machine.journal(after=cursor, unit=app.refresh_unit)
    assert result.returncode == 0, journal
    assert "refresh_changed" in journal
    assert app.main_pid() != first_pid
    assert _token(app) == f"new secret {MARK}".encode()
    assert MARK not in machine.journal(after=cursor)
