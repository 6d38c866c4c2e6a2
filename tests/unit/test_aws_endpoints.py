"""Dual-stack and FIPS endpoints by botocore's own rules, offline: the URL the agent will use for SSM,
Secrets Manager and STS is the one a plain botocore client sends its request to, an impossible
combination fails at client creation naming the setting and the region, an explicit endpoint wins."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import botocore.session
import pytest
import structlog.testing
from botocore.config import Config

from agent.aws import endpoints as aws_endpoints
from agent.aws.clients import create_client
from agent.aws.endpoints import EndpointFlags, endpoint_flags, has_ipv4_default_route, is_fips_kernel
from agent.aws.retry import Deadline
from agent.aws.ssm import SsmClient
from agent.config import load_agent_settings
from agent.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
CREDENTIALS = ("AKIDEXAMPLE", "secret-for-signing-only", "")
# US and Canada (FIPS exists), GovCloud, Europe and Asia (no FIPS), China, an ISO partition.
REGIONS = ("us-east-1", "us-west-2", "ca-central-1", "us-gov-west-1", "eu-west-1", "ap-southeast-2",
           "cn-north-1", "us-iso-east-1")  # fmt: skip
COMBINATIONS = [(False, False), (True, False), (False, True), (True, True)]
CALLS = {
    "ssm": ("get_parameters", {"Names": ["/x"]}),
    "secretsmanager": ("get_secret_value", {"SecretId": "x"}),
    "sts": ("get_caller_identity", {}),
}


@pytest.fixture(autouse=True)
def _botocore_sees_no_endpoint_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/conftest.py points AWS_ENDPOINT_URL at a dead local port, and botocore reads it itself:
    these tests compare AWS's own URLs, and stop every request before it is sent."""
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)


