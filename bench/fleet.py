"""Fleet-size curve: 10 to 150 cold agents booting at once against a throttled SSM, each a real process.

`python -m bench.fleet` runs it alone and prints its section; `make bench` runs it after the storm and
adds the section to bench/RESULTS.md. Agents keep their default deadlines (60 s outage, 600 s
throttled), as on an instance.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from bench.checks import BEFORE_REVISION, RUN_FROM_TREE, extract_before
from bench.fallback import GetParametersDenial, fallback_calls_per_agent
from bench.stack import Emulator
from bench.storm import (
    STORM_SERVICE,
    StormResult,
    ThrottlingResponder,
    agent_commands,
    default_log_dir,
    prepare_storm,
    run_storm,
)

FLEET_SIZES = (10, 40, 100, 150)
FLEET_RATE_PER_SECOND = 2.0
FLEET_PARAMETERS = 20
# Targets (issue: fleet scale without a cliff).
MAX_RATIO_TO_IDEAL = 1.3
MAX_THROTTLED_PER_CALL_AT_100 = 10.0


@dataclass(frozen=True)
class CurvePoint:
    """One fleet size's storm, with the figures the report shows."""

    storm: StormResult

    @property
    def throttled_per_call(self) -> float:
        """Throttled answers per call let through."""
        return self.storm.calls_throttled / max(1, self.storm.calls_allowed)


def run_curve(
    sizes: Sequence[int] = FLEET_SIZES,
    *,
    rate_per_second: float = FLEET_RATE_PER_SECOND,
    parameters: int = FLEET_PARAMETERS,
    log: bool = True,
    before_tree: Optional[str] = None,
    fallback: bool = False,
) -> list[CurvePoint]:
    """Run one storm per fleet size against one emulator, smallest first; with `before_tree`, the
    agent of that tree (as it was before the throttled budget and backoff) instead of this one; with
    `fallback`, under a role with ssm:GetParameter only (one call a name)."""
    responder = ThrottlingResponder(None)
    denial = GetParametersDenial(responder)
    denial.enabled = fallback
    points = []
    entry = ("-c", RUN_FROM_TREE, before_tree) if before_tree else ("-m", "agent")
    with Emulator(responder=denial) as emulator:
        prepare_storm(emulator, parameters)
        for agents in sizes:
            if log:
                print(f"  fleet curve: {agents} agents at {rate_per_second:g} calls/s", flush=True)
            label = f"fleet-{agents}"
            storm = run_storm(
                emulator,
                responder,
                label=label,
                commands=agent_commands(emulator, agents, entry=entry),
                parameters=parameters,
                rate_per_second=rate_per_second,
                burst=max(1.0, rate_per_second),
                log_dir=default_log_dir(emulator, label),
                calls_needed=agents * fallback_calls_per_agent(parameters) if fallback else None,
            )
            points.append(CurvePoint(storm))
            missing = [
                index
                for index in range(agents)
                if not (emulator.runtime_dir / f"agent-{index:03d}" / STORM_SERVICE / "env").exists()
            ]
            if missing and log:
                print(f"    {len(missing)} agents left no file", flush=True)
    return points


def violations(points: Sequence[CurvePoint]) -> list[str]:
    """The targets a curve misses, one line each."""
    found = []
    for point in points:
        storm = point.storm
        if storm.failed:
            found.append(f"fleet curve: {storm.failed} of {storm.agents} agents failed")
        if storm.ratio_to_ideal is not None and storm.ratio_to_ideal > MAX_RATIO_TO_IDEAL:
            found.append(
                f"fleet curve: {storm.agents} agents took {storm.ratio_to_ideal:.2f}x the ideal "
                f"(target {MAX_RATIO_TO_IDEAL}x)"
            )
        if storm.agents == 100 and point.throttled_per_call > MAX_THROTTLED_PER_CALL_AT_100:
            found.append(
                f"fleet curve: {point.throttled_per_call:.1f} throttled answers per call let through at 100 "
                f"agents (target {MAX_THROTTLED_PER_CALL_AT_100:g})"
            )
    return found


