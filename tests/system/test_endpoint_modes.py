"""IPv6-only and IPv4-only hosts under a real systemd 252 and 257 (Debian 12 and 13): with no IMDS
setting at all, imds_endpoint_mode's default (auto) finds IMDS at whichever address the host can
reach, the app starts with every value byte for byte and `doctor` names the address that answered.

The machine boots in a network namespace of its own (devtools/netns.py) whose only link leads
to a namespace of fakes: nothing reaches the host, 169.254.169.254 or AWS. SSM's endpoint is set in
agent.toml to the stand-in's address (moto's server is not AWS, so botocore's endpoint rules cannot
find it); the IMDS side runs on the default, with no setting.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from nspawn import Machine
from system_helpers import MARK, REGION, ROLE, install_app, put

from devtools.fakeimds import FakeImds
from devtools.netns import (
    IPV4_IMDS,
    IPV4_SSM,
    IPV6_IMDS,
    IPV6_SSM,
    MACHINE_SIDE,
    Pair,
    inside,
    serve_moto,
)
from tests.hard_values import hard_values, template_lines, tier_for

pytestmark = pytest.mark.system

HARD_VALUES = hard_values(MARK)
SSM_PORT = 5000


@contextmanager
def fakes_in(pair: Pair, imds_address: str, ssm_address: str) -> Iterator[tuple[FakeImds, str]]:
    """The IMDSv2 fake on IMDS's own port 80 at `imds_address` and moto's server at `ssm_address`,
    both inside the fakes' namespace; moto shares its state with the session's, where `ssm` writes."""
    imds = FakeImds(
        host=imds_address,
        port=80,
        region=REGION,
        role=ROLE,
        secret_access_key=f"imds-secret-key-{MARK}",
        session_token=f"imds-session-token-{MARK}",
    )
    inside(pair.fakes, imds.start)
    try:
        moto = inside(pair.fakes, lambda: serve_moto(ssm_address, SSM_PORT))
        host = f"[{ssm_address}]" if ":" in ssm_address else ssm_address
        try:
            yield imds, f"http://{host}:{SSM_PORT}"
        finally:
            moto.shutdown()
            moto.server_close()
    finally:
        imds.stop()


def _start_app_with_every_hard_value(machine: Machine, ssm: Any, ssm_url: str, name: str) -> str:
    """Point the agent at the SSM stand-in only, start NAME behind it, check its environ; the app's name."""
    machine.path("/etc/secrets-agent/agent.toml").write_text(
        "# The SSM stand-in is moto's server, not AWS: its address has to be named. IMDS is not.\n"
        f'ssm_endpoint = "{ssm_url}"\n'
    )
    app = install_app(machine, name)
    for key, value in HARD_VALUES.items():
        put(ssm, f"{app.prefix}/{key}", value, tier=tier_for(value).get("Tier"))
    app.write_template(template_lines(app.prefix, HARD_VALUES))
    result = machine.systemctl("start", app.unit, check=False)
    journal = machine.journal(unit=app.agent_unit)
    assert result.returncode == 0, journal
    environ = app.environ()
    for key, value in HARD_VALUES.items():
        assert environ.get(key.encode()) == value.encode(), key
    return app.name


def _doctor(machine: Machine, name: str) -> dict[str, str]:
    """`secrets-agent doctor NAME` in the machine, which must pass; its lines by check name."""
    # A clean environment, as an operator's shell on the instance has: no endpoint variable at all.
    clean = ("env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8")
    result = machine.run(*clean, "secrets-agent", "doctor", name, check=False)
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert MARK not in out
    lines = {}
    for line in out.splitlines()[:-1]:
        status, _, rest = line.partition(" ")
        check, _, detail = rest.strip().partition(": ")
        lines[check] = f"{status} {detail}"
    return lines


def test_ipv6_only_host_finds_imds_on_its_ipv6_address_with_no_setting(
    netns_machine: tuple[Machine, Pair], ssm: Any
) -> None:
    """No IPv4 route at all, IMDS on [fd00:ec2::254] only: the app starts with every value byte for
    byte and doctor passes, naming the IPv6 IMDS address and why."""
    machine, pair = netns_machine
    pair.wire_ipv6_only()
    # No IPv4 address and no IPv4 route in the machine, and nothing listens on 169.254.169.254.
    assert pair.in_machine("-4", "route", "show", "table", "main") == ""
    assert "inet " not in pair.in_machine("addr", "show", "dev", MACHINE_SIDE)
    assert machine.text("cat", "/proc/net/route").strip().count("\n") == 0
    with fakes_in(pair, IPV6_IMDS, IPV6_SSM) as (imds, ssm_url):
        name = _start_app_with_every_hard_value(machine, ssm, ssm_url, "v6only")
        assert imds.count("PUT") >= 1
        lines = _doctor(machine, name)
    assert lines["imds address"].startswith(
        "passed http://[fd00:ec2::254], imds_endpoint_mode = auto (default): answered first"
    ), lines["imds address"]
    assert lines["ssm endpoint"].startswith(f"passed {ssm_url} (set by ssm_endpoint in ")
    assert lines["ssm connection"] == f"passed a connection to [{IPV6_SSM}]:{SSM_PORT} opens"


def test_ipv4_only_host_finds_imds_on_169_254_169_254_with_no_setting(
    netns_machine: tuple[Machine, Pair], ssm: Any
) -> None:
    """Today's EC2 (IPv4 and a default route, no IPv6 route to IMDS): the same app starts and doctor
    names http://169.254.169.254."""
    machine, pair = netns_machine
    pair.wire_ipv4_only()
    assert "default via" in pair.in_machine("-4", "route")
    assert "fd00:ec2" not in pair.in_machine("-6", "route")
    with fakes_in(pair, IPV4_IMDS, IPV4_SSM) as (imds, ssm_url):
        name = _start_app_with_every_hard_value(machine, ssm, ssm_url, "v4only")
        assert imds.count("PUT") >= 1
        lines = _doctor(machine, name)
    assert lines["imds address"].startswith(
        "passed http://169.254.169.254, imds_endpoint_mode = auto (default): answered first"
    ), lines["imds address"]
    assert lines["ssm connection"] == f"passed a connection to {IPV4_SSM}:{SSM_PORT} opens"
