"""Fault injection: no fault of SSM or IMDS, nor any answer that only looks like theirs, ever puts a
wrong value (or a default in place of an existing parameter) into the rendered file.

The agent runs through its command (agent.cli.main, in process) against moto's server and the fake
IMDS, each behind a seeded FaultProxy. A failure message carries both proxies' seeds and the fault
given to every request, so the run can be replayed. A DNS failure is met by the command as its own
process, whose glibc resolver asks only a fake DNS server that fails every query
(devtools/fakedns.py).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from agent.aws.retry import Backoff, Deadline
from agent.aws.ssm import SsmClient
from agent.errors import ServiceUnavailable
from agent.host.output import TMP_PREFIX
from devtools.fakedns import FakeDns, resolver_jail
from devtools.fakeimds import FakeImds
from devtools.netns import inside, lone_namespace
from devtools.systemd_envfile import parse_env
from tests.integration.cli_harness import run_cli
from tests.integration.faults import (
    BAD_ANSWER_FAULTS,
    HTML_MARKER,
    IMDS_FAULTS,
    PASS,
    REFUSAL_FAULTS,
    SSM_FAULTS,
    Exchange,
    FaultPair,
    FaultPlan,
    FaultProxy,
    every_request,
    get_parameter_calls,
    later_path_pages,
)
from tests.integration.moto_server import admin_client, admin_ssm_client, reset_moto
from tests.prerequisites import require_command, require_root
from tests.timing import assert_ended_by

REPO = Path(__file__).resolve().parents[2]

# An SSM "slow" needs a read timeout shorter than the agent's 10 s, which only SsmClient's constructor
# sets: the command-level tests leave it out and test_slow_* cover it on the client.
CLI_SSM_FAULTS = tuple(kind for kind in SSM_FAULTS if kind != "slow")
# A slow IMDS answer costs the agent's whole 2 s IMDS timeout: the 20 renders of property 1 leave it
# out, the other properties keep it (cut short by their 1 s deadline).
QUICK_IMDS_FAULTS = tuple(kind for kind in IMDS_FAULTS if kind != "slow")
# The shortest deadline_seconds the agent accepts: runs that must fail cost one second each.
DEADLINE_SECONDS = 1.0
# The throttled budget (throttle_deadline_seconds) where throttling runs out, and one far beyond the
# short deadline where other faults must end at the short one all the same.
THROTTLED_BUDGET_SECONDS = 2.0
UNUSED_THROTTLED_BUDGET_SECONDS = 8.0
# How long a "slow" answer is held: past the 0.3 s read timeout of the clients that test it.
SLOW_ANSWER_SECONDS = 1.0
# Past the agent's 2 s IMDS timeout (the agent also cuts it to what is left of the deadline).
SLOW_IMDS_SECONDS = 2.5
# A deadline no healthy run comes near, for runs that must succeed.
GENEROUS_DEADLINE_SECONDS = 30.0
# Property 3's examples: few in `make test`; raise it for a soak run (the examples stay derandomized).
FAULT_MIX_EXAMPLES = int(os.environ.get("SECRETS_AGENT_FAULT_EXAMPLES", "10"))

API_VERSIONS = ("api-key-one", "api-key-two 'live' $HOME", "api-key-three\nEVIL=1")
PAGED = {f"/fi/paged/p{i:02d}": f'paged-{i:02d} "q" `id` \\ {"x" * i}' for i in range(23)}
EXISTING = {
    "/fi/app/db": "postgres://app:p@ss'w\"rd$HOME`id`\\x@db:5432/app?x=1#frag",
    "/fi/app/optional": "present, not the default",
    "/fi/app/unicode": "  sk_live_ünïcødé-🔑 ; # = ",
}
TEMPLATE = (
    "# every selector kind, a default on an existing and on an absent parameter, a paged path\n"
    'DB={{ param("/fi/app/db") }}\n'
    'UNICODE={{ param("/fi/app/unicode") }}\n'
    'API={{ param("/fi/app/api") }}\n'
    'API_V1={{ param("/fi/app/api:1") }}\n'
    'API_LIVE={{ param("/fi/app/api:live") }}\n'
    'OPTIONAL={{ param("/fi/app/optional", default="fallback-must-not-appear") }}\n'
    'ABSENT={{ param("/fi/app/absent", default="absent-default") }}\n'
    '{% for name, value in params("/fi/paged/").items() %}{{ name | env_name }}={{ value }}\n{% endfor %}'
)
EXPECTED = {
    "DB": EXISTING["/fi/app/db"],
    "UNICODE": EXISTING["/fi/app/unicode"],
    "API": API_VERSIONS[2],
    "API_V1": API_VERSIONS[0],
    "API_LIVE": API_VERSIONS[1],
    "OPTIONAL": EXISTING["/fi/app/optional"],
    "ABSENT": "absent-default",
    **{name.rsplit("/", 1)[1].upper(): value for name, value in PAGED.items()},
}
SECRETS = [*EXISTING.values(), *API_VERSIONS, *PAGED.values()]


@dataclass(frozen=True)
class Run:
    """One finished command: exit code, log lines and how long it took."""

    code: int
    stdout: str
    stderr: str
    seconds: float

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines."""
        return [json.loads(line) for line in self.stderr.splitlines() if line.startswith("{")]

    def error(self) -> str:
        """The message of the failure line, "" when none was logged."""
        failed = ("render_failed", "check_failed")
        return next((str(e.get("error", "")) for e in self.events() if e.get("event") in failed), "")


# The rendered file's bytes (None when absent) and the names in its folder.
Snapshot = tuple[Optional[bytes], list[str]]