class _Sent(Exception):
    """Raised from botocore's before-send event: the request went no further than its URL."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


def _url_of_first_request(client: Any, service: str) -> str:
    """Where `client` sends its first request, caught before anything leaves the process."""

    def stop(request: Any, **_kwargs: Any) -> None:
        raise _Sent(request.url)

    client.meta.events.register("before-send", stop)
    operation, params = CALLS[service]
    with pytest.raises(_Sent) as sent:
        getattr(client, operation)(**params)
    # The endpoint without the path (SSM and STS post to "/").
    return sent.value.url.rstrip("/")


def _botocore_url(service: str, region: str, dualstack: bool, fips: bool) -> str:
    """What plain botocore does with these flags (STS regional), no agent code involved."""
    session = botocore.session.Session()
    session.set_config_variable("sts_regional_endpoints", "regional")
    client = session.create_client(
        service,
        region_name=region,
        aws_access_key_id=CREDENTIALS[0],
        aws_secret_access_key=CREDENTIALS[1],
        config=Config(
            use_dualstack_endpoint=dualstack,
            use_fips_endpoint=fips,
            retries={"total_max_attempts": 1, "mode": "standard"},
        ),
    )
    return _url_of_first_request(client, service)


def _env(dualstack: bool, fips: bool) -> dict[str, str]:
    return {"AWS_USE_DUALSTACK_ENDPOINT": str(dualstack).lower(), "AWS_USE_FIPS_ENDPOINT": str(fips).lower()}


def _agent_client(
    service: str,
    region: str,
    env: dict[str, str],
    tmp: Path = Path("/nonexistent"),
) -> Any:
    settings = load_agent_settings(env, config_dir=str(tmp))
    return create_client(
        service,
        region=region,
        endpoint_url=None,
        credentials=CREDENTIALS,
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
        flags=endpoint_flags(settings),
    )


def _has_fips(service: str, region: str) -> bool:
    return region in aws_endpoints.fips_regions(botocore.session.Session(), service)


@pytest.mark.parametrize("service", sorted(CALLS))
@pytest.mark.parametrize("region", REGIONS)
@pytest.mark.parametrize(("dualstack", "fips"), COMBINATIONS)
def test_agent_url_is_botocores_or_the_combination_fails_naming_setting_and_region(
    service: str, region: str, dualstack: bool, fips: bool
) -> None:
    """For each region and dual-stack x FIPS, the agent's client requests the URL plain botocore
    requests (and says so before any call); where botocore lists no FIPS endpoint, or its rules
    refuse the combination, creation fails naming the setting and the region."""
    env = _env(dualstack, fips)
    try:
        expected: Optional[str] = _botocore_url(service, region, dualstack, fips)
    except Exception as refused:  # botocore's rules refuse the partition's combination
        expected = None
        reason = str(refused)
    if fips and not _has_fips(service, region):
        expected, reason = None, "no FIPS endpoint"
    if expected is None:
        with pytest.raises(ConfigError) as failed:
            _agent_client(service, region, env)
        message = failed.value.message
        assert region in message
        assert "AWS_USE_FIPS_ENDPOINT=true" in message or "AWS_USE_DUALSTACK_ENDPOINT=true" in message, reason
        assert "use_fips_endpoint = false" in message or "use_dualstack_endpoint" in message
        return
    assert expected.startswith("https://")
    assert f".{region}." in expected
    client = _agent_client(service, region, env)
    assert aws_endpoints.resolved_endpoint(client) == expected
    assert _url_of_first_request(client, service) == expected


def test_fips_outside_the_us_and_canada_fails_before_any_call_with_exit_2() -> None:
    """use_fips_endpoint = true in eu-west-1: SsmClient refuses at creation (ConfigError, exit 2), naming
    the setting in agent.toml and the region, and listing where FIPS endpoints exist."""
    settings = load_agent_settings({"AWS_USE_FIPS_ENDPOINT": "true"}, config_dir="/nonexistent")
    with pytest.raises(ConfigError) as failed:
        SsmClient(
            region="eu-west-1",
            endpoint_url=None,
            credentials=CREDENTIALS,
            deadline=Deadline(5),
            endpoint_flags=endpoint_flags(settings),
        )
    assert failed.value.exit_code == 2
    message = failed.value.message
    assert message.startswith(
        "AWS_USE_FIPS_ENDPOINT=true in the environment: AWS has no FIPS endpoint for SSM in"
    )
    assert "region eu-west-1" in message
    assert "us-east-1" in message
    assert "set use_fips_endpoint = false in agent.toml" in message


def test_fips_auto_falls_back_to_the_standard_endpoint_with_one_warning() -> None:
    """use_fips_endpoint = auto on a FIPS kernel: eu-west-1 (no FIPS endpoint) gets the standard
    endpoint and one warning instead of exit 2; us-east-1 gets the FIPS one; the client says why."""
    auto = EndpointFlags(
        False, True, "not asked", "use_fips_endpoint = auto in agent.toml: FIPS kernel", fips_is_auto=True
    )
    with structlog.testing.capture_logs() as logs:
        eu = SsmClient(
            region="eu-west-1",
            endpoint_url=None,
            credentials=CREDENTIALS,
            deadline=Deadline(5),
            endpoint_flags=auto,
        )
    assert eu.endpoint == "https://ssm.eu-west-1.amazonaws.com"
    assert eu.endpoint_flags.fips is False
    assert (
        "no FIPS endpoint for SSM in region eu-west-1, so the standard one" in eu.endpoint_flags.fips_reason
    )
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert [entry["event"] for entry in warnings] == ["fips_endpoint_unavailable"]
    us = SsmClient(
        region="us-east-1",
        endpoint_url=None,
        credentials=CREDENTIALS,
        deadline=Deadline(5),
        endpoint_flags=auto,
    )
    assert us.endpoint == "https://ssm-fips.us-east-1.amazonaws.com"
    assert us.endpoint_flags == auto
    # Control: the same region with FIPS asked for explicitly (not auto) still fails with exit 2.
    with pytest.raises(ConfigError):
        SsmClient(
            region="eu-west-1",
            endpoint_url=None,
            credentials=CREDENTIALS,
            deadline=Deadline(5),
            endpoint_flags=EndpointFlags(False, True, "not asked", "use_fips_endpoint = true"),
        )


def test_setting_in_agent_toml_is_named_in_the_error(tmp_path: Path) -> None:
    """The error names agent.toml's own line when that is where FIPS was asked for."""
    (tmp_path / "agent.toml").write_text("use_fips_endpoint = true\n")
    with pytest.raises(ConfigError) as failed:
        _agent_client("ssm", "ap-southeast-2", {}, tmp=tmp_path)
    assert failed.value.message.startswith(f"use_fips_endpoint = true in {tmp_path}/agent.toml: ")
    assert "region ap-southeast-2" in failed.value.message


