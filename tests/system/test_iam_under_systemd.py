"""IAM under a real systemd: an app behind the agent starts when the instance role has only
ssm:GetParameter (moto enforcing IAM, a role assumed through STS, its keys served by the IMDSv2 fake),
and `doctor` inside the machine checks the units and the drop-in."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Callable

import pytest
from nspawn import Machine
from system_helpers import MARK, App

from tests.integration.iam_world import IamWorld, allow, enforcing_moto_server, policy_of, ssm_proxy

pytestmark = pytest.mark.system

NewApp = Callable[..., App]
# Doctor inside the machine must never try the real IMDS or AWS: closed loopback ports instead.
DEAD = "http://127.0.0.1:9"


@pytest.fixture(scope="module")
def enforcing_url() -> Iterator[str]:
    """moto enforcing IAM, in its own process on the host's 127.0.0.1 (the machine's too)."""
    with enforcing_moto_server() as url:
        yield url


def _point_agent(machine: Machine, app: App, imds_url: str, ssm_url: str) -> Any:
    dropin = machine.path(f"/etc/systemd/system/{app.agent_unit}.d/zz-iam.conf")
    dropin.parent.mkdir(exist_ok=True)
    # Sorted after the session's test.conf, so these endpoints win.
    dropin.write_text(
        f"[Service]\nEnvironment=AWS_EC2_METADATA_SERVICE_ENDPOINT={imds_url}\n"
        f"Environment=AWS_ENDPOINT_URL_SSM={ssm_url}\n"
    )
    machine.daemon_reload()
    return dropin


def test_app_starts_under_a_get_parameter_only_role(
    machine: Machine, new_app: NewApp, enforcing_url: str
) -> None:
    """With only ssm:GetParameter, `systemctl start` runs the agent (one call a name, one warning) and
    the app gets every value."""
    iam = IamWorld(enforcing_url)
    app = new_app("iamapp")
    values = {f"K{i}": f"value {i} {MARK}" for i in range(3)}
    for key, value in values.items():
        iam.put(f"{app.prefix}/{key}", value)
    app.write_template("".join(f'{key}={{{{ param("{app.prefix}/{key}") }}}}\n' for key in values))
    keys = iam.role("tutorial-role", policy_of(allow("ssm:GetParameter")))
    with iam.imds("tutorial-role", keys) as imds, ssm_proxy(iam.url, iam) as proxy:
        dropin = _point_agent(machine, app, imds.url, proxy.url)
        try:
            cursor = machine.journal_cursor()
            machine.systemctl("start", app.unit)
            environ = app.environ()
            journal = machine.journal(after=cursor, unit=app.agent_unit)
        finally:
            machine.systemctl("stop", app.unit, check=False)
            dropin.unlink()
            dropin.parent.rmdir()
            machine.daemon_reload()
        assert proxy.count("GetParameters") == 1
        assert proxy.count("GetParameter") == len(values)
    for key, value in values.items():
        assert environ[key.encode()] == value.encode()
    assert journal.count("ssm_get_parameters_denied") == 1
    assert MARK not in journal


def test_doctor_finds_a_missing_dropin_then_a_loaded_one(machine: Machine, new_app: NewApp) -> None:
    """`doctor` under systemd: the agent unit is loaded; an app without the drop-in fails with the
    `enable` to run; with the drop-in, it is loaded and reads the right file."""
    bare = new_app("nodropin", behind_agent=False)
    bare.write_template('A={{ param("/nodropin/A") }}\n')
    doctor = ("env", f"AWS_EC2_METADATA_SERVICE_ENDPOINT={DEAD}", f"AWS_ENDPOINT_URL={DEAD}", "secrets-agent")
    result = machine.run(*doctor, "doctor", bare.name, check=False)
    out = result.stdout.decode()
    assert result.returncode == 7  # the first failure: nothing answers at the IMDS address
    assert f"passed  agent unit: secrets-agent@{bare.name}.service is loaded" in out
    assert (
        f"failed  drop-in: {bare.unit} has no secrets-agent.conf drop-in loaded "
        f"(expected /etc/systemd/system/{bare.unit}.d/secrets-agent.conf, with "
        f"EnvironmentFile=/run/secrets-agent/{bare.name}/env): run `secrets-agent enable {bare.name}`" in out
    )
    behind = new_app("withdropin")
    behind.write_template('A={{ param("/withdropin/A") }}\n')
    out = machine.run(*doctor, "doctor", behind.name, check=False).stdout.decode()
    assert f"/etc/systemd/system/{behind.unit}.d/secrets-agent.conf is loaded for {behind.unit}" in out
    assert (
        f"passed  drop-in file: {behind.unit} has EnvironmentFile=/run/secrets-agent/{behind.name}/env" in out
    )