@dataclass
class Agent:
    """A config dir with the template, a tmpfs runtime dir, and the proxies' URLs."""

    config: Path
    runtime: Path
    faults: FaultPair
    # Set by a test of DNS failures (_resolve_through): the command then runs as its own process after
    # this argv prefix (a mount namespace whose resolver asks only the fake DNS server), against
    # `ssm_url`, whose host only DNS could resolve.
    resolver: Optional[list[str]] = None
    ssm_url: Optional[str] = None

    @property
    def output(self) -> Path:
        return self.runtime / "app" / "env"

    def render(
        self,
        deadline_seconds: float,
        throttled_seconds: Optional[float] = None,
        command: str = "render",
        *,
        on_outage: str = "fail",
        env: Optional[dict[str, str]] = None,
    ) -> Run:
        """Run the command with these deadlines (the throttled budget defaults to the short one) and
        on_outage ("fail" unless a test is about the fallback: these tests are about the render)."""
        self.configure(deadline_seconds, throttled_seconds, on_outage=on_outage)
        env = {
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": self.faults.imds.url,
            "AWS_ENDPOINT_URL_SSM": self.ssm_url or self.faults.ssm.url,
            **(env or {}),
        }
        if self.resolver is not None:
            return self.run_process(command, env, prefix=self.resolver)
        return Run(*run_cli(self.config, self.runtime, command, "app", env=env))

    def run_process(self, command: str, env: dict[str, str], prefix: Sequence[str] = ()) -> Run:
        """`python -m agent COMMAND app` as its own process (after the argv `prefix`), with `env`
        beside PATH, this checkout and no AWS config file."""
        environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(REPO),
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            **env,
        }
        args = ["--config-dir", str(self.config), "--runtime-dir", str(self.runtime), command, "app"]
        started = time.monotonic()
        result = subprocess.run(
            [*prefix, sys.executable, "-m", "agent", *args],
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return Run(result.returncode, result.stdout, result.stderr, time.monotonic() - started)

    def configure(
        self, deadline_seconds: float, throttled_seconds: Optional[float] = None, *, on_outage: str = "fail"
    ) -> None:
        """Write app.toml with the short deadline, the throttled budget and on_outage."""
        (self.config / "app.toml").write_text(
            f"deadline_seconds = {deadline_seconds}\n"
            f"throttle_deadline_seconds = {throttled_seconds or deadline_seconds}\n"
            f'on_outage = "{on_outage}"\n'
        )

    def rendered(self) -> dict[str, str]:
        return dict(parse_env(self.output.read_bytes().decode("utf-8")))

    def folder(self) -> list[str]:
        folder = self.output.parent
        return sorted(p.name for p in folder.iterdir()) if folder.exists() else []

    def snapshot(self) -> Snapshot:
        """The rendered file's bytes (None when absent) and the folder's entries."""
        return (self.output.read_bytes() if self.output.exists() else None), self.folder()


@dataclass
class World:
    """moto with the parameters created once, the fake IMDS, and a fault proxy in front of each."""

    faults: FaultPair


@pytest.fixture(scope="module")
def world(moto_url: str) -> Iterator[World]:
    """Parameters in moto (three versions and a label, a path of three pages), proxies started."""
    reset_moto(moto_url)
    admin = admin_ssm_client(moto_url)
    for name, value in [*EXISTING.items(), *PAGED.items()]:
        admin.put_parameter(Name=name, Value=value, Type="SecureString")
    for value in API_VERSIONS:
        admin.put_parameter(Name="/fi/app/api", Value=value, Type="SecureString", Overwrite=True)
    admin.label_parameter_version(Name="/fi/app/api", ParameterVersion=2, Labels=["live"])
    imds = FakeImds(region="eu-west-1", role="app-role")
    imds_url = imds.start()
    ssm_proxy = FaultProxy(moto_url, slow_seconds=SLOW_ANSWER_SECONDS)
    imds_proxy = FaultProxy(imds_url, expire_tokens=imds.expire_tokens, slow_seconds=SLOW_IMDS_SECONDS)
    ssm_proxy.start()
    imds_proxy.start()
    try:
        yield World(FaultPair(ssm_proxy, imds_proxy))
    finally:
        ssm_proxy.stop()
        imds_proxy.stop()
        imds.stop()


@pytest.fixture
def agent(world: World, tmp_path: Path, tmpfs_path: Path) -> Agent:
    """The agent's folders for one test, with no fault in force."""
    world.faults.set()
    config = tmp_path / "etc"
    config.mkdir()
    (config / "app.env.j2").write_text(TEMPLATE, encoding="utf-8")
    return Agent(config=config, runtime=tmpfs_path, faults=world.faults)


def _render_good(agent: Agent) -> Snapshot:
    """A fault-free render, whose file (and folder) later failures must keep intact."""
    agent.faults.set()
    run = agent.render(GENEROUS_DEADLINE_SECONDS)
    assert run.code == 0, run.stderr
    assert agent.rendered() == EXPECTED
    return agent.snapshot()


def _assert_sound(agent: Agent, run: Run, before: Snapshot) -> None:
    """The properties every run keeps, whatever the faults: exit 0 with SSM's exact values, or exit 7
    with the folder as it was before (an earlier file intact); no temporary file; no value or body
    content in the log."""
    context = f"exit {run.code} after {run.seconds:.2f} s\n{agent.faults.describe()}\n{run.stderr[-3000:]}"
    assert run.code in (0, 7), context
    if run.code == 0:
        assert agent.rendered() == EXPECTED, context
    else:
        assert agent.snapshot() == before, context
    assert not [name for name in agent.folder() if name.startswith(TMP_PREFIX)], context
    assert HTML_MARKER not in run.stderr, context
    leaked = [value for value in SECRETS if value in run.stderr]
    assert not leaked, context


def _plan(side: str, kinds: tuple[str, ...], rate: float, seed: int, **extra: Any) -> dict[str, FaultPlan]:
    return {side: FaultPlan(kinds=kinds, rate=rate, seed=seed, **extra)}


# -- property 1: a 30% fault rate of every kind is survived, with every value exact ----------------


def test_thirty_percent_of_every_fault_still_renders_exact_values_twenty_times(agent: Agent) -> None:
    """At a 30% rate of every fault on SSM and IMDS, 20 renders in a row exit 0 with every value exact."""
    given = {"ssm": 0, "imds": 0}
    for render in range(20):
        agent.faults.set(
            ssm=FaultPlan(kinds=CLI_SSM_FAULTS, rate=0.3, seed=1000 + render),
            imds=FaultPlan(kinds=QUICK_IMDS_FAULTS, rate=0.3, seed=2000 + render),
        )
        run = agent.render(GENEROUS_DEADLINE_SECONDS)
        context = f"render {render}: exit {run.code}\n{agent.faults.describe()}\n{run.stderr[-3000:]}"
        assert run.code == 0, context
        assert agent.rendered() == EXPECTED, context
        given["ssm"] += len(agent.faults.ssm.faults_given())
        given["imds"] += len(agent.faults.imds.faults_given())
    # The faults were really there: some 30% of the requests on each side.
    assert given["ssm"] >= 10, given
    assert given["imds"] >= 10, given


# -- property 2: at 100% of one kind the agent exits 7 at its deadline, nothing lost --------------


@pytest.mark.parametrize(
    ("side", "kind"),
    [("ssm", kind) for kind in CLI_SSM_FAULTS] + [("imds", kind) for kind in IMDS_FAULTS],
)
def test_every_answer_faulty_exits_7_at_the_deadline_and_keeps_the_good_file(
    agent: Agent, side: str, kind: str
) -> None:
    """With every answer of one side faulty, render exits 7 at its deadline (never 0 or 4), names the
    endpoint without quoting the body, keeps the earlier file byte for byte and leaves no temp file."""
    before = _render_good(agent)
    agent.faults.set(**_plan(side, (kind,), 1.0, seed=7))
    # Throttling runs out at the throttled budget; every other fault at the short deadline, however
    # long the throttled budget.
    is_throttling = kind == "throttling"
    throttled = THROTTLED_BUDGET_SECONDS if is_throttling else UNUSED_THROTTLED_BUDGET_SECONDS
    ends = THROTTLED_BUDGET_SECONDS if is_throttling else DEADLINE_SECONDS
    run = agent.render(DEADLINE_SECONDS, throttled)
    ended = time.monotonic()
    context = (
        f"{side} {kind}: exit {run.code} after {run.seconds:.2f} s\n{agent.faults.describe()}\n{run.stderr}"
    )
    assert run.code == 7, context
    # Not before the short deadline, not after its own; test_throttling_is_not_cut_short_* pins the
    # throttled budget down with a backoff that is not random.
    assert run.seconds >= DEADLINE_SECONDS - 0.05, context
    proxy = agent.faults.ssm if side == "ssm" else agent.faults.imds
    # Measured from the first request to the faulty side: the deadline runs from before it, and what
    # comes before it (credentials, botocore's client) is not what this test is about.
    assert_ended_by(ended - proxy.injections[0].at, ends, context)
    assert agent.snapshot() == before, context
    assert proxy.faults_given(), context
    assert proxy.url in run.error(), context
    if kind in BAD_ANSWER_FAULTS:
        assert ("not SSM's" if side == "ssm" else "no valid answer") in run.error(), context
    _assert_sound(agent, run, before)


def test_the_command_itself_exits_7_on_answers_that_are_not_ssms(agent: Agent) -> None:
    """`python -m agent render` as its own process, every SSM answer a proxy's page: exit 7 at the
    deadline, the earlier file intact, the endpoint named and the page never quoted."""
    before = _render_good(agent)
    agent.faults.set(ssm=FaultPlan(kinds=("html_200",), rate=1.0, seed=17))
    agent.configure(DEADLINE_SECONDS)
    env = {
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": agent.faults.imds.url,
        "AWS_ENDPOINT_URL_SSM": agent.faults.ssm.url,
    }
    run = agent.run_process("render", env)
    context = f"exit {run.code}\n{agent.faults.describe()}\n{run.stderr}"
    assert run.code == 7, context
    assert agent.faults.ssm.url in run.error(), context
    assert "not SSM's" in run.error(), context
    _assert_sound(agent, run, before)


def test_an_ssm_that_never_answers_ends_at_the_deadline_not_the_read_timeout(agent: Agent) -> None:
    """When SSM accepts the request and never answers, render exits 7 at its deadline, not after
    botocore's 10 s read timeout."""
    before = _render_good(agent)
    agent.faults.ssm.slow_seconds = 30.0
    agent.faults.set(ssm=FaultPlan(kinds=("slow",), rate=1.0, seed=23))
    try:
        run = agent.render(DEADLINE_SECONDS)
        ended = time.monotonic()
    finally:
        agent.faults.ssm.slow_seconds = SLOW_ANSWER_SECONDS
    context = f"exit {run.code} after {run.seconds:.2f} s\n{agent.faults.describe()}\n{run.error()}"
    assert run.code == 7, context
    # From the first SSM request, as above.
    assert_ended_by(ended - agent.faults.ssm.injections[0].at, DEADLINE_SECONDS, context)
    _assert_sound(agent, run, before)


@pytest.mark.parametrize("kind", ["html_200", "wrong_shape", "truncated_json"])
def test_check_never_reports_an_answer_that_is_not_ssms(agent: Agent, kind: str) -> None:
    """`check` with every SSM answer bad exits 7 naming the endpoint and lists no parameter, neither as
    resolved nor as missing."""
    agent.faults.set(**_plan("ssm", (kind,), 1.0, seed=13))
    run = agent.render(DEADLINE_SECONDS, command="check")
    context = f"{kind}: exit {run.code}\n{agent.faults.describe()}\n{run.stdout}\n{run.stderr}"
    assert run.code == 7, context
    assert run.stdout == "", context
    assert "parameters_missing" not in [event.get("event") for event in run.events()], context
    assert "not SSM's" in run.error(), context
    assert agent.folder() == [], context


# -- property 4: faults on later pages of a path, selectors and defaults in the same template -----


# Transport faults on a later page take the same path as on the first; these are the kinds whose
# damage is in the page itself.
@pytest.mark.parametrize(
    "kind", ["throttling", "reset_mid_body", "html_200", "wrong_shape", "truncated_json"]
)
def test_faulty_later_pages_of_a_path_exit_7_and_keep_the_good_file(agent: Agent, kind: str) -> None:
    """When only pages after the first of GetParametersByPath are faulty, render exits 7 at its
    deadline and never writes a partial mapping."""
    before = _render_good(agent)
    agent.faults.set(**_plan("ssm", (kind,), 1.0, seed=11, applies=later_path_pages))
    run = agent.render(DEADLINE_SECONDS)
    context = f"{kind}: exit {run.code} after {run.seconds:.2f} s\n{agent.faults.describe()}\n{run.stderr}"
    assert agent.faults.ssm.faults_given(), context  # the path really has later pages
    assert run.code == 7, context
    _assert_sound(agent, run, before)


def test_half_of_later_pages_faulty_still_renders_the_whole_path(agent: Agent) -> None:
    """At a 50% rate of every fault on later pages only, six renders exit 0 with every value exact."""
    for render in range(6):
        agent.faults.set(**_plan("ssm", CLI_SSM_FAULTS, 0.5, seed=300 + render, applies=later_path_pages))
        run = agent.render(GENEROUS_DEADLINE_SECONDS)
        context = f"render {render}: exit {run.code}\n{agent.faults.describe()}\n{run.stderr[-3000:]}"
        assert run.code == 0, context
        assert agent.rendered() == EXPECTED, context


# -- a role that may only call ssm:GetParameter: the one-by-one fallback under the same faults -----


@pytest.fixture
def get_parameter_only(agent: Agent) -> Iterator[Agent]:
    """The agent against an SSM that refuses ssm:GetParameters, so it fetches name by name."""
    agent.faults.ssm.denied_actions = frozenset({"GetParameters"})
    try:
        yield agent
    finally:
        agent.faults.ssm.denied_actions = frozenset()


def test_the_get_parameter_fallback_survives_thirty_percent_faults(get_parameter_only: Agent) -> None:
    """Fetching one name a call (ssm:GetParameters denied), five renders at a 30% rate of every SSM
    fault exit 0 with every value exact."""
    agent = get_parameter_only
    given: list[str] = []
    for render in range(5):
        agent.faults.set(ssm=FaultPlan(kinds=CLI_SSM_FAULTS, rate=0.3, seed=700 + render))
        run = agent.render(GENEROUS_DEADLINE_SECONDS)
        context = f"render {render}: exit {run.code}\n{agent.faults.describe()}\n{run.stderr[-3000:]}"
        assert "GetParameter" in [i.target for i in agent.faults.ssm.injections], context
        assert run.code == 0, context
        assert agent.rendered() == EXPECTED, context
        given += agent.faults.ssm.faults_given()
    assert len(given) >= 5, given


@pytest.mark.parametrize("kind", ["html_200", "wrong_shape", "truncated_json"])
def test_bad_get_parameter_answers_exit_7_and_keep_the_good_file(
    get_parameter_only: Agent, kind: str
) -> None:
    """Fetching one name a call, every GetParameter answer bad: exit 7 naming the endpoint, never a
    default in place of the parameter nor "missing", the earlier file intact."""
    agent = get_parameter_only
    before = _render_good(agent)
    agent.faults.set(ssm=FaultPlan(kinds=(kind,), rate=1.0, seed=29, applies=get_parameter_calls))
    run = agent.render(DEADLINE_SECONDS)
    context = f"{kind}: exit {run.code}\n{agent.faults.describe()}\n{run.stderr}"
    assert agent.faults.ssm.faults_given(), context
    assert run.code == 7, context
    assert "not SSM's" in run.error(), context
    _assert_sound(agent, run, before)


# -- property 3: for any seed and fault mix, never a wrong value, never a default for what exists --


@dataclass(frozen=True)
class FaultMix:
    """One example of property 3: which faults on each side, how often, and where."""

    seed: int
    ssm_kinds: tuple[str, ...]
    imds_kinds: tuple[str, ...]
    rate: float
    later_pages_only: bool

    def plans(self) -> dict[str, FaultPlan]:
        ssm_applies = later_path_pages if self.later_pages_only else every_request
        return {
            "ssm": FaultPlan(kinds=self.ssm_kinds, rate=self.rate, seed=self.seed, applies=ssm_applies),
            "imds": FaultPlan(kinds=self.imds_kinds, rate=self.rate, seed=self.seed + 1),
        }


def _kinds(kinds: tuple[str, ...], min_size: int) -> st.SearchStrategy[tuple[str, ...]]:
    return st.sets(st.sampled_from(kinds), min_size=min_size).map(lambda chosen: tuple(sorted(chosen)))


FAULT_MIXES = st.builds(
    FaultMix,
    seed=st.integers(min_value=0, max_value=2**31),
    ssm_kinds=_kinds(CLI_SSM_FAULTS, 1),
    imds_kinds=_kinds(IMDS_FAULTS, 0),
    rate=st.sampled_from((0.1, 0.3, 0.5, 0.7)),
    later_pages_only=st.booleans(),
)


@settings(
    max_examples=FAULT_MIX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    # No shrinking: every example costs up to a deadline, and a failure already prints its seed and
    # every fault given, which is what replays it.
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(mix=FAULT_MIXES)
def test_no_fault_mix_yields_a_wrong_value_or_a_default_for_an_existing_parameter(
    agent: Agent, mix: FaultMix
) -> None:
    """For any seed and mix of faults a run exits 0 with every value exactly SSM's (a default only
    for the absent parameter), or exits 7 with the earlier file intact; never anything else."""
    before = agent.snapshot()
    agent.faults.set(**mix.plans())
    run = agent.render(DEADLINE_SECONDS)
    _assert_sound(agent, run, before)


# -- "slow": a read timeout shorter than the agent's default, on the client itself ----------------


NAMED = {
    "/fi/app/db": EXISTING["/fi/app/db"],
    "/fi/app/api:1": API_VERSIONS[0],
    "/fi/app/api:live": API_VERSIONS[1],
}


def _short_read_timeout_client(world: World, deadline: Deadline, **extra: Any) -> SsmClient:
    """An SsmClient on the SSM proxy with a 0.3 s read timeout: answers held 1 s are too slow."""
    return SsmClient(
        region="eu-west-1",
        endpoint_url=world.faults.ssm.url,
        credentials=("testing", "testing", ""),
        deadline=deadline,
        read_timeout_seconds=0.3,
        **extra,
    )


def test_slow_answers_past_the_read_timeout_end_in_exit_7_at_the_deadline(world: World) -> None:
    """When every SSM answer comes after the read timeout, fetching fails as unavailable (exit 7)
    within the deadline plus one read timeout."""
    world.faults.set(ssm=FaultPlan(kinds=("slow",), rate=1.0, seed=5))
    client = _short_read_timeout_client(world, Deadline(DEADLINE_SECONDS))
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable) as failure:
        client.fetch(list(NAMED))
    seconds = time.monotonic() - started
    context = world.faults.describe()
    world.faults.set()
    assert failure.value.exit_code == 7
    assert_ended_by(seconds, DEADLINE_SECONDS + 0.3, context)
    assert world.faults.ssm.url in failure.value.message, context


def test_thirty_percent_slow_answers_still_fetch_exact_values(world: World) -> None:
    """At a 30% rate of answers slower than the read timeout, 20 fetches in a row return exact values."""
    client = _short_read_timeout_client(world, Deadline(GENEROUS_DEADLINE_SECONDS))
    for attempt in range(20):
        world.faults.set(ssm=FaultPlan(kinds=("slow",), rate=0.3, seed=500 + attempt))
        found, missing = client.fetch(list(NAMED))
        context = world.faults.describe()
        assert missing == [], context
        assert {selector: p.value for selector, p in found.items()} == NAMED, context
    world.faults.set()


class _LongestDelays(random.Random):
    """An rng whose every backoff delay is the longest allowed: no luck in a timing test."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_throttling_is_not_cut_short_by_the_outage_deadline(world: World) -> None:
    """Under endless throttling the client keeps trying for the whole throttled budget, even when a
    throttled backoff delay is longer than the short deadline."""
    world.faults.set(ssm=FaultPlan(kinds=("throttling",), rate=1.0, seed=19))
    deadline = Deadline(DEADLINE_SECONDS, throttled_seconds=3.0)
    client = _short_read_timeout_client(
        world, deadline, backoff_factory=lambda: Backoff(rng=_LongestDelays())
    )
    with pytest.raises(ServiceUnavailable) as failure:
        client.fetch(list(NAMED))
    seconds = time.monotonic() - deadline.started
    context = f"gave up after {seconds:.2f} s: {failure.value.message}\n{world.faults.describe()}"
    world.faults.set()
    assert seconds >= 3.0 - 0.05, context
    assert_ended_by(seconds, 3.0, context)


# -- on_outage: a start that finds SSM or IMDS down serves this boot's set; a refusal never does ----

# One transient cause per case: the side whose every answer is faulted, and the fault; "timeout" is
# IMDS holding its answer past the agent's read timeout. On the "dns" side the SSM endpoint's name
# does not resolve: the resolver gets SERVFAIL, or no answer before its timeout (both "Temporary
# failure in name resolution").
TRANSIENT_CAUSES = {
    "throttling": ("ssm", "throttling"),
    "ssm_5xx": ("ssm", "http_500"),
    "ssm_503": ("ssm", "http_503"),
    "connection_dropped": ("ssm", "drop"),
    "imds_5xx": ("imds", "http_500"),
    "imds_timeout": ("imds", "slow"),
    "imds_unreachable": ("imds", "drop"),
    "dns_servfail": ("dns", "servfail"),
    "dns_timeout": ("dns", "silent"),
}
# Hosts only DNS could resolve (the jail's /etc/hosts holds localhost alone; .test is reserved).
DNS_ONLY_HOST = "ssm.dns-outage.test"
DNS_ONLY_SECRETS_HOST = "secretsmanager.dns-outage.test"
# AWS's own name for SSM in the fake IMDS's region (IPv4-only names: use_dualstack_endpoint = false).
AWS_SSM_HOST = "ssm.eu-west-1.amazonaws.com"


@pytest.fixture(scope="module")
def fake_dns() -> Iterator[FakeDns]:
    """A DNS server on a loopback address of its own that fails every query (devtools/fakedns.py)."""
    require_root("a mount namespace and port 53 for the fake DNS server")
    require_command("unshare", "util-linux")
    server = FakeDns()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _resolve_through(agent: Agent, server: FakeDns, answer: str, host: str = DNS_ONLY_HOST) -> str:
    """From now on the command runs in a mount namespace whose resolver asks only `server`, which
    answers every query as `answer` says; the URL of an endpoint on `host`, which only DNS could
    resolve."""
    server.clear(answer)
    folder = agent.config.parent / "resolver"
    folder.mkdir(exist_ok=True)
    agent.resolver = resolver_jail(folder, server)
    return f"http://{host}:{urlsplit(agent.faults.ssm.url).port}"


def _kept_folder(agent: Agent) -> Path:
    return agent.runtime.with_name(agent.runtime.name + "-state") / "app"


def _stale_events(run: Run) -> list[dict[str, Any]]:
    return [e for e in run.events() if e.get("event") == "render_stale"]


def _render_kept(agent: Agent) -> Snapshot:
    """A fault-free render under on_outage = "keep", which keeps its set for this boot."""
    agent.faults.set()
    run = agent.render(GENEROUS_DEADLINE_SECONDS, on_outage="keep")
    assert run.code == 0, run.stderr
    assert agent.rendered() == EXPECTED
    assert (_kept_folder(agent) / "set.json").is_file()
    return agent.snapshot()


def _restart_folder(agent: Agent) -> None:
    """What the agent unit's stop does on a restart: `clean` removes the rendered file and record (the
    kept folder, RuntimeDirectoryPreserve=restart, stays)."""
    assert run_cli(agent.config, agent.runtime, "clean", "app", env={}).code == 0
    assert not agent.output.exists()


@pytest.mark.parametrize("cause", sorted(TRANSIENT_CAUSES))
def test_a_transient_failure_at_a_restart_serves_the_kept_set(
    agent: Agent, cause: str, request: pytest.FixtureRequest
) -> None:
    """With on_outage = "keep", a restart that meets a transient failure puts this boot's set back
    (exit 0, the same values), logs one render_stale warning naming the cause and marks the set stale;
    the same failure with on_outage = "fail" exits 7 and leaves no file (the control)."""
    side, kind = TRANSIENT_CAUSES[cause]
    _render_kept(agent)
    _restart_folder(agent)
    if side == "dns":
        dns: FakeDns = request.getfixturevalue("fake_dns")
        agent.ssm_url = _resolve_through(agent, dns, kind)
    else:
        agent.faults.set(**_plan(side, (kind,), 1.0, seed=28))
    run = agent.render(DEADLINE_SECONDS, on_outage="keep")
    context = f"{cause}: exit {run.code}\n{agent.faults.describe()}\n{run.stderr[-3000:]}"
    assert run.code == 0, context
    assert agent.rendered() == EXPECTED, context
    stale = _stale_events(run)
    assert len(stale) == 1, context
    assert stale[0]["cause"] in ("outage", "throttled", "not_answer"), context
    assert stale[0]["source"] == "kept", context
    assert isinstance(stale[0]["age_seconds"], int), context
    assert (_kept_folder(agent) / "stale.json").is_file(), context
    assert not [value for value in SECRETS if value in run.stderr], context
    if side == "dns":
        # glibc's resolver really asked the fake server for the endpoint's host, and that is the cause.
        assert dns.asked(DNS_ONLY_HOST), context
        assert f"DNS lookup of {DNS_ONLY_HOST} failed" in stale[0]["error"], context

    _restart_folder(agent)
    control = agent.render(DEADLINE_SECONDS, on_outage="fail")
    assert control.code == 7, control.stderr
    assert not agent.output.exists()
    assert not _stale_events(control)


def test_a_failure_with_nothing_kept_fails_as_before(agent: Agent) -> None:
    """On a first start (no kept set) an outage fails with exit 7 and leaves no file, under "keep" too."""
    agent.faults.set(ssm=FaultPlan(kinds=("http_503",), rate=1.0, seed=1))
    run = agent.render(DEADLINE_SECONDS, on_outage="keep")
    assert run.code == 7, run.stderr
    assert not agent.output.exists()
    assert not _stale_events(run)


@pytest.mark.parametrize("kind", REFUSAL_FAULTS)
def test_a_refusal_never_serves_the_kept_set_and_deletes_it(agent: Agent, kind: str) -> None:
    """AccessDenied or a KMS denial at a restart fails with exit 5 under "keep", serves nothing and
    deletes the kept set, so a following outage has nothing to serve either."""
    _render_kept(agent)
    _restart_folder(agent)
    agent.faults.set(ssm=FaultPlan(kinds=(kind,), rate=1.0, seed=5))
    run = agent.render(DEADLINE_SECONDS, on_outage="keep")
    assert run.code == 5, run.stderr
    assert not agent.output.exists()
    assert not _stale_events(run)
    assert not (_kept_folder(agent) / "set.json").exists()

    agent.faults.set(ssm=FaultPlan(kinds=("http_503",), rate=1.0, seed=6))
    after = agent.render(DEADLINE_SECONDS, on_outage="keep")
    assert after.code == 7, after.stderr
    assert not agent.output.exists()


# A name that does not exist at all (NXDOMAIN, "Name or service not known"; or NODATA, "No address
# associated with hostname"): the DNS answered. In an endpoint the operator wrote it is a settings
# error (a typo, a deleted VPC endpoint) and never served stale; in AWS's own name for the region (which
# botocore builds only for a region it knows) it is AWS's DNS failing, an outage like SERVFAIL.


@pytest.mark.parametrize("answer", ["nxdomain", "nodata"])
def test_an_explicit_endpoint_whose_host_does_not_exist_is_a_settings_error_never_served_stale(
    agent: Agent, fake_dns: FakeDns, answer: str
) -> None:
    """An explicit SSM endpoint whose host the DNS says does not exist (or holds no address) fails a
    restart under "keep" with exit 2 naming the host and the setting, serves nothing and deletes the
    kept set, so a following outage has nothing to serve either."""
    _render_kept(agent)
    _restart_folder(agent)
    agent.ssm_url = _resolve_through(agent, fake_dns, answer)
    run = agent.render(DEADLINE_SECONDS, on_outage="keep")
    context = f"{answer}: exit {run.code}\n{run.stderr[-3000:]}"
    assert fake_dns.asked(DNS_ONLY_HOST), context
    assert run.code == 2, context
    assert DNS_ONLY_HOST in run.error(), context
    assert "ssm_endpoint" in run.error(), context
    assert not agent.output.exists(), context
    assert not _stale_events(run), context
    assert not (_kept_folder(agent) / "set.json").exists(), context

    # The control: the kept set is gone, so even a transient DNS failure now has nothing to serve.
    fake_dns.clear("servfail")
    after = agent.render(DEADLINE_SECONDS, on_outage="keep")
    assert after.code == 7, after.stderr
    assert not agent.output.exists()


def test_aws_own_endpoint_name_not_resolving_is_an_outage_that_serves_the_kept_set(
    agent: Agent, tmp_path: Path
) -> None:
    """With no explicit endpoint, NXDOMAIN for AWS's own SSM name is an outage: a restart under "keep"
    serves the kept set (exit 0, one render_stale naming the name), under "fail" exits 7 (the control).

    The command runs in a network namespace holding only loopback and the fake DNS server (a mount
    namespace of its own on top), with credentials from the environment: AWS's name never resolves
    and nothing could leave the machine if it did."""
    require_root("a network namespace, a mount namespace and port 53 for the fake DNS server")
    require_command("unshare", "util-linux")
    _render_kept(agent)
    env = {
        "AWS_REGION": "eu-west-1",
        "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "AWS_USE_DUALSTACK_ENDPOINT": "false",
        # Nothing listens there in the namespace: the agent has no business with IMDS here.
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9",
    }
    server = FakeDns("nxdomain")
    folder = tmp_path / "resolver"
    folder.mkdir()
    with lone_namespace(f"sa-dns-{os.getpid()}") as namespace:
        inside(namespace, server.start)
        try:
            prefix = resolver_jail(folder, server, netns=namespace)
            _restart_folder(agent)
            agent.configure(DEADLINE_SECONDS, on_outage="keep")
            run = agent.run_process("render", env, prefix=prefix)
            context = f"exit {run.code}\n{server.queries}\n{run.stderr[-3000:]}"
            assert server.asked(AWS_SSM_HOST), context
            assert run.code == 0, context
            assert agent.rendered() == EXPECTED, context
            stale = _stale_events(run)
            assert len(stale) == 1, context
            assert stale[0]["cause"] == "outage", context
            assert f"DNS lookup of {AWS_SSM_HOST} failed (Name or service not known)" in stale[0]["error"]

            _restart_folder(agent)
            agent.configure(DEADLINE_SECONDS, on_outage="fail")
            control = agent.run_process("render", env, prefix=prefix)
            assert control.code == 7, control.stderr
            assert not agent.output.exists()
        finally:
            server.stop()


# A name the template computes from a fetched value is asked for while the template renders (not in
# the prefetch): an outage there reaches on_outage through jinja's AgentError pass-through (issue 27).
COMPUTED_TEMPLATE = 'PICKED={{ param("/fi/app/" ~ param("/fi/app/which")) }}\n'


def _computed_name_only(exchange: Exchange) -> bool:
    """Only SSM's calls for the computed name (/fi/app/db), not the prefetch of /fi/app/which."""
    return b'"/fi/app/db"' in exchange.body