@pytest.mark.parametrize(("dualstack", "fips"), COMBINATIONS)
@pytest.mark.parametrize("how", ["AWS_ENDPOINT_URL_SSM", "AWS_ENDPOINT_URL", "ssm_endpoint"])
def test_explicit_ssm_endpoint_wins_over_every_mode(
    tmp_path: Path, how: str, dualstack: bool, fips: bool
) -> None:
    """An explicit SSM endpoint (variable or agent.toml) is where requests go, whatever dual-stack
    and FIPS say, even in a region without FIPS endpoints."""
    url = "http://127.0.0.1:4566"
    env = _env(dualstack, fips)
    if how == "ssm_endpoint":
        (tmp_path / "agent.toml").write_text(f'ssm_endpoint = "{url}"\n')
    else:
        env[how] = url
    settings = load_agent_settings(env, config_dir=str(tmp_path))
    assert settings.ssm_endpoint == url
    client = SsmClient(
        region="eu-west-1",
        endpoint_url=settings.ssm_endpoint,
        credentials=CREDENTIALS,
        deadline=Deadline(5),
        endpoint_flags=endpoint_flags(settings),
    )
    assert client.endpoint == url
    assert _url_of_first_request(client._caller._client, "ssm") == url


def test_sts_is_regional_even_in_us_east_1() -> None:
    """STS goes to the region's own endpoint, never the global sts.amazonaws.com."""
    client = _agent_client("sts", "us-east-1", _env(False, False))
    assert _url_of_first_request(client, "sts") == "https://sts.us-east-1.amazonaws.com"


def _routes(tmp_path: Path, *rows: str) -> Path:
    path = tmp_path / "route"
    header = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


DEFAULT_ROUTE = "eth0\t00000000\t0100000A\t0003\t0\t0\t0\t00000000\t0\t0\t0"
LINK_ROUTE = "eth0\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0"
DOWN_DEFAULT_ROUTE = "eth0\t00000000\t0100000A\t0002\t0\t0\t0\t00000000\t0\t0\t0"


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ((DEFAULT_ROUTE, LINK_ROUTE), True),
        ((LINK_ROUTE,), False),
        ((), False),
        ((DOWN_DEFAULT_ROUTE,), False),
    ],
)
def test_ipv4_default_route_is_read_from_the_routing_table(
    tmp_path: Path, rows: tuple[str, ...], expected: bool
) -> None:
    """Only an up route to 0.0.0.0/0 counts as an IPv4 default route."""
    assert has_ipv4_default_route(_routes(tmp_path, *rows)) is expected


def test_fips_is_off_by_default_even_on_a_fips_kernel(tmp_path: Path) -> None:
    """use_fips_endpoint defaults to false, as in every AWS SDK: a FIPS-mode kernel alone never turns
    FIPS endpoints on (dual-stack stays auto by default)."""
    settings = load_agent_settings({}, config_dir=str(tmp_path))
    fips = tmp_path / "fips_enabled"
    fips.write_text("1\n")
    flags = endpoint_flags(settings, routes_path=_routes(tmp_path, LINK_ROUTE), fips_path=fips)
    assert (flags.dualstack, flags.fips) == (True, False)
    assert flags.fips_reason == "use_fips_endpoint = false (default)"
    assert flags.fips_is_auto is False