def render_section(points: Sequence[CurvePoint], *, heading: str = "## Fleet-size curve") -> str:
    """The report's section for a curve: a table and whether each target was met."""
    if not points:
        return f"{heading}\n\nNot run.\n"
    rate = points[0].storm.rate_per_second or FLEET_RATE_PER_SECOND
    calls = points[0].storm.calls_needed // max(1, points[0].storm.agents)
    lines = [
        heading,
        "",
        f"Each fleet starts at once, every agent a real cold `python -m agent render` process, each needing "
        f"{calls} SSM calls; the proxy lets {rate:g} SSM calls a second through (burst "
        f"{max(1.0, rate):g}) and answers the rest with `ThrottlingException`. At {rate:g} calls/s, one "
        f"agent here stands for {40 / rate:g} instances against the default 40 calls/s quota.",
        "",
        "| agents | stands for (instances) | failed | total s | ideal s (calls / rate) | total / ideal "
        "| throttled answers per call let through | slowest agent s | median agent s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for point in points:
        storm = point.storm
        lines.append(
            f"| {storm.agents} | {storm.agents * 40 / rate:.0f} | {storm.failed} | {storm.total_seconds:.1f} "
            f"| {storm.ideal_seconds or 0:.1f} | {storm.ratio_to_ideal or 0:.2f}x "
            f"| {point.throttled_per_call:.1f} "
            f"| {storm.slowest_agent_seconds:.1f} | {storm.median_agent_seconds:.1f} |"
        )
    missed = violations(points)
    lines += [
        "",
        f"Targets: 0 failures at every size, total within {MAX_RATIO_TO_IDEAL}x the ideal, at most "
        f"{MAX_THROTTLED_PER_CALL_AT_100:g} throttled answers per call let through at 100 agents: "
        + ("all met." if not missed else "**missed**: " + "; ".join(missed) + "."),
        "",
    ]
    for point in points:
        if point.storm.failure_samples:
            sample = point.storm.failure_samples[0].strip().splitlines()[-1]
            lines.append(f"- {point.storm.agents} agents: a failed agent's last line: `{sample}`")
    return "\n".join(lines) + "\n"


def before_and_after(agents: int, rounds: int) -> list[tuple[str, CurvePoint]]:
    """The same storm by the agent before the throttled budget (BEFORE_REVISION) and by this tree,
    alternating `rounds` times in one run: what "no slower than before" is measured with."""
    import tempfile

    pairs: list[tuple[str, CurvePoint]] = []
    with tempfile.TemporaryDirectory(prefix="secrets-agent-before-") as scratch:
        before = extract_before(Path(scratch))
        if before is None:
            return pairs
        for _ in range(rounds):
            pairs.append(
                (f"before ({BEFORE_REVISION})", run_curve([agents], log=False, before_tree=str(before))[0])
            )
            pairs.append(("this tree", run_curve([agents], log=False)[0]))
    return pairs


def main(argv: Optional[list[str]] = None) -> int:
    """Run the curve alone and print its section; exit 1 when a target is missed."""
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(FLEET_SIZES))
    parser.add_argument("--rate", type=float, default=FLEET_RATE_PER_SECOND)
    parser.add_argument("--parameters", type=int, default=FLEET_PARAMETERS)
    parser.add_argument(
        "--fallback",
        action="store_true",
        help="under a GetParameter-only role (one call a name); give --rate 10x to keep the ideal times",
    )
    parser.add_argument(
        "--before-after",
        type=int,
        metavar="ROUNDS",
        help="instead: 40 agents, before and after, ROUNDS times",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.before_after:
        for label, point in before_and_after(40, args.before_after):
            storm = point.storm
            print(
                f"{label}: failed {storm.failed}, total {storm.total_seconds:.1f} s "
                f"({storm.ratio_to_ideal or 0:.2f}x), throttled per call {point.throttled_per_call:.1f}"
            )
        return 0
    points = run_curve(
        args.sizes, rate_per_second=args.rate, parameters=args.parameters, fallback=args.fallback
    )
    print(render_section(points))
    print(f"{math.ceil(time.perf_counter() - started)} s")
    return 1 if violations(points) else 0


if __name__ == "__main__":
    sys.exit(main())
