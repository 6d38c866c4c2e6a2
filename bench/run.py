"""`make bench`: every measurement in one run, interleaved, then bench/RESULTS.md.

Render time, cold process, of the agent against the seed's flow (one `aws ssm get-parameter` per
parameter) and one `aws ssm get-parameters-by-path`; the floor (interpreter plus imports plus the
minimum round trips); calls per render counted at the fake servers; a fleet boot storm under a
throttling SSM; peak memory.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

from bench import (
    checks,
    endpoint_mode,
    fleet,
    guard,
    levers,
    pace,
    report,
    rotation,
    secrets_storm,
    selfcontained,
)
from bench.fallback import FallbackResults, GetParametersDenial, fallback_calls_per_agent, measure_fallback
from bench.measure import Series, Spawner
from bench.stack import (
    CLI_ACCESS_KEY_ID,
    CLI_SECRET_ACCESS_KEY,
    REGION,
    Emulator,
    named_template,
    parameter_names,
    path_template,
)
from bench.storm import (
    AGENT_STORM,
    AGENT_STORM_ROUNDS,
    StormResult,
    ThrottlingResponder,
    agent_commands,
    clear_storm_files,
    default_log_dir,
    plain_boto3_commands,
    prepare_storm,
    run_storm,
    storm_env_file,
)
from devtools.systemd_envfile import parse_env

SIZES = (3, 10, 100, 1000)
BENCH_DIR = Path(__file__).resolve().parent
SEED_FLOW_SCRIPT = BENCH_DIR / "seed_flow.sh"
# The tools side by side; each round runs them in a new random order.
AGENT_NAMED = "secrets-agent (named)"
AGENT_PATH = "secrets-agent (path)"
CLI_BY_PATH = "aws get-parameters-by-path"
SEED_FLOW = "seed flow (aws get-parameter x N)"
TOOLS = (AGENT_NAMED, AGENT_PATH, CLI_BY_PATH, SEED_FLOW)


@dataclass
class Options:
    """What one run measures and how often."""

    rounds: int
    seed_rounds_100: int
    seed_at_1000: bool
    storm_agents: int
    storm_rate: float
    storm_parameters: int
    fallback_storm_agents: int
    skip_storm: bool
    skip_fleet_curve: bool
    output: Path
    skip_rotation: bool = False
    skip_endpoint_mode: bool = False
    skip_guard: bool = False
    skip_selfcontained: bool = False
    skip_pace: bool = False


@dataclass
class Results:
    """Everything one run measured, for the report."""

    options: Options
    series: dict[tuple[str, int], Series] = field(default_factory=dict)
    calls: dict[tuple[str, int], dict[str, int]] = field(default_factory=dict)
    server_min_pages: dict[int, int] = field(default_factory=dict)
    floors: dict[str, Series] = field(default_factory=dict)
    round_trips_ms: dict[str, float] = field(default_factory=dict)
    profiles: dict[int, dict[str, float]] = field(default_factory=dict)
    profile_totals: dict[int, float] = field(default_factory=dict)
    import_shares: list[levers.ImportShare] = field(default_factory=list)
    levers: list[levers.Lever] = field(default_factory=list)
    storms: list[StormResult] = field(default_factory=list)
    fallback: Optional[FallbackResults] = None
    fleet_results: Optional[fleet.FleetResults] = None
    secrets_storm: Optional[secrets_storm.SecretsStormResults] = None
    check_costs: list[checks.BeforeAfter] = field(default_factory=list)
    check_note: str = "not run"
    consolidation_costs: list[checks.BeforeAfter] = field(default_factory=list)
    consolidation_note: str = "not run"
    rotation: Optional[rotation.RotationResults] = None
    endpoint_mode: Optional[endpoint_mode.EndpointModeResults] = None
    guard: Optional[guard.GuardResults] = None
    selfcontained: Optional[selfcontained.SelfContainedResults] = None
    pace: Optional[pace.PaceResults] = None
    violations: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    # 1-minute load average at the start and at the end: other work on the machine skews timings.
    load_before: float = field(default_factory=lambda: os.getloadavg()[0])
    load_after: float = 0.0
    seconds: float = 0.0


def _parse_options(argv: Optional[list[str]]) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per tool and size")
    parser.add_argument(
        "--seed-rounds-100", type=int, default=3, help="rounds of the seed flow at N=100 (40 s each)"
    )
    parser.add_argument(
        "--seed-at-1000",
        action="store_true",
        help="measure the seed flow at N=1000 once (about 7 minutes) instead of extrapolating",
    )
    parser.add_argument("--storm-agents", type=int, default=40, help="agents started at once")
    parser.add_argument("--storm-rate", type=float, default=2.0, help="SSM calls per second let through")
    parser.add_argument("--storm-parameters", type=int, default=20, help="parameters each agent renders")
    parser.add_argument(
        "--fallback-storm-agents",
        type=int,
        default=10,
        help="agents of the storm under a GetParameter-only role (1 + N calls each)",
    )
    parser.add_argument("--skip-storm", action="store_true", help="leave the fleet storm out")
    parser.add_argument(
        "--skip-fleet-curve",
        action="store_true",
        help="leave the fleet-size curves (10 to 150 agents) and the storm before and after out",
    )
    parser.add_argument("--output", type=Path, default=BENCH_DIR / "RESULTS.md")
    parser.add_argument("--skip-rotation", action="store_true", help="leave the rotation checks out")
    parser.add_argument(
        "--skip-endpoint-mode", action="store_true", help="leave imds_endpoint_mode auto against ipv4 out"
    )
    parser.add_argument(
        "--skip-guard",
        action="store_true",
        help="leave the refresh guard's cost out (alone: python -m bench.guard)",
    )
    parser.add_argument(
        "--skip-selfcontained",
        action="store_true",
        help="leave the self-contained tarball's start-up out (it builds the tarball: needs PyPI)",
    )
    parser.add_argument(
        "--skip-pace",
        action="store_true",
        help="leave the pace targets moved out of the tests out (alone: python -m bench.pace)",
    )
    args = parser.parse_args(argv)
    return Options(
        rounds=args.rounds,
        seed_rounds_100=args.seed_rounds_100,
        seed_at_1000=args.seed_at_1000,
        storm_agents=args.storm_agents,
        storm_rate=args.storm_rate,
        storm_parameters=args.storm_parameters,
        fallback_storm_agents=args.fallback_storm_agents,
        skip_storm=args.skip_storm,
        skip_fleet_curve=args.skip_fleet_curve,
        output=args.output,
        skip_rotation=args.skip_rotation,
        skip_endpoint_mode=args.skip_endpoint_mode,
        skip_guard=args.skip_guard,
        skip_selfcontained=args.skip_selfcontained,
        skip_pace=args.skip_pace,
    )


def aws_cli() -> str:
    """The AWS CLI from PyPI next to this interpreter (the `bench` extra installs it)."""
    path = Path(sys.executable).parent / "aws"
    if not path.exists():
        raise SystemExit(f"no AWS CLI at {path}: install the bench extra (pip install -e '.[bench]')")
    return str(path)


def _service(kind: str, size: int) -> str:
    return f"{kind}-n{size}"


def _prefix(size: int) -> str:
    return f"/bench/n{size}/"


def _prepare(emulator: Emulator) -> dict[str, str]:
    values: dict[str, str] = {}
    for size in SIZES:
        names = parameter_names(_prefix(size), size)
        values.update(emulator.seed(names))
        emulator.write_template(_service("named", size), named_template(names))
        emulator.write_template(_service("path", size), path_template(_prefix(size)))
    return values


def prepare_named(emulator: Emulator, sizes: Sequence[int]) -> dict[str, int]:
    """Seed `sizes` parameters each and write their named templates; service name -> size."""
    for size in sizes:
        names = parameter_names(_prefix(size), size)
        emulator.seed(names)
        emulator.write_template(_service("named", size), named_template(names))
    return {_service("named", size): size for size in sizes}


def _server_min_pages(emulator: Emulator, size: int) -> int:
    """Pages a client must fetch to list the path, following the server's tokens (10 a page, to moto)."""
    import botocore.session

    client = botocore.session.Session().create_client(
        "ssm",
        region_name=REGION,
        endpoint_url=emulator.moto_url,
        aws_access_key_id=CLI_ACCESS_KEY_ID,
        aws_secret_access_key=CLI_SECRET_ACCESS_KEY,
    )
    request: dict[str, Any] = {"Path": _prefix(size), "Recursive": True, "MaxResults": 10}
    pages = 0
    while True:
        response = client.get_parameters_by_path(**request)
        pages += 1
        if not response.get("NextToken"):
            return pages
        request["NextToken"] = response["NextToken"]


