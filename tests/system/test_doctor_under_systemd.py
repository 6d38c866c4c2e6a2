"""`secrets-agent doctor` under a real systemd checks what `enable` wrote for the service's own format:
LoadCredential= of the credentials folder for format = "credentials", never an EnvironmentFile=.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Callable

import pytest
from nspawn import Machine
from system_helpers import MARK, REGION, App, put

from devtools.fakeimds import FakeImds

pytestmark = pytest.mark.system


@pytest.fixture
def doctor(machine: Machine, imds: FakeImds, moto_url: str) -> Callable[[str], tuple[int, str]]:
    """Run `secrets-agent doctor NAME` in the machine against the fakes: (exit code, its lines)."""

    def run(name: str) -> tuple[int, str]:
        result = machine.run(
            "env",
            f"AWS_EC2_METADATA_SERVICE_ENDPOINT={imds.url}",
            f"AWS_ENDPOINT_URL_SSM={moto_url}",
            f"AWS_REGION={REGION}",
            "secrets-agent",
            "doctor",
            name,
            check=False,
        )
        return result.returncode, result.stdout.decode()

    return run


@pytest.fixture
def credentials_service(machine: Machine, new_app: Callable[..., App], ssm: Any) -> Iterator[App]:
    """An app put behind the agent with `enable NAME --credentials`, one parameter in its template;
    its drop-in, settings and template are removed afterwards (new_app stops it)."""
    app = new_app("doccred", behind_agent=False)
    machine.run("secrets-agent", "enable", app.name, "--credentials")
    put(ssm, f"{app.prefix}/TOKEN", f"token {MARK}")
    app.write_template(f'TOKEN={{{{ param("{app.prefix}/TOKEN") }}}}\n')
    yield app
    machine.systemctl("stop", app.unit, check=False)
    machine.run("secrets-agent", "disable", app.name, check=False)
    for leftover in (f"{app.name}.toml", f"{app.name}.env.j2"):
        machine.path(f"/etc/secrets-agent/{leftover}").unlink(missing_ok=True)
    machine.daemon_reload()


def test_doctor_passes_a_credentials_service_and_names_its_missing_dropin(
    machine: Machine, credentials_service: App, doctor: Callable[[str], tuple[int, str]]
) -> None:
    """A running `enable --credentials` service passes doctor (exit 0, LoadCredential= checked); with
    an EnvironmentFile= drop-in or none, doctor fails naming the drop-in and `enable NAME --credentials`."""
    app = credentials_service
    folder = f"/run/secrets-agent/{app.name}/credentials"
    machine.systemctl("start", app.unit)
    assert machine.show(app.unit, "ActiveState") == "active"

    code, out = doctor(app.name)

    assert code == 0, out
    assert f"passed  drop-in file: {app.unit} has LoadCredential=secrets:{folder}" in out
    assert "EnvironmentFile" not in out
    assert "all checks passed" in out
    assert MARK not in out

    # The drop-in of another format (what the old advice led to): doctor says which one it needs.
    dropin = machine.path(f"/etc/systemd/system/{app.unit}.d/secrets-agent.conf")
    dropin.write_text(
        f"[Unit]\nRequires={app.agent_unit}\nAfter={app.agent_unit}\n"
        f"[Service]\nEnvironmentFile=/run/secrets-agent/{app.name}/env\n"
    )
    machine.daemon_reload()
    code, out = doctor(app.name)
    assert code == 9  # systemd's part failed
    assert (
        f"failed  drop-in file: /etc/systemd/system/{app.unit}.d/secrets-agent.conf gives {app.unit} "
        f"no LoadCredential=, not LoadCredential=secrets:{folder} (its format is credentials): "
        f"run `secrets-agent enable {app.name} --credentials` again" in out
    )

    # No drop-in at all.
    dropin.unlink()
    machine.daemon_reload()
    code, out = doctor(app.name)
    assert code == 9  # systemd's part failed
    assert (
        f"failed  drop-in: {app.unit} has no secrets-agent.conf drop-in loaded "
        f"(expected /etc/systemd/system/{app.unit}.d/secrets-agent.conf, with "
        f"LoadCredential=secrets:{folder}): run `secrets-agent enable {app.name} --credentials`" in out
    )
