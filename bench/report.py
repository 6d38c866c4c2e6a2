"""RESULTS.md from one run's measurements: tables, ratios, targets met or missed."""

from __future__ import annotations

import math
import os
import platform
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from bench import checks, fleet, secrets_storm
from bench.storm import AGENT_STORM, StormResult

if TYPE_CHECKING:
    from bench.measure import Series
    from bench.run import Results

# The targets.
SEED_SPEEDUP_AT_10 = 10.0
BY_PATH_RATIO_AT_10 = 0.8
STORM_RATIO = 1.3


def finish_section(lines: Sequence[str], violations: Sequence[str], output: Optional[Path] = None) -> int:
    """A section run on its own (`python -m bench.NAME`): print it, and write it to `output` when
    given; each missed target on stderr. The exit code: 1 when a target was missed."""
    text = "\n".join(lines)
    print(text)
    if output is not None:
        output.write_text(text + "\n", encoding="utf-8")
    for violation in violations:
        print(f"FAILED: {violation}", file=sys.stderr)
    return 1 if violations else 0


def _s(seconds: float) -> str:
    return f"{seconds:.3f}" if seconds < 10 else f"{seconds:.1f}"


def _ratio(value: float) -> str:
    return f"{value:.2f}x" if value >= 0.1 else f"{value:.3f}x"