@pytest.mark.parametrize(
    ("kind", "expected"), [("http_503", 0), ("throttling", 0), ("access_denied", 5), ("kms_denied", 5)]
)
def test_a_computed_name_keeps_its_cause_for_on_outage(
    agent: Agent, moto_url: str, kind: str, expected: int
) -> None:
    """A lookup the template computes at render time keeps its own error: an outage there serves the
    kept set (stale, exit 0) and exits 7 under "fail", not 3; a refusal there exits 5 and deletes the
    kept set, as a refusal of a literal name does."""
    admin_ssm_client(moto_url).put_parameter(Name="/fi/app/which", Value="db", Type="String", Overwrite=True)
    (agent.config / "app.env.j2").write_text(COMPUTED_TEMPLATE, encoding="utf-8")
    run = agent.render(GENEROUS_DEADLINE_SECONDS, on_outage="keep")
    assert run.code == 0, run.stderr
    assert agent.rendered() == {"PICKED": EXISTING["/fi/app/db"]}
    assert (_kept_folder(agent) / "set.json").is_file()
    _restart_folder(agent)

    agent.faults.set(ssm=FaultPlan(kinds=(kind,), rate=1.0, seed=27, applies=_computed_name_only))
    run = agent.render(DEADLINE_SECONDS, on_outage="keep")
    context = f"{kind}: exit {run.code}\n{agent.faults.describe()}\n{run.stderr[-3000:]}"
    # The fault hit the computed lookup only: the prefetch of /fi/app/which passed, the lookup did not.
    decided = [i.fault for i in agent.faults.ssm.injections if i.target.startswith("GetParameter")]
    assert PASS in decided, context
    assert kind in decided, context
    assert run.code == expected, context
    if expected == 0:
        assert agent.rendered() == {"PICKED": EXISTING["/fi/app/db"]}, context
        assert len(_stale_events(run)) == 1, context
        _restart_folder(agent)
        control = agent.render(DEADLINE_SECONDS, on_outage="fail")
        assert control.code == 7, control.stderr
        assert not agent.output.exists()
    else:
        assert not agent.output.exists(), context
        assert not _stale_events(run), context
        assert not (_kept_folder(agent) / "set.json").exists(), context


