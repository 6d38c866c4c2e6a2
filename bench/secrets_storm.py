"""Fleet boot storm against Secrets Manager: many agents render `secret()`s at once against a stand-in
throttled in proportion to Secrets Manager's real quotas, beside the SSM storm in the same run.

AWS's quotas per account and region (March 2025): GetSecretValue 10,000 calls/s, BatchGetSecretValue
100 calls/s (20 secrets a call), DescribeSecret 40,000 calls/s. Each is scaled down by the SSM
storm's own factor (SSM's 40 calls/s against the storm's rate), one token bucket per action in the
recording proxy in front of moto, answering `ThrottlingException` beyond it as AWS does.

The three fetch strategies (agent.toml's secretsmanager_fetch) run at several fleet sizes: "batch"
(BatchGetSecretValue only), "single" (GetSecretValue only, a few at a time) and "auto" (the default:
batch, and single calls once the batch call is throttled).

`python -m bench.secrets_storm` runs this section alone and writes it into bench/RESULTS.md in place;
`make bench` runs it after section 4.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from bench.stack import CLI_ACCESS_KEY_ID, CLI_SECRET_ACCESS_KEY, REGION, Emulator
from bench.storm import (
    AGENT_STORM,
    THROTTLED,
    StormResult,
    ThrottlingResponder,
    TokenBucket,
    agent_commands,
    clear_agent_folders,
    clear_storm_files,
    default_log_dir,
    prepare_storm,
    run_fleet,
    run_storm,
    storm_env_file,
    storm_environment_note,
)
from devtools.systemd_envfile import parse_env
from tests.integration.moto_server import CannedResponse, Responder

# AWS's quotas, calls a second per account and region, and SSM's default that the SSM storm scales.
AWS_QUOTAS = {"GetSecretValue": 10_000.0, "BatchGetSecretValue": 100.0, "DescribeSecret": 40_000.0}
SSM_QUOTA = 40.0
BATCH_MAX_SECRETS = 20
SECRETS_SERVICE = "secrets-storm"
SECRET_PREFIX = "storm/secret-"
STRATEGIES = ("batch", "single", "auto")
AUTO_ROUNDS = 3
RESULTS_PATH = Path(__file__).with_name("RESULTS.md")
SECTION_TITLE = "## 4c. Fleet boot storm against Secrets Manager"
TARGET_RATIO = 1.3


class SecretsThrottle:
    """A RecordingProxy responder: Secrets Manager calls over their action's bucket get
    ThrottlingException; everything else goes to `inner` (the SSM storm's throttle)."""

    def __init__(self, inner: Responder) -> None:
        self.inner = inner
        self.buckets: Optional[dict[str, TokenBucket]] = None
        self.allowed: dict[str, int] = {}
        self.throttled: dict[str, int] = {}
        self._lock = threading.Lock()

    def reset(self, rates: Optional[dict[str, float]]) -> None:
        """A new storm: one bucket per action at `rates` (None: no throttle), a second's burst each."""
        with self._lock:
            self.buckets = (
                {action: TokenBucket(rate, max(1.0, rate)) for action, rate in rates.items()}
                if rates
                else None
            )
            self.allowed = dict.fromkeys(AWS_QUOTAS, 0)
            self.throttled = dict.fromkeys(AWS_QUOTAS, 0)

    def __call__(self, index: int, action: str) -> Optional[CannedResponse]:
        if action not in AWS_QUOTAS:
            return self.inner(index, action)
        bucket = self.buckets.get(action) if self.buckets else None
        is_allowed = bucket is None or bucket.take()
        with self._lock:
            counts = self.allowed if is_allowed else self.throttled
            counts[action] = counts.get(action, 0) + 1
        return None if is_allowed else THROTTLED


@dataclass
class SecretsStorm:
    """How one fleet of one strategy fared against the scaled quotas (scale None: no throttle)."""

    strategy: str
    agents: int
    scale: Optional[float]
    exit_codes: list[int]
    agent_seconds: list[float]
    total_seconds: float
    allowed: dict[str, int]
    throttled_answers: dict[str, int]
    failure_samples: list[str] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(1 for code in self.exit_codes if code != 0)

    @property
    def median_agent_seconds(self) -> float:
        return statistics.median(self.agent_seconds)


@dataclass
class SecretsStormResults:
    """The section's figures: the SSM storm beside it, and every Secrets Manager fleet."""

    # AWS's quotas divided by `scale` (the SSM storm's own factor) for the target; by `steep_scale`,
    # where BatchGetSecretValue's quota binds on this machine, to show which strategy wins.
    scale: float
    steep_scale: float
    secrets: int
    storm_agents: int
    fleet_sizes: tuple[int, ...]
    steep_sizes: tuple[int, ...]
    ssm: list[StormResult] = field(default_factory=list)
    storms: list[SecretsStorm] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    environment: str = ""

    def runs(self, strategy: str, agents: int, scale: Optional[float]) -> list[SecretsStorm]:
        """The fleets of one strategy and size at one scale."""
        return [s for s in self.storms if s.strategy == strategy and s.agents == agents and s.scale == scale]

    def floor(self, agents: int) -> Optional[float]:
        """The fastest this machine ran a fleet of this size in this run, with any strategy, throttled
        or not: what its CPUs and the emulator allow at best. (One unthrottled run is no floor on a
        shared machine: identical runs here spread by half their time.)"""
        runs = [s.total_seconds for s in self.storms if s.agents == agents]
        return min(runs) if runs else None

    def quota_seconds(self, strategy: str, agents: int, scale: float) -> float:
        """The time the scaled quota alone imposes on a fleet fetching this way ("auto": the better)."""
        batch_rate = AWS_QUOTAS["BatchGetSecretValue"] / scale
        batch = agents * math.ceil(self.secrets / BATCH_MAX_SECRETS) / batch_rate
        single = agents * self.secrets / (AWS_QUOTAS["GetSecretValue"] / scale)
        return {"batch": batch, "single": single}.get(strategy, min(batch, single))

    def ideal_seconds(self, agents: int, scale: float) -> Optional[float]:
        """The best any strategy can do here: the longer of the best strategy's quota time and the
        fastest this machine ran the fleet at all."""
        floor = self.floor(agents)
        if floor is None:
            return None
        return max(self.quota_seconds("auto", agents, scale), floor)


def secret_names(count: int) -> list[str]:
    """The secrets every agent of the storm asks for."""
    return [f"{SECRET_PREFIX}{index:03d}" for index in range(count)]


def prepare_secrets(emulator: Emulator, count: int) -> None:
    """Create the secrets in moto and the template that names every one."""
    import boto3

    client = boto3.client(
        "secretsmanager",
        region_name=REGION,
        endpoint_url=emulator.moto_url,
        aws_access_key_id=CLI_ACCESS_KEY_ID,
        aws_secret_access_key=CLI_SECRET_ACCESS_KEY,
    )
    names = secret_names(count)
    for name in names:
        client.create_secret(Name=name, SecretString=f"value of {name}")
    template = "".join(f'S{index:03d}={{{{ secret("{name}") }}}}\n' for index, name in enumerate(names))
    emulator.write_template(SECRETS_SERVICE, template)


def _env_file(emulator: Emulator, index: int) -> Path:
    return emulator.runtime_dir / f"agent-{index:03d}" / SECRETS_SERVICE / "env"


def _commands(emulator: Emulator, agents: int) -> list[tuple[list[str], dict[str, str]]]:
    commands = []
    for index in range(agents):
        env = emulator.agent_env()
        env["AWS_ENDPOINT_URL_SECRETS_MANAGER"] = emulator.ssm_url  # the same proxy, in front of moto
        env["SECRETS_AGENT_RUNTIME_DIR"] = str(_env_file(emulator, index).parents[1])
        commands.append(([sys.executable, "-m", "agent", "render", SECRETS_SERVICE], env))
    return commands


def run_secrets_storm(
    emulator: Emulator,
    throttle: SecretsThrottle,
    results: SecretsStormResults,
    strategy: str,
    agents: int,
    *,
    scale: Optional[float],
) -> SecretsStorm:
    """One fleet of `agents`, all started at once, fetching with `strategy` against AWS's quotas
    divided by `scale` (None: no throttle); every agent's file is checked."""
    settings = emulator.config_dir / "agent.toml"
    settings.write_text(f'secretsmanager_fetch = "{strategy}"\n', encoding="utf-8")
    for index in range(agents):
        clear_agent_folders(_env_file(emulator, index).parents[1])
    throttle.reset({action: quota / scale for action, quota in AWS_QUOTAS.items()} if scale else None)
    label = f"secrets {strategy} x{agents} " + (f"at 1:{scale:g}" if scale else "unthrottled")
    exit_codes, seconds, total, failures = run_fleet(
        _commands(emulator, agents), default_log_dir(emulator, label)
    )
    settings.unlink()
    storm = SecretsStorm(
        strategy=strategy,
        agents=agents,
        scale=scale,
        exit_codes=exit_codes,
        agent_seconds=seconds,
        total_seconds=total,
        allowed=dict(throttle.allowed),
        throttled_answers=dict(throttle.throttled),
        failure_samples=failures,
    )
    if storm.failed:
        results.violations.append(f"secrets storm ({label}): {storm.failed} of {agents} agents failed")
    for index in range(agents):
        path = _env_file(emulator, index)
        if not path.exists() or len(parse_env(path.read_text(encoding="utf-8"))) != results.secrets:
            results.violations.append(f"secrets storm ({label}): agent {index} left no complete file")
            break
    print(f"  {label}: {total:.1f} s, {storm.failed} failed, {_calls(storm.allowed)}", flush=True)
    return storm


def _ssm_storms(
    emulator: Emulator,
    responder: ThrottlingResponder,
    results: SecretsStormResults,
    *,
    rate: float,
    parameters: int,
) -> None:
    """Section 4's storm, in the same run: its unthrottled floor and one throttled run."""
    agents = results.storm_agents
    for label, fleet_rate in (("secrets-agent, no throttle (CPU only)", None), (AGENT_STORM, rate)):
        print(f"  SSM storm: {label}", flush=True)
        clear_storm_files(emulator, agents)
        result = run_storm(
            emulator,
            responder,
            label=label,
            commands=agent_commands(emulator, agents),
            parameters=parameters,
            rate_per_second=fleet_rate,
            burst=max(1.0, fleet_rate or 1.0),
            log_dir=default_log_dir(emulator, f"ssm {label}"),
        )
        results.ssm.append(result)
        if result.failed:
            results.violations.append(f"SSM storm: {result.failed} of {result.agents} agents failed")
        if any(not storm_env_file(emulator, index).exists() for index in range(agents)):
            results.violations.append("SSM storm: an agent left no file")


def measure(
    *,
    storm_rate: float = 2.0,
    storm_agents: int = 40,
    storm_parameters: int = 20,
    secrets: int = 20,
    fleet_sizes: Sequence[int] = (5, 40),
    steep_scale: float = 200.0,
    steep_sizes: Sequence[int] = (5, 20, 40),
) -> SecretsStormResults:
    """The SSM storm (with its floor) and the Secrets Manager fleets, in one run on one emulator."""
    results = SecretsStormResults(
        scale=SSM_QUOTA / storm_rate,
        steep_scale=steep_scale,
        secrets=secrets,
        storm_agents=storm_agents,
        fleet_sizes=tuple(fleet_sizes),
        steep_sizes=tuple(steep_sizes),
        environment=storm_environment_note(),
    )
    ssm_throttle = ThrottlingResponder(None)
    throttle = SecretsThrottle(ssm_throttle)
    with Emulator(responder=throttle) as emulator:
        prepare_storm(emulator, storm_parameters)
        prepare_secrets(emulator, secrets)
        throttle.reset(None)
        _ssm_storms(emulator, ssm_throttle, results, rate=storm_rate, parameters=storm_parameters)
        for agents in sorted(set(fleet_sizes) | set(steep_sizes)):
            for strategy in ("batch", "single"):
                results.storms.append(
                    run_secrets_storm(emulator, throttle, results, strategy, agents, scale=None)
                )
            plan: list[tuple[str, float]] = []
            if agents in fleet_sizes:
                # Rounds of every strategy in turn, so that the machine's other work falls on all.
                rounds = AUTO_ROUNDS if agents == storm_agents else 1
                plan += [(s, results.scale) for _ in range(rounds) for s in STRATEGIES]
            if agents in steep_sizes:
                plan += [(s, steep_scale) for s in STRATEGIES]
            for strategy, scale in plan:
                results.storms.append(
                    run_secrets_storm(emulator, throttle, results, strategy, agents, scale=scale)
                )
    _check_target(results)
    return results


def _check_target(results: SecretsStormResults) -> None:
    ideal = results.ideal_seconds(results.storm_agents, results.scale)
    runs = results.runs("auto", results.storm_agents, results.scale)
    if ideal is None or not runs:
        results.violations.append("secrets storm: the storm-size fleet did not run")
        return
    ratio = statistics.median(s.total_seconds for s in runs) / ideal
    if ratio > TARGET_RATIO:
        results.violations.append(
            f"secrets storm: {results.storm_agents} agents took {ratio:.2f}x the ideal "
            f"(target {TARGET_RATIO}x)"
        )


# -- the report -------------------------------------------------------------------------------------


def _calls(counts: dict[str, int]) -> str:
    short = {"BatchGetSecretValue": "batch", "GetSecretValue": "single", "DescribeSecret": "describe"}
    listed = [f"{counts[a]} {name}" for a, name in short.items() if counts.get(a)]
    return ", ".join(listed) or "0"


def _strategy_table(results: SecretsStormResults, scale: float, sizes: Sequence[int]) -> list[str]:
    lines = [
        "| strategy | agents | stands for (instances) | failed | total s | fastest run s | quota s "
        "| ideal s | total / ideal | median agent s | calls let through | throttled answers |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for agents in sizes:
        ideal = results.ideal_seconds(agents, scale)
        for strategy in STRATEGIES:
            floor = results.floor(agents)
            quota = results.quota_seconds(strategy, agents, scale)
            for storm in results.runs(strategy, agents, scale):
                ratio = f"{storm.total_seconds / ideal:.2f}x" if ideal else "-"
                lines.append(
                    f"| {strategy} | {agents} | {agents * scale:.0f} | {storm.failed} "
                    f"| {storm.total_seconds:.1f} | {f'{floor:.1f}' if floor is not None else '-'} "
                    f"| {quota:.1f} | {f'{ideal:.1f}' if ideal else '-'} | {ratio} "
                    f"| {storm.median_agent_seconds:.1f} | {_calls(storm.allowed)} "
                    f"| {_calls(storm.throttled_answers)} |"
                )
    return lines


def _winners(results: SecretsStormResults, scale: float, sizes: Sequence[int]) -> list[str]:
    lines = [
        "| agents | stands for (instances) | batch s | single s | auto s | fastest |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for agents in sizes:
        totals = {
            strategy: statistics.median(s.total_seconds for s in runs)
            for strategy in STRATEGIES
            if (runs := results.runs(strategy, agents, scale))
        }
        if len(totals) == len(STRATEGIES):
            fastest = min(totals, key=lambda key: totals[key])
            lines.append(
                f"| {agents} | {agents * scale:.0f} | {totals['batch']:.1f} | {totals['single']:.1f} "
                f"| {totals['auto']:.1f} | {fastest} |"
            )
    return lines


def render_section(results: SecretsStormResults, title: str = SECTION_TITLE) -> str:
    """The section's Markdown."""
    scale, steep = results.scale, results.steep_scale
    lines: list[str] = [
        title,
        "",
        f"Run on its own (`python -m bench.secrets_storm`), in one run with the SSM storm beside it: "
        f"{results.environment}, shared with other work (the load average is in the figures). Every agent "
        f"is a real cold `python -m agent render` process rendering {results.secrets} `secret()`s; a fleet "
        "starts at once. The proxy in front of moto throttles each Secrets Manager action with a token "
        "bucket of its own (a second's burst) and answers `ThrottlingException` beyond it. The quotas are "
        f"AWS's divided by the SSM storm's own factor ({scale:g}: SSM's 40 calls/s to its "
        f"{SSM_QUOTA / scale:g}) for the target, and by {steep:g} where BatchGetSecretValue's quota binds "
        "on this machine:",
        "",
        f"| action | AWS quota (calls/s) | 1:{scale:g} (calls/s) | 1:{steep:g} (calls/s) |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {a} | {q:,.0f} | {q / scale:g} | {q / steep:g} |" for a, q in AWS_QUOTAS.items()]
    lines += [
        "",
        f"The SSM storm beside it ({results.storm_agents} agents, 20 parameters each: 2 GetParameters "
        f"calls; {SSM_QUOTA / scale:g} calls/s):",
        "",
        "| fleet | agents | failed | total s | ideal s | total / ideal | slowest agent s "
        "| calls let through | throttled answers |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for storm in results.ssm:
        ideal, ratio = storm.ideal_seconds, storm.ratio_to_ideal
        lines.append(
            f"| SSM: {storm.label} | {storm.agents} | {storm.failed} | {storm.total_seconds:.1f} "
            f"| {f'{ideal:.1f}' if ideal else '-'} | {f'{ratio:.2f}x' if ratio else '-'} "
            f"| {storm.slowest_agent_seconds:.1f} | {storm.calls_allowed} | {storm.calls_throttled} |"
        )
    lines += [
        "",
        "*Fastest run s*: the fastest this machine ran a fleet of that size in this run, with any "
        "strategy, throttled or not (unthrottled runs: "
        + ", ".join(
            f"{s.strategy} x{s.agents} {s.total_seconds:.1f} s" for s in results.storms if s.scale is None
        )
        + "). *Quota s*: the time the scaled quota alone imposes on the strategy's calls (auto: the "
        "better strategy's). *Ideal s*: the longer of the best quota time and the fastest run: the best "
        "any strategy can do here.",
        "",
        f"At 1:{scale:g}, as the SSM storm:",
        "",
        *_strategy_table(results, scale, results.fleet_sizes),
        "",
        f"At 1:{steep:g}:",
        "",
        *_strategy_table(results, steep, results.steep_sizes),
        "",
        "Which strategy wins at which fleet size (total s; median where repeated):",
        "",
        f"At 1:{scale:g}:",
        "",
        *_winners(results, scale, results.fleet_sizes),
        "",
        f"At 1:{steep:g}:",
        "",
        *_winners(results, steep, results.steep_sizes),
    ]
    runs = results.runs("auto", results.storm_agents, scale)
    ideal = results.ideal_seconds(results.storm_agents, scale)
    if runs and ideal:
        ratios = sorted(s.total_seconds / ideal for s in runs)
        failed = sum(s.failed for s in runs)
        median = statistics.median(ratios)
        met = failed == 0 and median <= TARGET_RATIO and not results.violations
        listed = ", ".join(f"{ratio:.2f}x" for ratio in ratios)
        lines += [
            "",
            f"Target: the {results.storm_agents}-agent storm with the default strategy (auto) at 1:{scale:g} "
            f"ends with zero failed agents (**{failed}** in {len(runs)} runs) within {TARGET_RATIO}x the "
            f"ideal (median of {listed}: **{median:.2f}x**), and every agent of every fleet wrote its "
            f"whole file: {'met' if met else '**missed**'}.",
        ]
    if results.violations:
        lines += ["", "Violations: " + "; ".join(results.violations)]
    for failed_storm in [s for s in results.storms if s.failure_samples][:3]:
        sample = failed_storm.failure_samples[0].strip().splitlines()
        last = sample[-1] if sample else ""
        label = f"{failed_storm.strategy} x{failed_storm.agents}"
        lines.append(f"- {label}: a failed agent's last line: `{last}`")
    return "\n".join(lines) + "\n"


def write_section(text: str, path: Path = RESULTS_PATH, title: str = SECTION_TITLE) -> None:
    """Put the section in RESULTS.md in place of an earlier one, else before the first top section
    after section 4 (the rest of the file stays as the last full run wrote it)."""
    document = path.read_text(encoding="utf-8")
    existing = re.search(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", document, flags=re.M | re.S)
    if existing:
        document = document[: existing.start()] + text + "\n" + document[existing.end() :]
    else:
        after = re.search(r"^## 4\. .*?\n(?=^## (?!4))", document, flags=re.M | re.S)
        at = after.end() if after else len(document)
        document = document[:at] + text + "\n" + document[at:]
    path.write_text(document, encoding="utf-8")


def main(argv: Optional[list[str]] = None) -> int:
    """Run this section alone and write it into bench/RESULTS.md; exit 1 when a target is missed."""
    parser = argparse.ArgumentParser(prog="python -m bench.secrets_storm", description=__doc__)
    parser.add_argument("--storm-rate", type=float, default=2.0, help="the SSM storm's calls/s (the scale)")
    parser.add_argument("--storm-agents", type=int, default=40)
    parser.add_argument("--secrets", type=int, default=20, help="secrets each agent renders")
    parser.add_argument("--fleet-sizes", default="5,40", help="fleet sizes at the SSM storm's scale")
    parser.add_argument("--steep-scale", type=float, default=200.0)
    parser.add_argument("--steep-sizes", default="5,20,40", help="fleet sizes at the steep scale")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH)
    parser.add_argument("--title", default=SECTION_TITLE, help="the section's heading (a rerun beside it)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    results = measure(
        storm_rate=args.storm_rate,
        storm_agents=args.storm_agents,
        secrets=args.secrets,
        fleet_sizes=tuple(int(size) for size in args.fleet_sizes.split(",")),
        steep_scale=args.steep_scale,
        steep_sizes=tuple(int(size) for size in args.steep_sizes.split(",")),
    )
    results.environment += f"; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    text = render_section(results, title=args.title)
    write_section(text, args.output, title=args.title)
    print(text)
    print(f"wrote {args.output} in {time.perf_counter() - started:.0f} s")
    if results.violations:
        print("FAILED checks:\n  " + "\n  ".join(results.violations), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