def test_auto_chooses_dual_stack_without_ipv4_and_fips_on_a_fips_kernel(tmp_path: Path) -> None:
    """auto (dual-stack's default, FIPS's opt-in): dual-stack when the host has no IPv4 default route,
    FIPS when the kernel says fips_enabled = 1; each reason says which file decided."""
    (tmp_path / "agent.toml").write_text('use_fips_endpoint = "auto"\n')
    settings = load_agent_settings({}, config_dir=str(tmp_path))
    fips = tmp_path / "fips_enabled"
    fips.write_text("1\n")
    flags = endpoint_flags(settings, routes_path=_routes(tmp_path, LINK_ROUTE), fips_path=fips)
    assert (flags.dualstack, flags.fips) == (True, True)
    assert flags.dualstack_reason == (
        f"use_dualstack_endpoint = auto (default): this host has no IPv4 default route ({tmp_path}/route)"
    )
    assert flags.fips_reason == (
        f"use_fips_endpoint = auto in {tmp_path}/agent.toml: the kernel runs in FIPS mode ({fips} is 1)"
    )
    fips.write_text("0\n")
    flags = endpoint_flags(settings, routes_path=_routes(tmp_path, DEFAULT_ROUTE), fips_path=fips)
    assert (flags.dualstack, flags.fips) == (False, False)
    missing = tmp_path / "absent"
    flags = endpoint_flags(settings, routes_path=missing, fips_path=missing)
    assert (flags.dualstack, flags.fips) == (False, False)
    assert "unreadable" in flags.dualstack_reason
    assert "unreadable" in flags.fips_reason
    assert is_fips_kernel(missing) is None


def test_explicit_values_beat_auto_and_environment_beats_the_file(tmp_path: Path) -> None:
    """true/false are taken as they are, whatever the host; the environment wins over agent.toml."""
    (tmp_path / "agent.toml").write_text('use_dualstack_endpoint = true\nuse_fips_endpoint = "auto"\n')
    routes = _routes(tmp_path, DEFAULT_ROUTE)
    flags = endpoint_flags(load_agent_settings({}, config_dir=str(tmp_path)), routes_path=routes)
    assert flags.dualstack is True
    assert flags.dualstack_reason == f"use_dualstack_endpoint = true in {tmp_path}/agent.toml"
    env = {"AWS_USE_DUALSTACK_ENDPOINT": "FALSE", "AWS_USE_FIPS_ENDPOINT": "true"}
    flags = endpoint_flags(load_agent_settings(env, config_dir=str(tmp_path)), routes_path=routes)
    assert flags == EndpointFlags(
        False,
        True,
        "AWS_USE_DUALSTACK_ENDPOINT=false in the environment",
        "AWS_USE_FIPS_ENDPOINT=true in the environment",
    )


@pytest.mark.parametrize("unit", ["secrets-agent@.service", "secrets-agent-refresh@.service"])
def test_units_allow_ipv6_and_can_read_what_auto_reads(unit: str) -> None:
    """The units keep AF_INET6 (IPv6-only hosts) and no ProcSubset=pid, which would hide
    /proc/sys/crypto/fips_enabled and /proc/net/route from the auto modes."""
    lines = (REPO / "systemd" / unit).read_text().splitlines()
    families = [
        line.split("=", 1)[1].split() for line in lines if line.startswith("RestrictAddressFamilies=")
    ]
    assert families == [["AF_INET", "AF_INET6", "AF_UNIX"]]
    assert not [line for line in lines if line.startswith("ProcSubset=")]


def test_secrets_manager_client_follows_the_modes_and_its_own_endpoint_setting(tmp_path: Path) -> None:
    """secret()'s client resolves dual-stack and FIPS as SSM's does; secretsmanager_endpoint in
    agent.toml wins over the modes, and AWS_ENDPOINT_URL_SECRETS_MANAGER over the file."""
    from agent.aws.retry import Deadline
    from agent.render import AwsAccess, secretsmanager_client

    access = AwsAccess(region="us-east-1", credentials=CREDENTIALS, role=None)
    both = _env(True, True)
    settings = load_agent_settings(both, config_dir=str(tmp_path))
    client = secretsmanager_client(settings, Deadline(5.0), access)
    assert client.endpoint == _botocore_url("secretsmanager", "us-east-1", True, True)
    (tmp_path / "agent.toml").write_text('secretsmanager_endpoint = "http://127.0.0.1:9"\n')
    settings = load_agent_settings(both, config_dir=str(tmp_path))
    assert secretsmanager_client(settings, Deadline(5.0), access).endpoint == "http://127.0.0.1:9"
    settings = load_agent_settings(
        {**both, "AWS_ENDPOINT_URL_SECRETS_MANAGER": "http://127.0.0.1:8"}, config_dir=str(tmp_path)
    )
    assert secretsmanager_client(settings, Deadline(5.0), access).endpoint == "http://127.0.0.1:8"
