"""format = "credentials" under a real systemd 252: an app with DynamicUser=yes put behind the agent
with `secrets-agent enable NAME --credentials` reads every value byte for byte from
$CREDENTIALS_DIRECTORY, none of them is in its environment, no other user can read them, and they
are gone when it stops.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Iterator
from typing import Any, Callable

import pytest
from nspawn import Machine
from system_helpers import MARK, App, put

pytestmark = pytest.mark.system

NOBODY = "65534"
READY_TIMEOUT_SECONDS = 30.0
# The app: hashes of what it reads from $CREDENTIALS_DIRECTORY (never the values) and the path its
# DB_PASSWORD_FILE variable holds, then "ready", then it idles like a service.
APP_SCRIPT = """\
#!/usr/bin/python3
import hashlib, os, time
folder = os.environ["CREDENTIALS_DIRECTORY"]
for name in sorted(os.listdir(folder)):
    with open(os.path.join(folder, name), "rb") as file:
        print("credential", name, hashlib.sha256(file.read()).hexdigest(), flush=True)
password_file = os.environ["DB_PASSWORD_FILE"]
with open(password_file, "rb") as file:
    print("file-variable", password_file, hashlib.sha256(file.read()).hexdigest(), flush=True)
print("ready", os.getpid(), flush=True)
while True:
    time.sleep(3600)
"""
APP_UNIT = """\
[Unit]
Description=Test app {name} that reads its secrets as systemd credentials