def _versions() -> str:
    names = ["boto3", "botocore", "awscli", "moto", "jinja2", "requests", "structlog"]
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (absent)")
    return ", ".join(found)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def render(results: Results) -> str:
    """The whole report."""
    from bench import endpoint_mode, guard, pace, rotation, run, selfcontained

    lines: list[str] = []
    add = lines.append
    options = results.options
    when = datetime.fromtimestamp(results.started, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    add("# secrets-agent: benchmark results")
    add("")
    add(f"Written by `make bench` (`python -m bench`) on {when}, in {results.seconds:.0f} s; every figure")
    add("below comes from this one run.")
    add("")
    add(
        f"- Machine: {os.cpu_count()} CPUs ({_cpu_model()}), Linux {platform.release()}, "
        f"Python {sys.version.split()[0]}; 1-minute load average {results.load_before:.2f} at the start, "
        f"{results.load_after:.2f} at the end (anything above 0 is other work sharing the CPUs)."
    )
    add(f"- Packages: {_versions()}.")
    add(
        "- Emulator, all on 127.0.0.1: moto's server (SSM) behind a recording proxy that counts each "
        "action, and the project's strict IMDSv2 fake. Values are SecureStrings of 40 random characters."
    )
    add(
        "- The agent runs as on an instance: region and role credentials from IMDSv2, output on tmpfs "
        "(/dev/shm). The AWS CLI peers get fake keys and the region in their environment "
        "(no IMDS round trips: in their favour) and AWS_CONFIG_FILE=/dev/null."
    )
    add(
        f"- Cold processes, {options.rounds} interleaved rounds (each round runs every tool at every N "
        "in a new random order); medians. Peak memory is the largest process's max RSS (wait4)."
    )
    add("")
    _renders(results, add)
    _floor(results, add)
    _calls(results, add)
    _fallback(results, add)
    _storm(results, add)
    if results.secrets_storm is not None:
        add(secrets_storm.render_section(results.secrets_storm))
    fleet.report(results.fleet_results, add)
    add(checks.render_section(results.check_costs, results.check_note))
    add(
        checks.render_section(
            results.consolidation_costs,
            results.consolidation_note,
            title=checks.CONSOLIDATION_TITLE,
            before=checks.CONSOLIDATION_BEFORE,
        )
    )
    _memory(results, add)
    _levers(results, add)
    rotation.report(results.rotation, add)
    endpoint_mode.report(results.endpoint_mode, add)
    guard.report(results.guard, add)
    pace.report(results.pace, add)
    selfcontained.report(results.selfcontained, add)
    _reading(results, add)
    if results.violations:
        add("## Failed checks")
        add("")
        lines.extend(f"- {violation}" for violation in results.violations)
        add("")
    del run
    return "\n".join(lines).rstrip() + "\n"


def _get(results: Results, tool: str, size: int) -> Optional[Series]:
    series = results.series.get((tool, size))
    return series if series is not None and series.runs else None


def seed_seconds(results: Results, size: int) -> tuple[float, str]:
    """The seed flow's median at `size`, or its extrapolation from the largest measured N."""
    from bench.run import SEED_FLOW

    series = _get(results, SEED_FLOW, size)
    if series is not None:
        return series.median_seconds, f"{series.runs} runs"
    measured = [n for n in (100, 10) if _get(results, SEED_FLOW, n)]
    base = measured[0]
    per_parameter = _get(results, SEED_FLOW, base).median_seconds / base  # type: ignore[union-attr]
    return per_parameter * size, f"extrapolated: {size} x {per_parameter:.3f} s per parameter at N={base}"


def _renders(results: Results, add: Callable[[str], None]) -> None:
    from bench.run import AGENT_NAMED, AGENT_PATH, CLI_BY_PATH, SIZES

    emit = add
    emit("## 1. Cold-process render time")
    emit("")
    emit(
        "Wall time from spawn to exit, median seconds. *named*: a template naming each parameter "
        "(GetParameters, 10 a call); *path*: `params(prefix, recursive=True)` (GetParametersByPath)."
    )
    emit("")
    emit(
        "| N | secrets-agent (named) | secrets-agent (path) | seed flow: `aws ssm get-parameter` x N "
        "| one `aws ssm get-parameters-by-path` | agent / seed flow | agent / by-path CLI "
        "| agent (path) / by-path CLI |"
    )
    emit("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size in SIZES:
        named = _get(results, AGENT_NAMED, size)
        path = _get(results, AGENT_PATH, size)
        cli = _get(results, CLI_BY_PATH, size)
        if named is None or path is None or cli is None:
            continue
        seed, how = seed_seconds(results, size)
        seed_text = f"{_s(seed)} ({how})"
        emit(
            f"| {size} | {_s(named.median_seconds)} | {_s(path.median_seconds)} | {seed_text} "
            f"| {_s(cli.median_seconds)} | {_ratio(named.median_seconds / seed)} "
            f"({seed / named.median_seconds:.1f}x faster) "
            f"| {_ratio(named.median_seconds / cli.median_seconds)} "
            f"| {_ratio(path.median_seconds / cli.median_seconds)} |"
        )
    emit("")
    named10 = _get(results, AGENT_NAMED, 10)
    cli10 = _get(results, CLI_BY_PATH, 10)
    if named10 and cli10:
        seed10, _ = seed_seconds(results, 10)
        speedup = seed10 / named10.median_seconds
        ratio = named10.median_seconds / cli10.median_seconds
        emit("Targets:")
        emit("")
        emit(
            f"- N=10, at least {SEED_SPEEDUP_AT_10:g}x faster than the seed flow: **{speedup:.1f}x**, "
            + ("met." if speedup >= SEED_SPEEDUP_AT_10 else f"missed by {SEED_SPEEDUP_AT_10 / speedup:.2f}x.")
        )
        emit(
            f"- N=10, at most {BY_PATH_RATIO_AT_10}x the by-path CLI call: **{ratio:.2f}x**, "
            + (
                "met."
                if ratio <= BY_PATH_RATIO_AT_10
                else f"missed by {(ratio / BY_PATH_RATIO_AT_10 - 1) * 100:.0f}% "
                f"({(named10.median_seconds - BY_PATH_RATIO_AT_10 * cli10.median_seconds) * 1000:.0f} ms)."
            )
        )
        slower = [
            size
            for size in SIZES
            if (a := _get(results, AGENT_NAMED, size))
            and (c := _get(results, CLI_BY_PATH, size))
            and a.median_seconds >= c.median_seconds
        ]
        emit(
            "- Faster than the by-path CLI call at every N: "
            + ("**met**." if not slower else f"**missed** at N={', '.join(map(str, slower))}.")
        )
        emit("")
    emit("Spread (min-max seconds over the rounds), for the noise: ")
    emit("")
    emit("| N | " + " | ".join(t for t in _spread_tools(results)) + " |")
    emit("|---:|" + "---:|" * len(_spread_tools(results)))
    for size in SIZES:
        cells = []
        for tool in _spread_tools(results):
            series = _get(results, tool, size)
            spread = series.spread() if series else None
            cells.append(f"{_s(spread[0])}-{_s(spread[1])} ({series.runs})" if spread and series else "-")
        emit(f"| {size} | " + " | ".join(cells) + " |")
    emit("")
    del AGENT_PATH


def _spread_tools(results: Results) -> tuple[str, ...]:
    from bench.run import TOOLS

    return tuple(tool for tool in TOOLS if any(key[0] == tool for key in results.series))


def _floor(results: Results, add: Callable[[str], None]) -> None:
    from bench.run import AGENT_NAMED, AGENT_PATH, SIZES

    emit = add
    emit("## 2. The floor, and where the agent's time goes")
    emit("")
    emit("| floor | median seconds | peak RSS MiB |")
    emit("|---|---:|---:|")
    for label, series in results.floors.items():
        emit(f"| `{label}` | {_s(series.median_seconds)} | {series.median_rss_mib:.0f} |")
    for label, ms in results.round_trips_ms.items():
        emit(f"| round trip, warm: {label} | {ms / 1000:.4f} | |")
    emit("")
    boto3_floor = results.floors.get('python -c "import boto3"')
    if boto3_floor is None:
        return
    rt = list(results.round_trips_ms.values())
    imds_ms, get_ms, page_ms = rt[0], rt[1], rt[2]
    emit(
        'Floor(N) = `python -c "import boto3"` + the 4 IMDS requests + the minimum SSM calls '
        "(ceil(N/10) GetParameters, or the server's pages), each at its warm round-trip time. "
        "Overhead = agent - floor."
    )
    emit("")
    emit(
        "| N | floor, named (s) | agent named (s) | overhead (s) | agent / floor | floor, path (s) "
        "| agent path (s) | agent path / floor |"
    )
    emit("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size in SIZES:
        named = _get(results, AGENT_NAMED, size)
        path = _get(results, AGENT_PATH, size)
        if named is None or path is None:
            continue
        floor_named = boto3_floor.median_seconds + (imds_ms + math.ceil(size / 10) * get_ms) / 1000
        floor_path = boto3_floor.median_seconds + (imds_ms + results.server_min_pages[size] * page_ms) / 1000
        emit(
            f"| {size} | {_s(floor_named)} | {_s(named.median_seconds)} | "
            f"{named.median_seconds - floor_named:+.3f} | {_ratio(named.median_seconds / floor_named)} "
            f"| {_s(floor_path)} | {_s(path.median_seconds)} | {_ratio(path.median_seconds / floor_path)} |"
        )
    emit("")
    for size, stages in results.profiles.items():
        total = results.profile_totals[size]
        emit(
            f"Profile of one render, N={size} (`python -m bench.instrumented`: the agent's own "
            "`agent.render.render` "
            f"with timestamps at each stage; median of each stage; total {total:.0f} ms):"
        )
        emit("")
        emit("| stage | ms | share |")
        emit("|---|---:|---:|")
        for stage, ms in stages.items():
            emit(f"| {stage} | {ms:.1f} | {ms / total * 100:.0f}% |")
        emit("")
    if results.import_shares:
        total = sum(share.milliseconds for share in results.import_shares)
        emit(
            f"Imports of one render (N=10) by package, from `python -X importtime` (each module's own "
            f"time, charged to the package that pulled it in; importtime itself inflates them; total "
            f"{total:.0f} ms):"
        )
        emit("")
        emit("| package | ms | share |")
        emit("|---|---:|---:|")
        for share in results.import_shares:
            emit(f"| {share.group} | {share.milliseconds:.1f} | {share.milliseconds / total * 100:.0f}% |")
        emit("")


def _calls(results: Results, add: Callable[[str], None]) -> None:
    from bench.run import AGENT_NAMED, AGENT_PATH, CLI_BY_PATH, SEED_FLOW, SIZES

    emit = add
    emit("## 3. Calls per render, counted at the fake servers")
    emit("")
    emit(
        "Counted server side (the proxy in front of moto, the IMDS fake) for each run, and checked on "
        "every run: the agent makes exactly ceil(N/10) GetParameters for N named parameters, exactly "
        "the pages the server hands out for a path, and at most 4 IMDS requests."
    )
    emit("")
    emit(
        "| N | agent named: GetParameters (ceil(N/10)) | agent path: GetParametersByPath "
        "(server's minimum) | agent: IMDS requests | seed flow: GetParameter | by-path CLI: pages |"
    )
    emit("|---:|---:|---:|---:|---:|---:|")
    for size in SIZES:
        named = results.calls.get((AGENT_NAMED, size), {})
        path = results.calls.get((AGENT_PATH, size), {})
        seed = results.calls.get((SEED_FLOW, size), {})
        cli = results.calls.get((CLI_BY_PATH, size), {})
        emit(
            f"| {size} | {named.get('GetParameters', '-')} ({math.ceil(size / 10)}) "
            f"| {path.get('GetParametersByPath', '-')} ({results.server_min_pages.get(size, '-')}) "
            f"| {named.get('IMDS', '-')} | {seed.get('GetParameter', '-')} "
            f"| {cli.get('GetParametersByPath', '-')} |"
        )
    emit("")
    emit(
        "moto hands out a next-page token after a full page even when nothing follows, so a path with "
        "a multiple of 10 parameters takes one more (empty) page than ceil(N/10); the CLI pays it too."
    )
    emit("")


def _fallback(results: Results, add: Callable[[str], None]) -> None:
    from bench.fallback import MODES, SIZES

    fallback = results.fallback
    if fallback is None:
        return
    add("## 3b. The GetParameter fallback")
    add("")
    add(
        "A role with `ssm:GetParameter` only: SSM denies `GetParameters` (answered in SSM's shape by the "
        "proxy), and the agent fetches each name with one `GetParameter`. Cold renders, interleaved with "
        "the batched path in the same rounds; calls counted at the proxy and checked on every run, "
        "as are the values and the single warning."
    )
    add("")
    add("| N | path | calls per render | median render | vs batched |")
    add("|---:|---|---|---:|---:|")
    for size in SIZES:
        batched = fallback.series.get((MODES[0], size))
        for mode in MODES:
            series = fallback.series.get((mode, size))
            calls = fallback.calls.get((mode, size), {})
            if series is None or batched is None:
                continue
            shown = ", ".join(f"{count} {action}" for action, count in calls.items() if count)
            add(
                f"| {size} | {mode} | {shown} | {_s(series.median_seconds)} "
                f"| {_ratio(series.median_seconds / batched.median_seconds)} |"
            )
    add("")


def _agent_storms(results: Results) -> list[StormResult]:
    """The runs of section 4's storm by this agent (those under a throttle, with an ideal time)."""
    return [s for s in results.storms if s.label == AGENT_STORM and s.ratio_to_ideal is not None]


def _median_storm(runs: list[StormResult]) -> Optional[StormResult]:
    """The run with the median total (the lower middle one of an even count)."""
    ordered = sorted(runs, key=lambda s: s.total_seconds)
    return ordered[(len(ordered) - 1) // 2] if ordered else None


def _storm(results: Results, add: Callable[[str], None]) -> None:
    emit = add
    options = results.options
    emit("## 4. Fleet boot storm")
    emit("")
    if not results.storms:
        emit("Not run (--skip-storm).")
        emit("")
        return
    rate = options.storm_rate
    scale = 40 / rate
    emit(
        f"{options.storm_agents} agents start at once, as separate processes (each a real cold "
        f"`python -m agent render`, as on its own instance; threads would share one interpreter's "
        f"imports and GIL, and boto3 Sessions are not thread-safe), each rendering "
        f"{options.storm_parameters} named parameters ({math.ceil(options.storm_parameters / 10)} "
        f"GetParameters calls). The proxy lets {rate:g} SSM calls a second through (a token bucket, "
        f"burst {max(1.0, rate):g}) and answers the rest with `ThrottlingException: Rate exceeded`. "
        f"Scaled down from AWS's 40 TPS by {scale:g}: the same contention as "
        f"{options.storm_agents * scale:.0f} instances booting against the default quota. The rate is "
        "low enough that the throttle, not this machine's CPUs, sets the pace: the same fleet with no "
        "throttle finishes in the first row's time. Agents keep their default 60 s deadline."
    )
    emit("")
    emit(
        "| fleet | agents | failed | total s | ideal s (calls / rate) | total / ideal | time at the "
        "throttle s (first call to last) | slowest agent s | median agent s | calls let through "
        "| throttled answers |"
    )
    emit("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for storm in results.storms:
        ideal = storm.ideal_seconds
        ratio = storm.ratio_to_ideal
        emit(
            f"| {storm.label} | {storm.agents} | {storm.failed} | {storm.total_seconds:.1f} "
            f"| {f'{ideal:.1f}' if ideal else '-'} | {f'{ratio:.2f}x' if ratio else '-'} "
            f"| {f'{storm.span_seconds:.1f}' if storm.span_seconds is not None else '-'} "
            f"| {storm.slowest_agent_seconds:.1f} | {storm.median_agent_seconds:.1f} "
            f"| {storm.calls_allowed} | {storm.calls_throttled} |"
        )
    emit("")
    runs = _agent_storms(results)
    agent = _median_storm(runs)
    if agent is not None and agent.ratio_to_ideal is not None:
        failed = sum(s.failed for s in runs)
        ratios = ", ".join(f"{s.ratio_to_ideal:.2f}x" for s in runs)
        emit(
            f"Target: zero failed agents (**{failed}** in {len(runs)} runs) and total within "
            f"{STORM_RATIO}x of the ideal (the median of the runs of `{AGENT_STORM}`, {ratios}: "
            f"**{agent.ratio_to_ideal:.2f}x**): "
            + ("met." if failed == 0 and agent.ratio_to_ideal <= STORM_RATIO else "**missed**.")
        )
        emit("")
    for storm in results.storms:
        if storm.failure_samples:
            sample = storm.failure_samples[0].strip().splitlines()[-1]
            emit(f"- {storm.label}: a failed agent's last line: `{sample}`")
    emit("")


def _memory(results: Results, emit: Callable[[str], None]) -> None:
    from bench.run import AGENT_NAMED, AGENT_PATH, CLI_BY_PATH, SEED_FLOW, SIZES

    emit("## 5. Memory: peak RSS of one render (MiB, median)")
    emit("")
    emit(
        "| N | secrets-agent (named) | secrets-agent (path) | seed flow (largest aws process) | by-path CLI |"
    )
    emit("|---:|---:|---:|---:|---:|")
    for size in SIZES:
        cells = []
        for tool in (AGENT_NAMED, AGENT_PATH, SEED_FLOW, CLI_BY_PATH):
            series = _get(results, tool, size)
            cells.append(f"{series.median_rss_mib:.0f}" if series else "-")
        emit(f"| {size} | " + " | ".join(cells) + " |")
    emit("")


def _levers(results: Results, add: Callable[[str], None]) -> None:
    emit = add
    emit("## 6. Levers: what would take time back (or took it, marked taken), each measured in this run")
    emit("")
    emit("| change | where | now ms | with it ms | gain ms | how measured |")
    emit("|---|---|---:|---:|---:|---|")
    for lever in results.levers:
        emit(
            f"| {lever.name} | {lever.where} | {lever.now_ms:.1f} | {lever.with_change_ms:.1f} "
            f"| {lever.gain_ms:.1f} | {lever.how} |"
        )
    emit("")


def _reading(results: Results, emit: Callable[[str], None]) -> None:
    """A few sentences over the figures above, written from them."""
    from bench.run import AGENT_NAMED, CLI_BY_PATH

    named = _get(results, AGENT_NAMED, 10)
    cli = _get(results, CLI_BY_PATH, 10)
    profile = results.profiles.get(10, {})
    if named is None or cli is None or not profile:
        return
    seed, _ = seed_seconds(results, 10)
    ratio = named.median_seconds / cli.median_seconds
    emit("## Reading")
    emit("")
    emit(
        f"- **Render.** At N=10 the agent renders in {named.median_seconds * 1000:.0f} ms: "
        f"{seed / named.median_seconds:.1f}x faster than the seed flow ({seed:.2f} s, one ~"
        f"{seed / 10:.2f} s CLI process per parameter) and {ratio:.2f}x the single by-path CLI call. "
        "Its cost is start-up, not the network: "
        + ", ".join(
            f"{stage} {profile[stage]:.0f} ms" for stage in sorted(profile, key=lambda s: -profile[s])[:4]
        )
        + f", while IMDS and SSM together take "
        f"{profile.get('IMDS (token, region, credentials)', 0) + profile.get('SSM calls', 0):.0f} ms."
    )
    exit_ms = profile.get("interpreter exit", 0.0)
    emit(
        f"- **Exit.** The agent turns the garbage collector off for its short run and freezes the "
        f"heap at exit; shutdown takes {exit_ms:.0f} ms."
    )
    if ratio > BY_PATH_RATIO_AT_10:
        emit(
            f"- **Target missed at N=10** ({ratio:.2f}x, not {BY_PATH_RATIO_AT_10}x): the agent pays "
            "for structlog, requests and jinja2 on top of botocore, and for CPython's shutdown, while "
            "the CLI pays for botocore and its own command tables. What closes it, measured in "
            "section 6: IMDS over urllib3, and (a dependency change) "
            "logging without structlog."
        )
    large = _get(results, AGENT_NAMED, 1000)
    cli_large = _get(results, CLI_BY_PATH, 1000)
    profile_large = results.profiles.get(1000, {})
    if large and cli_large and profile_large:
        emit(
            f"- **Large N.** At N=1000 the SSM calls dominate ({profile_large.get('SSM calls', 0):.0f} ms "
            f"for 100 calls against moto) and template compile takes "
            f"{profile_large.get('template read + compile', 0):.0f} ms (Jinja parses and compiles the "
            f"1000-line template to Python); the agent is "
            f"{large.median_seconds / cli_large.median_seconds:.2f}x the by-path CLI call."
        )
    agent_storm = _median_storm(_agent_storms(results))
    cpu_only = next((s for s in results.storms if s.rate_per_second is None), None)
    if agent_storm and agent_storm.ideal_seconds and agent_storm.span_seconds:
        rate = agent_storm.rate_per_second or 1.0
        used = (agent_storm.calls_allowed - max(1.0, rate)) / (rate * agent_storm.span_seconds)
        others = [s for s in results.storms if s.label.startswith("plain boto3")]
        emit(
            f"- **Storm.** {agent_storm.failed} of {agent_storm.agents} agents failed; the fleet took "
            f"{agent_storm.total_seconds:.1f} s against an ideal of {agent_storm.ideal_seconds:.0f} s. "
            f"From its first SSM call to its last the fleet kept the throttle {used * 100:.0f}% busy; "
            "the rest of the gap is the boot: "
            + (
                f"{agent_storm.agents} cold processes sharing {os.cpu_count()} CPUs need "
                f"{cpu_only.total_seconds:.1f} s with no throttle at all, and the first calls wait for it."
                if cpu_only
                else "cold processes sharing this machine's CPUs."
            )
            + " Without the agent's policy: "
            + "; ".join(f"{s.label}: {s.failed} of {s.agents} failed" for s in others)
            + "."
        )
    emit("")