def test_a_missing_parameter_or_a_broken_template_never_serves_the_kept_set(agent: Agent) -> None:
    """A parameter SSM does not have (exit 4) and a template that does not parse (exit 3) fail under
    "keep" with nothing served, and the kept set is deleted."""
    _render_kept(agent)
    template = agent.config / "app.env.j2"
    template.write_text(TEMPLATE + 'GONE={{ param("/fi/app/not-there") }}\n', encoding="utf-8")
    _restart_folder(agent)
    run = agent.render(DEADLINE_SECONDS, on_outage="keep")
    assert run.code == 4, run.stderr
    assert not agent.output.exists()
    assert not (_kept_folder(agent) / "set.json").exists()

    template.write_text(TEMPLATE, encoding="utf-8")
    _render_kept(agent)
    template.write_text(TEMPLATE + "BROKEN={{ param(\n", encoding="utf-8")
    _restart_folder(agent)
    broken = agent.render(DEADLINE_SECONDS, on_outage="keep")
    assert broken.code == 3, broken.stderr
    assert not agent.output.exists()
    assert not (_kept_folder(agent) / "set.json").exists()


def test_a_changed_template_is_not_served_from_a_set_of_the_old_one(agent: Agent) -> None:
    """A set kept from another template is not served: an outage after the template changed fails."""
    _render_kept(agent)
    (agent.config / "app.env.j2").write_text(TEMPLATE + "EXTRA=1\n", encoding="utf-8")
    _restart_folder(agent)
    agent.faults.set(ssm=FaultPlan(kinds=("http_503",), rate=1.0, seed=2))
    run = agent.render(DEADLINE_SECONDS, on_outage="keep")
    assert run.code == 7, run.stderr
    assert not agent.output.exists()


