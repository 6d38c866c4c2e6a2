"""A small fleet boot storm: agent processes started at once against an SSM that throttles hard.

The benchmark runs the big one (`make bench`); this one keeps the retry policy from regressing: a
count-bounded policy fails it (an agent gives up). The fleet's pace against the throttle is a speed,
so it is measured by `make bench` (bench/pace.py), not asserted here.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from bench.stack import named_template, parameter_names, random_value
from bench.storm import ThrottlingResponder, TokenBucket, calls_per_agent, run_fleet
from devtools.fakeimds import FakeImds
from devtools.systemd_envfile import parse_env
from tests.integration.moto_server import RecordingProxy
from tests.timing import ManualClock

AGENTS = 8
PARAMETERS = 10  # one GetParameters call per agent
RATE_PER_SECOND = 1.0
BURST = 1.0


def test_token_bucket_lets_through_its_rate_and_no_more() -> None:
    """The bucket starts full, then refills at its rate up to its burst and never beyond."""
    clock = ManualClock(100.0)
    bucket = TokenBucket(2.0, 3.0, clock=clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    clock.now += 0.5
    assert [bucket.take() for _ in range(2)] == [True, False]
    clock.now += 60.0
    assert sum(bucket.take() for _ in range(10)) == 3


@pytest.fixture
def seeded(clean_moto_url: str) -> dict[str, str]:
    """The storm's parameters in moto, by name."""
    client = boto3.client(
        "ssm",
        region_name="eu-west-1",
        endpoint_url=clean_moto_url,
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    values = {name: random_value() for name in parameter_names("/storm/", PARAMETERS)}
    for name, value in values.items():
        client.put_parameter(Name=name, Value=value, Type="SecureString", Overwrite=True)
    return values


@pytest.fixture
def imds_url() -> Iterator[str]:
    """The strict IMDSv2 fake every agent of the fleet asks for credentials."""
    with FakeImds(region="eu-west-1", role="app-role") as imds:
        yield imds.url


def test_throttled_fleet_all_render_with_no_extra_call(
    clean_moto_url: str, seeded: dict[str, str], imds_url: str, tmp_path: Path, tmpfs_path: Path
) -> None:
    """Every agent of a fleet throttled to 1 call/s renders its file, with no extra call let through."""
    config = tmp_path / "etc"
    config.mkdir()
    (config / "app.env.j2").write_text(named_template(seeded), encoding="utf-8")
    responder = ThrottlingResponder(TokenBucket(RATE_PER_SECOND, BURST))
    with RecordingProxy(clean_moto_url, responder) as proxy:
        commands = [
            (
                [sys.executable, "-m", "agent", "render", "app"],
                {
                    "PATH": "/usr/bin:/bin",
                    "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds_url,
                    "AWS_ENDPOINT_URL_SSM": proxy.url,
                    "AWS_CONFIG_FILE": "/dev/null",
                    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
                    "SECRETS_AGENT_CONFIG_DIR": str(config),
                    "SECRETS_AGENT_RUNTIME_DIR": str(tmpfs_path / f"agent-{index}"),
                },
            )
            for index in range(AGENTS)
        ]
        exit_codes, _, _, failures = run_fleet(commands, tmp_path / "logs", timeout_seconds=60)

    assert exit_codes == [0] * AGENTS, failures
    wanted = {name.rsplit("/", 1)[1].upper(): value for name, value in seeded.items()}
    for index in range(AGENTS):
        rendered = (tmpfs_path / f"agent-{index}" / "app" / "env").read_text(encoding="utf-8")
        assert dict(parse_env(rendered)) == wanted
    calls_needed = AGENTS * calls_per_agent(PARAMETERS)
    assert responder.allowed == calls_needed
    # The throttle must have bitten for the test to prove anything about retries.
    assert responder.throttled >= AGENTS