class Runner:
    """Runs one tool at one size in a fresh process and checks its output and its calls."""

    def __init__(
        self, emulator: Emulator, values: dict[str, str], results: Results, spawner: Spawner
    ) -> None:
        self.emulator = emulator
        self.spawner = spawner
        self.values = values
        self.results = results
        self.aws = aws_cli()
        self.out_dir = emulator.runtime_dir / "peers"
        self.out_dir.mkdir()

    def command(self, tool: str, size: int) -> tuple[list[str], dict[str, str], Optional[Path]]:
        """argv, environment and the file the tool writes (None: the agent's own path)."""
        emu = self.emulator
        if tool == AGENT_NAMED:
            return [sys.executable, "-m", "agent", "render", _service("named", size)], emu.agent_env(), None
        if tool == AGENT_PATH:
            return [sys.executable, "-m", "agent", "render", _service("path", size)], emu.agent_env(), None
        out = self.out_dir / f"{tool.split(maxsplit=1)[0]}-{size}.out"
        if tool == CLI_BY_PATH:
            argv = [self.aws, "ssm", "get-parameters-by-path", "--path", _prefix(size), "--recursive"]
            return [*argv, "--with-decryption", "--output", "json"], emu.cli_env(), out
        names = parameter_names(_prefix(size), size)
        return ["bash", str(SEED_FLOW_SCRIPT), self.aws, str(out), *names], emu.cli_env(), out

    def run(self, tool: str, size: int) -> None:
        """One measured run; a wrong output or a wrong call count is recorded as a violation."""
        argv, env, out = self.command(tool, size)
        ssm_before = self.emulator.ssm_calls()
        imds_before = self.emulator.imds.count()
        measurement = self.spawner.run(argv, env, stdout=out if tool == CLI_BY_PATH else None)
        ssm_after = self.emulator.ssm_calls()
        calls = {action: ssm_after[action] - ssm_before[action] for action in ssm_after}
        calls["IMDS"] = self.emulator.imds.count() - imds_before
        key = (tool, size)
        if measurement.exit_code != 0:
            raise SystemExit(
                f"{tool} at N={size} failed ({measurement.exit_code}):\n{measurement.stderr[-2000:]}"
            )
        self._check_output(tool, size, out)
        self._check_calls(tool, size, calls)
        self.results.series.setdefault(key, Series.empty()).add(measurement)
        self.results.calls[key] = calls

    def _check_output(self, tool: str, size: int, out: Optional[Path]) -> None:
        prefix = _prefix(size)
        expected = {name: value for name, value in self.values.items() if name.startswith(prefix)}
        if tool in (AGENT_NAMED, AGENT_PATH):
            kind = "path" if tool == AGENT_PATH else "named"
            path = self.emulator.runtime_dir / _service(kind, size) / "env"
            got = dict(parse_env(path.read_text(encoding="utf-8")))
            wanted = {name.rsplit("/", 1)[1].upper(): value for name, value in expected.items()}
            if kind == "path":
                wanted = {f"P{name.rsplit('/p', 1)[1]}": value for name, value in expected.items()}
            if got != wanted:
                self.results.violations.append(f"{tool} N={size}: rendered file differs from SSM's values")
        elif tool == CLI_BY_PATH and out is not None:
            listed = json.loads(out.read_text(encoding="utf-8"))["Parameters"]
            if {p["Name"]: p["Value"] for p in listed} != expected:
                self.results.violations.append(f"{tool} N={size}: output differs from SSM's values")
        elif out is not None and len(out.read_text(encoding="utf-8").splitlines()) != size:
            self.results.violations.append(f"{tool} N={size}: .env does not hold {size} lines")

    def _check_calls(self, tool: str, size: int, calls: dict[str, int]) -> None:
        expected: dict[str, int] = {"GetParameter": 0, "GetParameters": 0, "GetParametersByPath": 0}
        if tool == AGENT_NAMED:
            expected["GetParameters"] = math.ceil(size / 10)
        elif tool in (AGENT_PATH, CLI_BY_PATH):
            expected["GetParametersByPath"] = self.results.server_min_pages[size]
        else:
            expected["GetParameter"] = size
        for action, count in expected.items():
            if calls[action] != count:
                self.results.violations.append(
                    f"{tool} N={size}: {calls[action]} {action} calls, not {count}"
                )
        if tool not in (CLI_BY_PATH, SEED_FLOW) and calls["IMDS"] > 4:
            self.results.violations.append(f"{tool} N={size}: {calls['IMDS']} IMDS requests, more than 4")