def test_with_a_set_to_fall_back_on_the_start_gives_up_after_the_grace(agent: Agent) -> None:
    """With a kept set, a start gives up after outage_grace_seconds, not the longer deadline_seconds:
    the give-up names the grace as its deadline."""
    _render_kept(agent)
    _restart_folder(agent)
    agent.faults.set(ssm=FaultPlan(kinds=("http_503",), rate=1.0, seed=3))
    agent.configure(30, on_outage="keep")
    with (agent.config / "app.toml").open("a") as settings_file:
        settings_file.write("outage_grace_seconds = 1\n")
    env = {
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": agent.faults.imds.url,
        "AWS_ENDPOINT_URL_SSM": agent.faults.ssm.url,
    }
    run = Run(*run_cli(agent.config, agent.runtime, "render", "app", env=env))
    assert run.code == 0, run.stderr
    stale = _stale_events(run)
    assert len(stale) == 1
    assert "within the 1 s deadline" in stale[0]["error"]


# Secrets Manager at a restart: its calls go through the one retry loop, so outage_of tells an outage
# (served from the kept set) from a refusal (never served), as for SSM (issues 28 and 29).
SECRET_VALUE = "sm-t\u00f8ken 'q' $HOME `id` \\ end"


def _secrets_manager_only(exchange: Exchange) -> bool:
    """Only Secrets Manager's calls (X-Amz-Target secretsmanager.*), never SSM's."""
    return exchange.headers.get("X-Amz-Target", "").startswith("secretsmanager.")