[Service]
DynamicUser=yes
ExecStart=/usr/local/bin/credentials-app
# The *_FILE convention: %d is the unit's credentials folder.
Environment=DB_PASSWORD_FILE=%d/secrets_DB_PASSWORD
"""
PEM = (
    "-----BEGIN PRIVATE KEY-----\n"
    + "\n".join(base64.b64encode(secrets.token_bytes(48)).decode() for _ in range(26))
    + f"\n{base64.b64encode(MARK.encode()).decode()}\n-----END PRIVATE KEY-----\n"
)
TEXT_VALUES = {
    "NEWLINES": f"line one\nline two {MARK}\n\n",
    "QUOTES": f"it's \"{MARK}\" 'twice'",
    "DOLLARS": f"$HOME ${{PATH}} $$ `id` {MARK}$",
    "EIGHT_KB": (f"{MARK} {secrets.token_urlsafe(48)} \"'\\$`#=;\n" * 200)[:8192],
    "PEM_KEY": PEM,
}
BINARY = b"\x00" + MARK.encode() + b"\x00\xff\xfe binary \x01" + secrets.token_bytes(256)
# SSM keeps values up to 4 KB in its standard tier.
STANDARD_TIER_MAX_BYTES = 4096


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _template(app: App) -> str:
    lines = [f'{key}={{{{ param("{app.prefix}/{key}") }}}}' for key in TEXT_VALUES]
    lines += [
        f'{{% set db = param("{app.prefix}/db") | from_json %}}',
        'DB_USER={{ db["username"] }}',
        "DB_PASSWORD={{ db.password }}",
        f'keystore.bin={{{{ param("{app.prefix}/keystore") | b64decode }}}}',
    ]
    return "\n".join(lines) + "\n"


def _put_values(ssm: Any, app: App, generation: str) -> dict[str, bytes]:
    """Put every hard value (this generation's) in SSM; the bytes each credential file must hold."""
    values = {key: f"{generation} {value}" for key, value in TEXT_VALUES.items()}
    for key, value in values.items():
        tier = "Advanced" if len(value.encode()) > STANDARD_TIER_MAX_BYTES else None
        put(ssm, f"{app.prefix}/{key}", value, tier=tier)
    password = f'{generation} pa$$ "w0rd"\n{MARK}'
    put(ssm, f"{app.prefix}/db", json.dumps({"username": f"user-{generation}", "password": password}))
    binary = generation.encode() + BINARY
    put(ssm, f"{app.prefix}/keystore", base64.encodebytes(binary).decode())
    expected = {f"secrets_{key}": value.encode() for key, value in values.items()}
    expected.update(
        {
            "secrets_DB_USER": f"user-{generation}".encode(),
            "secrets_DB_PASSWORD": password.encode(),
            "secrets_keystore.bin": binary,
        }
    )
    return expected


def _wait_ready(machine: Machine, app: App, cursor: str) -> list[str]:
    """The app's own lines after `cursor`, once it has read its credentials (its process has exec'd
    and run: `systemctl start` returns before that)."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        lines = machine.journal(after=cursor, unit=app.unit).splitlines()
        if any(line.startswith("ready ") for line in lines):
            return lines
        time.sleep(0.2)
    raise AssertionError(f"{app.unit} did not get ready: {machine.journal(after=cursor, unit=app.unit)}")


@pytest.fixture
def credentials_app(machine: Machine, new_app: Callable[..., App]) -> Iterator[Callable[[str], App]]:
    """A factory of DynamicUser= apps, not yet behind the agent; their drop-ins and settings are
    removed afterwards (new_app stops them)."""
    apps: list[App] = []
    script = machine.path("/usr/local/bin/credentials-app")
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(APP_SCRIPT)
    script.chmod(0o755)

    def make(name: str) -> App:
        app = new_app(name, behind_agent=False)
        machine.path(f"/etc/systemd/system/{app.unit}").write_text(APP_UNIT.format(name=name))
        machine.daemon_reload()
        apps.append(app)
        return app

    yield make
    for app in apps:
        machine.run("secrets-agent", "disable", app.name, check=False)
        for leftover in (f"{app.name}.toml", f"{app.name}.env.j2"):
            machine.path(f"/etc/secrets-agent/{leftover}").unlink(missing_ok=True)


def test_dynamic_user_app_reads_every_value_from_its_credentials(
    machine: Machine, credentials_app: Callable[[str], App], ssm: Any
) -> None:
    """Behind `enable --credentials`, a DynamicUser= app reads each hard value exactly, none in its
    environment, unreadable to another user, gone after stop, and new after a change and a restart."""
    app = credentials_app("credapp")
    out = machine.text("secrets-agent", "enable", "credapp", "--credentials")
    assert "LoadCredential=" in out
    assert machine.path("/etc/secrets-agent/credapp.toml").read_text().endswith('format = "credentials"\n')
    dropin = machine.path("/etc/systemd/system/credapp.service.d/secrets-agent.conf").read_text()
    assert "LoadCredential=secrets:/run/secrets-agent/credapp/credentials" in dropin
    assert "EnvironmentFile" not in dropin
    app.write_template(_template(app))
    expected = _put_values(ssm, app, "first")
    cursor = machine.journal_cursor()

    machine.systemctl("start", app.unit)
    lines = _wait_ready(machine, app, cursor)

    # The app itself, as its dynamic user, read every credential byte for byte.
    read = {line.split()[1]: line.split()[2] for line in lines if line.startswith("credential ")}
    assert read == {name: _sha256(data) for name, data in expected.items()}
    [file_variable] = [line.split()[1:] for line in lines if line.startswith("file-variable ")]
    assert file_variable == [
        "/run/credentials/credapp.service/secrets_DB_PASSWORD",
        _sha256(expected["secrets_DB_PASSWORD"]),
    ]
    # And what systemd copied is exactly what SSM holds (root reads it from outside).
    for name, data in expected.items():
        assert machine.run("cat", f"/run/credentials/credapp.service/{name}").stdout == data, name

    # No value is in the app's environment; the folder is.
    environ = app.environ()
    assert environ[b"CREDENTIALS_DIRECTORY"] == b"/run/credentials/credapp.service"
    raw_environ = b"\0".join(key + b"=" + value for key, value in environ.items())
    assert MARK.encode() not in raw_environ
    for data in expected.values():
        assert data not in raw_environ

    # Another unprivileged user can read neither systemd's copy nor the agent's folder.
    for path in (
        "/run/credentials/credapp.service/secrets_DB_PASSWORD",
        "/run/secrets-agent/credapp/credentials/DB_PASSWORD",
    ):
        denied = machine.run(
            "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "cat", path, check=False
        )
        assert denied.returncode != 0, path
        assert b"Permission denied" in denied.stderr, denied.stderr
        assert MARK.encode() not in denied.stdout
    modes = machine.text(
        "stat", "-c", "%a %U %F", "/run/secrets-agent/credapp/credentials", "/run/secrets-agent/credapp"
    )
    assert modes.splitlines() == ["700 root directory", "700 root directory"]

    # A change in SSM and a restart: the agent runs again and the app reads the new set.
    first_agent_run = machine.show(app.agent_unit, "InvocationID")
    new_expected = _put_values(ssm, app, "second")
    cursor = machine.journal_cursor()
    machine.systemctl("restart", app.unit)
    lines = _wait_ready(machine, app, cursor)
    assert machine.show(app.agent_unit, "InvocationID") != first_agent_run
    read = {line.split()[1]: line.split()[2] for line in lines if line.startswith("credential ")}
    assert read == {name: _sha256(data) for name, data in new_expected.items()}

    # Stopping the app takes both copies away.
    app.stop()
    assert machine.show(app.agent_unit, "ActiveState") == "inactive"
    assert not app.exists("/run/secrets-agent/credapp")
    assert not app.exists("/run/credentials/credapp.service")


def test_an_app_behind_credentials_does_not_start_when_a_limit_is_hit(
    machine: Machine, credentials_app: Callable[[str], App], ssm: Any
) -> None:
    """A key that cannot be a credential id fails the agent (exit 3, key named); the app never starts."""
    app = credentials_app("credbad")
    machine.run("secrets-agent", "enable", "credbad", "--credentials")
    put(ssm, f"{app.prefix}/A", f"a {MARK}")
    app.write_template(f'A={{{{ param("{app.prefix}/A") }}}}\nb:c={{{{ param("{app.prefix}/A") }}}}\n')
    cursor = machine.journal_cursor()

    result = machine.systemctl("start", app.unit, check=False)

    assert result.returncode != 0
    assert machine.show(app.agent_unit, "ExecMainStatus") == "3"
    assert "'b:c' cannot be a credential id" in machine.journal(after=cursor, unit=app.agent_unit)
    assert machine.show(app.unit, "ExecMainStartTimestampMonotonic") == "0"
    assert not app.exists("/run/secrets-agent/credbad")
    assert not app.exists("/run/credentials/credbad.service")