def _measure_renders(runner: Runner, options: Options) -> None:
    shuffle = random.Random(2026)
    for round_index in range(options.rounds):
        for size in SIZES:
            tools = [t for t in TOOLS if t != SEED_FLOW or _seed_flow_due(size, round_index, options)]
            shuffle.shuffle(tools)
            for tool in tools:
                runner.run(tool, size)
        for label, statement in levers.IMPORT_PROBES.items():
            probe = runner.spawner.run([sys.executable, "-c", statement], runner.emulator.cli_env())
            runner.results.floors.setdefault(label, Series.empty()).add(probe)
        print(f"  round {round_index + 1}/{options.rounds} done", flush=True)
    if options.seed_at_1000:
        print("  seed flow at N=1000 (one run, several minutes)", flush=True)
        runner.run(SEED_FLOW, 1000)


def _seed_flow_due(size: int, round_index: int, options: Options) -> bool:
    if size <= 10:
        return True
    if size == 100:
        return round_index < options.seed_rounds_100
    return False


def _round_trips(emulator: Emulator, rounds: int = 25) -> dict[str, float]:
    """Warm, in-process round trips: the minimum the network part of a render can cost."""
    import botocore.session

    parts = urlsplit(emulator.imds.url)
    imds_sets = []
    for _ in range(rounds):
        connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=5)
        started = time.perf_counter()
        connection.request("PUT", "/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
        token = connection.getresponse().read().decode()
        for path in (
            "/latest/meta-data/placement/region",
            "/latest/meta-data/iam/security-credentials/",
            "/latest/meta-data/iam/security-credentials/bench-app-role",
        ):
            connection.request("GET", path, headers={"X-aws-ec2-metadata-token": token})
            connection.getresponse().read()
        imds_sets.append(time.perf_counter() - started)
        connection.close()
    client = botocore.session.Session().create_client(
        "ssm",
        region_name=REGION,
        endpoint_url=emulator.ssm_url,
        aws_access_key_id=CLI_ACCESS_KEY_ID,
        aws_secret_access_key=CLI_SECRET_ACCESS_KEY,
    )
    names = parameter_names(_prefix(10), 10)
    client.get_parameters(Names=names, WithDecryption=True)  # the connection, opened once
    get_parameters, by_path = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        client.get_parameters(Names=names, WithDecryption=True)
        get_parameters.append(time.perf_counter() - started)
        started = time.perf_counter()
        client.get_parameters_by_path(Path=_prefix(10), Recursive=True, WithDecryption=True, MaxResults=10)
        by_path.append(time.perf_counter() - started)
    return {
        "IMDS: token + region + role + credentials (4 requests)": statistics.median(imds_sets) * 1000,
        "SSM GetParameters, 10 names": statistics.median(get_parameters) * 1000,
        "SSM GetParametersByPath, one page of 10": statistics.median(by_path) * 1000,
    }


# Events noted by bench.instrumented, and the stage that ends at each; anything else is glue.
_STAGES = {
    "started": "interpreter start-up",
    "imported": "imports: agent, structlog, requests, jinja2",
    "template_end": "template read + compile",
    "imds_end": "IMDS (token, region, credentials)",
    "botocore_imported": "import botocore",
    "ssm_client_end": "SSM client creation",
    "ssm_fetch_end": "SSM calls",
    "render_end": "render",
    "encode_end": "encode",
    "write_end": "write (tmpfs, atomic)",
    "exit": "interpreter exit",
}
_GLUE = "argparse, logging set-up, settings, glue"


def _profile(emulator: Emulator, size: int, runs: int) -> tuple[dict[str, float], float]:
    """Median ms per stage of `runs` instrumented renders, and the median total."""
    samples: dict[str, list[float]] = {}
    totals = []
    for _ in range(runs):
        env = emulator.agent_env()
        env["BENCH_SPAWNED_AT"] = repr(time.time())
        done = subprocess.run(
            [sys.executable, "-m", "bench.instrumented", _service("named", size)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        exited = time.time()
        data = json.loads(done.stdout)
        events = [("spawn", data["spawned"]), *[tuple(e) for e in data["events"]], ("exit", exited)]
        stages: dict[str, float] = {}
        for (_, before), (name, at) in zip(events, events[1:]):
            stage = _STAGES.get(name, _GLUE)
            stages[stage] = stages.get(stage, 0.0) + (at - before) * 1000
        for stage, ms in stages.items():
            samples.setdefault(stage, []).append(ms)
        totals.append((exited - data["spawned"]) * 1000)
    order = [*_STAGES.values(), _GLUE]
    return {s: statistics.median(samples[s]) for s in order if s in samples}, statistics.median(totals)


def _importtime(emulator: Emulator) -> list[levers.ImportShare]:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "agent", "render", _service("named", 10)],
        env=emulator.agent_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    return levers.import_shares(done.stderr)


def _storms(options: Options, results: Results) -> None:
    responder = ThrottlingResponder(None)
    denial = GetParametersDenial(responder)
    with Emulator(responder=denial) as emulator:
        prepare_storm(emulator, options.storm_parameters)
        agents, rate, parameters = options.storm_agents, options.storm_rate, options.storm_parameters
        fleets: list[tuple[str, list[tuple[list[str], dict[str, str]]], Optional[float]]] = [
            ("secrets-agent, no throttle (CPU only)", agent_commands(emulator, agents), None),
            *[(AGENT_STORM, agent_commands(emulator, agents), rate) for _ in range(AGENT_STORM_ROUNDS)],
            (
                "plain boto3, standard retries (botocore 1.44 default: 3 attempts)",
                plain_boto3_commands(emulator, agents, parameters, "standard"),
                rate,
            ),
            (
                "plain boto3, legacy retries (Debian 12's boto3 1.26 default: 5 attempts)",
                plain_boto3_commands(emulator, agents, parameters, "legacy"),
                rate,
            ),
        ]
        for label, commands, fleet_rate in fleets:
            print(f"  storm: {label}", flush=True)
            clear_storm_files(emulator, agents)  # each agent storm is checked on its own files
            result = run_storm(
                emulator,
                responder,
                label=label,
                commands=commands,
                parameters=parameters,
                rate_per_second=fleet_rate,
                burst=max(1.0, fleet_rate or 1.0),
                log_dir=default_log_dir(emulator, label),
            )
            results.storms.append(result)
            if label == AGENT_STORM:
                _check_storm(emulator, result, parameters, results)
        label = "secrets-agent, ssm:GetParameter-only role (fallback)"
        print(f"  storm: {label}", flush=True)
        fallback_agents = options.fallback_storm_agents
        clear_storm_files(emulator, fallback_agents)
        denial.enabled = True
        try:
            result = run_storm(
                emulator,
                responder,
                label=label,
                commands=agent_commands(emulator, fallback_agents),
                parameters=parameters,
                rate_per_second=rate,
                burst=max(1.0, rate),
                log_dir=default_log_dir(emulator, label),
                calls_needed=fallback_agents * fallback_calls_per_agent(parameters),
            )
        finally:
            denial.enabled = False
        results.storms.append(result)
        _check_storm(emulator, result, parameters, results)


def _check_storm(emulator: Emulator, result: StormResult, parameters: int, results: Results) -> None:
    if result.failed:
        results.violations.append(f"fleet storm: {result.failed} of {result.agents} agents failed")
    if result.calls_allowed != result.calls_needed:
        results.violations.append(
            f"fleet storm: {result.calls_allowed} calls let through, {result.calls_needed} needed"
        )
    for index in range(result.agents):
        path = storm_env_file(emulator, index)
        if not path.exists() or len(parse_env(path.read_text(encoding="utf-8"))) != parameters:
            results.violations.append(f"fleet storm: agent {index} left no complete file")


def main(argv: Optional[list[str]] = None) -> int:
    """Run the whole benchmark and write RESULTS.md; exit 1 when a checked property failed."""
    options = _parse_options(argv)
    results = Results(options=options)
    started = time.perf_counter()
    with Emulator() as emulator:
        print(f"seeding {sum(SIZES)} parameters in moto at {emulator.moto_url}", flush=True)
        values = _prepare(emulator)
        results.server_min_pages = {size: _server_min_pages(emulator, size) for size in SIZES}
        spawner = Spawner(emulator.runtime_dir)
        runner = Runner(emulator, values, results, spawner)
        print(f"cold renders: {options.rounds} interleaved rounds", flush=True)
        try:
            _measure_renders(runner, options)
            print("answer checks: cold renders before and after", flush=True)
            named = {_service("named", 10): 10, _service("named", 1000): 1000}
            results.check_costs, results.check_note = checks.measure(emulator, spawner, named, options.rounds)
            print("consolidation: cold renders before and after", flush=True)
            results.consolidation_costs, results.consolidation_note = checks.measure(
                emulator, spawner, named, options.rounds, checks.CONSOLIDATION_REVISION
            )
        finally:
            spawner.close()
        print("round trips, profile, imports, levers", flush=True)
        results.round_trips_ms = _round_trips(emulator)
        for size, runs in ((10, 7), (1000, 3)):
            results.profiles[size], results.profile_totals[size] = _profile(emulator, size, runs)
        results.import_shares = _importtime(emulator)
        results.levers = [levers.client_creation_lever(rounds=9), *levers.import_levers(rounds=9)]
    print(f"GetParameter fallback against the batched path: {options.rounds} rounds", flush=True)
    results.fallback = measure_fallback(options.rounds)
    results.violations.extend(results.fallback.violations)
    if not options.skip_storm:
        print(f"fleet storm: {options.storm_agents} agents at {options.storm_rate:g} SSM calls/s", flush=True)
        _storms(options, results)
        print("fleet storm against Secrets Manager, beside the SSM storm", flush=True)
        results.secrets_storm = secrets_storm.measure(
            storm_rate=options.storm_rate,
            storm_agents=options.storm_agents,
            storm_parameters=options.storm_parameters,
        )
        results.violations.extend(results.secrets_storm.violations)
    if not options.skip_fleet_curve:
        results.fleet_results = fleet.measure()
        results.violations.extend(results.fleet_results.violations)
    if not options.skip_rotation:
        results.rotation = rotation.measure(skip_fleets=options.skip_storm)
        results.violations.extend(results.rotation.violations)
    if not options.skip_endpoint_mode:
        results.endpoint_mode = endpoint_mode.measure()
        results.violations.extend(results.endpoint_mode.violations)
    if not options.skip_guard:
        print("refresh guard: the extra fetch on a change against one render", flush=True)
        results.guard = guard.measure()
        results.violations.extend(results.guard.violations)
    if not options.skip_selfcontained:
        print("self-contained tarball: build, then its launcher against the .deb-style install", flush=True)
        results.selfcontained = selfcontained.measure()
        results.violations.extend(results.selfcontained.violations)
    if not options.skip_pace:
        print("pace targets moved out of the tests: a small throttled fleet", flush=True)
        results.pace = pace.measure()
        results.violations.extend(results.pace.violations)
    results.seconds = time.perf_counter() - started
    results.load_after = os.getloadavg()[0]
    text = report.render(results)
    options.output.write_text(text, encoding="utf-8")
    print(text)
    print(f"wrote {options.output} in {results.seconds:.0f} s")
    if results.violations:
        print("FAILED checks:\n  " + "\n  ".join(results.violations), file=sys.stderr)
        return 1
    return 0