@pytest.fixture
def secret_agent(agent: Agent, moto_url: str, request: pytest.FixtureRequest) -> Agent:
    """The agent with a secret() beside the parameters, Secrets Manager behind the same fault proxy."""
    name = f"fi/sm-{request.node.callspec.id}"
    admin_client("secretsmanager", moto_url).create_secret(Name=name, SecretString=SECRET_VALUE)
    (agent.config / "app.env.j2").write_text(
        TEMPLATE + f'SM_TOKEN={{{{ secret("{name}") }}}}\n', encoding="utf-8"
    )
    return agent


def _secret_env(agent: Agent) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL_SECRETS_MANAGER": agent.faults.ssm.url}


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("http_503", 0),
        ("http_500", 0),
        ("throttling", 0),
        ("drop", 0),
        ("access_denied", 5),
        ("decryption_failure", 5),
        ("secret_not_found", 4),
        ("dns_servfail", 0),
        ("dns_nxdomain", 2),
    ],
)
def test_a_secrets_manager_failure_at_a_restart_is_an_outage_or_a_refusal(
    secret_agent: Agent, kind: str, expected: int, request: pytest.FixtureRequest
) -> None:
    """With on_outage = "keep", a restart whose Secrets Manager calls are throttled, 5xx or dropped, or
    whose endpoint's name gets SERVFAIL (SSM healthy), serves the kept set, secret included (exit 0,
    one render_stale), and exits 7 under "fail" (the control); AccessDenied, DecryptionFailure,
    ResourceNotFound and an explicit endpoint's host that does not exist (NXDOMAIN) serve nothing and
    delete the kept set. No value reaches the log either way."""
    agent = secret_agent
    env = _secret_env(agent)
    agent.faults.set()
    first = agent.render(GENEROUS_DEADLINE_SECONDS, on_outage="keep", env=env)
    assert first.code == 0, first.stderr
    assert agent.rendered() == {**EXPECTED, "SM_TOKEN": SECRET_VALUE}
    assert (_kept_folder(agent) / "set.json").is_file()
    _restart_folder(agent)

    if kind.startswith("dns_"):
        dns: FakeDns = request.getfixturevalue("fake_dns")
        url = _resolve_through(agent, dns, kind.removeprefix("dns_"), DNS_ONLY_SECRETS_HOST)
        env = {"AWS_ENDPOINT_URL_SECRETS_MANAGER": url}
    else:
        agent.faults.set(ssm=FaultPlan(kinds=(kind,), rate=1.0, seed=29, applies=_secrets_manager_only))
    run = agent.render(DEADLINE_SECONDS, on_outage="keep", env=env)
    context = f"{kind}: exit {run.code}\n{agent.faults.describe()}\n{run.stderr[-3000:]}"
    decided = {i.target: i.fault for i in agent.faults.ssm.injections}
    if kind.startswith("dns_"):
        # The resolver asked the fake server for Secrets Manager's host; SSM's calls got through.
        assert dns.asked(DNS_ONLY_SECRETS_HOST), context
        assert {f for t, f in decided.items() if t.startswith("GetParameter")} == {PASS}, context
        if expected == 2:
            assert f"{DNS_ONLY_SECRETS_HOST}: Name or service not known" in run.error(), context
            assert "secretsmanager_endpoint" in run.error(), context
    else:
        # The fault hit Secrets Manager's calls, and only them.
        assert kind in {f for t, f in decided.items() if t.endswith("SecretValue")}, context
        assert all(f == PASS for t, f in decided.items() if t.startswith("GetParameter")), context
    assert run.code == expected, context
    assert not [value for value in [*SECRETS, SECRET_VALUE] if value in run.stderr], context
    if expected == 0:
        assert agent.rendered() == {**EXPECTED, "SM_TOKEN": SECRET_VALUE}, context
        stale = _stale_events(run)
        assert len(stale) == 1, context
        assert stale[0]["cause"] in ("outage", "throttled", "not_answer"), context
        assert stale[0]["source"] == "kept", context
        _restart_folder(agent)
        control = agent.render(DEADLINE_SECONDS, on_outage="fail", env=env)
        assert control.code == 7, control.stderr
        assert not agent.output.exists()
        assert not _stale_events(control)
    else:
        assert not agent.output.exists(), context
        assert not _stale_events(run), context
        assert not (_kept_folder(agent) / "set.json").exists(), context
