"""A defect in the agent's own checking code is a bug (exit 1 at once), never an outage retried to
the deadline (exit 7); a body botocore itself cannot read is still retried as not SSM's answer.

The agent runs through its command (agent.cli.main, in process) against moto's server and the fake
IMDS; the defect is injected by replacing one of the agent's own checkers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NoReturn

import pytest
from structlog.testing import capture_logs

import agent.aws.imds
import agent.aws.ssm
from agent.aws.retry import Backoff, Deadline
from agent.aws.ssm import SsmClient
from agent.errors import ServiceUnavailable
from devtools.fakeimds import FakeImds
from tests.integration.cli_harness import run_cli
from tests.integration.moto_server import CannedResponse, RecordingProxy, admin_ssm_client

# Far beyond how long a run that fails at once may take: a defect retried as an outage would run
# the whole minute.
DEADLINE_SECONDS = 60
# A bug must end the run in about the time one render takes; generous for a loaded 2-core machine.
AT_ONCE_SECONDS = 5.0
TEMPLATE = (
    'DB={{ param("/od/app/db") }}\n'
    '{% for name, value in params("/od/paged/").items() %}{{ name | env_name }}={{ value }}\n{% endfor %}'
)
RETRY_EVENTS = frozenset({"ssm_retry", "ssm_throttled", "imds_answer_rejected", "imds_request_failed"})


@dataclass(frozen=True)
class Run:
    """One finished render: exit code, log events, how long it took."""

    code: int
    events: list[dict[str, Any]]
    seconds: float
    stderr: str


@dataclass
class Stack:
    """moto with the template's parameters, the fake IMDS, and the agent's folders."""

    moto_url: str
    imds: FakeImds
    config: Path
    runtime: Path

    def render(self) -> Run:
        """`secrets-agent render app` with a 60 s deadline, debug events on."""
        env = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": self.imds.url, "AWS_ENDPOINT_URL_SSM": self.moto_url}
        done = run_cli(self.config, self.runtime, "--log-format", "json", "-v", "render", "app", env=env)
        events = [json.loads(line) for line in done.err.splitlines() if line.startswith("{")]
        return Run(done.code, events, done.seconds, done.err)

    @property
    def output(self) -> Path:
        return self.runtime / "app" / "env"


@pytest.fixture
def stack(clean_moto_url: str, tmp_path: Path, tmpfs_path: Path) -> Iterator[Stack]:
    """Parameters for the template in moto, a fake IMDS, a config folder with a 60 s deadline."""
    admin = admin_ssm_client(clean_moto_url)
    admin.put_parameter(Name="/od/app/db", Value="db-value", Type="SecureString")
    for index in range(3):
        admin.put_parameter(Name=f"/od/paged/p{index}", Value=f"paged-{index}", Type="SecureString")
    config = tmp_path / "etc"
    config.mkdir()
    (config / "app.env.j2").write_text(TEMPLATE, encoding="utf-8")
    (config / "app.toml").write_text(f"deadline_seconds = {DEADLINE_SECONDS}\n", encoding="utf-8")
    with FakeImds(region="eu-west-1", role="app-role") as imds:
        yield Stack(clean_moto_url, imds, config, tmpfs_path)


def _defect(*_args: Any, **_kwargs: Any) -> NoReturn:
    raise KeyError("a defect in the agent's own code")


def _assert_failed_at_once(run: Run) -> None:
    context = f"exit {run.code} after {run.seconds:.2f} s\n{run.stderr[-3000:]}"
    assert run.code == 1, context
    assert run.seconds < AT_ONCE_SECONDS, context
    assert not RETRY_EVENTS & {str(event.get("event")) for event in run.events}, context
    # The injected defect itself ended the run, reported as the bug it is.
    errors = [str(event.get("error")) for event in run.events if event.get("event") == "unexpected_error"]
    assert errors, context
    assert errors[0].startswith("KeyError in the agent's own code"), context


def test_the_stack_renders_without_a_defect(stack: Stack) -> None:
    """Without an injected defect the same stack renders (so the failures below are the defect's)."""
    run = stack.render()
    assert run.code == 0, run.stderr
    assert stack.output.read_text(encoding="utf-8").splitlines()[0] == 'DB="db-value"'


@pytest.mark.parametrize(
    ("module", "checker"),
    [
        (agent.aws.ssm, "check_get_parameters"),
        (agent.aws.ssm, "check_path_page"),
        (agent.aws.imds, "_parse_role_list"),
        (agent.aws.imds, "_parse_credentials"),
        (agent.aws.imds.ImdsClient, "_parse_region"),
    ],
)
def test_a_defect_in_an_answer_checker_exits_1_at_once(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, module: object, checker: str
) -> None:
    """A checker of SSM's or IMDS's answers that raises KeyError ends the render with exit 1 within
    seconds of a 60 s deadline, with no retry logged and no file written, not exit 7 at the deadline."""
    monkeypatch.setattr(module, checker, _defect)
    run = stack.render()
    _assert_failed_at_once(run)
    assert not stack.output.exists()


# botocore's parser raises AttributeError on this body: a list in SSM's model, an object here.
UNREADABLE = CannedResponse(
    200, b'{"Parameters": {"Name": "not-a-list"}}', (("Content-Type", "application/x-amz-json-1.1"),)
)


def _fast_backoff() -> Backoff:
    return Backoff(base=0.01, cap=0.05)


def _client(url: str, deadline_seconds: float) -> SsmClient:
    return SsmClient(
        region="us-east-1",
        endpoint_url=url,
        credentials=("AKIDTESTTESTTESTTEST", "test-secret-key", "test-session-token"),
        deadline=Deadline(deadline_seconds),
        backoff_factory=_fast_backoff,
    )


def _unreadable_first(count: int) -> Callable[[int, str], Any]:
    def respond(index: int, _action: str) -> Any:
        return UNREADABLE if index < count else None

    return respond


def test_a_body_botocore_cannot_read_is_retried_then_believed(clean_moto_url: str) -> None:
    """Two answers botocore's parser fails on are retried as not SSM's, and the third, SSM's, is used."""
    admin_ssm_client(clean_moto_url, region="us-east-1").put_parameter(
        Name="/od/paged/p0", Value="paged-0", Type="String"
    )
    with RecordingProxy(clean_moto_url, _unreadable_first(2)) as proxy, capture_logs() as logs:
        parameters = _client(proxy.url, 10.0).fetch_path("/od/paged", recursive=False)
    assert [parameter.value for parameter in parameters] == ["paged-0"]
    retries = [entry for entry in logs if entry["event"] == "ssm_retry"]
    assert len(retries) == 2
    assert all("botocore could not read as SSM's (AttributeError)" in entry["error"] for entry in retries)


def test_a_body_botocore_never_reads_ends_as_not_ssms_answer() -> None:
    """Only unreadable bodies until the deadline: exit 7 naming the answer as not SSM's, not exit 1."""
    with (
        RecordingProxy(None, lambda _index, _action: UNREADABLE) as proxy,
        pytest.raises(ServiceUnavailable) as raised,
    ):
        _client(proxy.url, 3.0).fetch_path("/od/paged", recursive=False)
    assert raised.value.exit_code == 7
    assert "the last answer was not SSM's: a body botocore could not read as SSM's" in raised.value.message
    assert len(proxy.actions) > 1
