"""Rotation checks: what one cold `secrets-agent refresh` costs next to a full render (wall time,
CPU, calls), and a fleet of checks against a throttling SSM with and without a randomized delay."""

from __future__ import annotations

import json
import math
import random
import shutil
import statistics
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional

from bench.measure import Measurement, Spawner
from bench.stack import Emulator, named_template, parameter_names
from bench.storm import (
    STORM_SERVICE,
    StormResult,
    ThrottlingResponder,
    default_log_dir,
    prepare_storm,
    run_storm,
)

COST_SIZES = (10, 100)
COST_ROUNDS = 7
FLEET_CHECKS = 40
FLEET_PARAMETERS = 20
FLEET_RATE_PER_SECOND = 2.0
# The fleet's checks need FLEET_CHECKS * 2 calls: 40 s at 2 calls/s. A delay drawn from a window
# that long spreads them as the timer's RandomizedDelaySec= spreads a real fleet's.
FLEET_DELAY_WINDOW_SECONDS = 40.0
KINDS = ("render", "check")


@dataclass
class Cost:
    """Every cold run of one kind (render or check) at one N."""

    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)
    decrypting_calls: int = 0

    def add(self, measurement: Measurement, calls: dict[str, int], decrypting: int) -> None:
        self.seconds.append(measurement.seconds)
        self.cpu_seconds.append(measurement.cpu_seconds)
        self.calls = calls
        self.decrypting_calls = decrypting


@dataclass
class RotationResults:
    """What the rotation benchmark measured."""

    costs: dict[tuple[str, int], Cost] = field(default_factory=dict)
    fleets: list[StormResult] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)


def _service(size: int) -> str:
    return f"rotation-n{size}"


def _argv(kind: str, service: str) -> list[str]:
    if kind == "render":
        return [sys.executable, "-m", "agent", "render", service]
    return [sys.executable, "-m", "bench.refresh_entry", service]


def _decrypting(emulator: Emulator, since: int) -> int:
    pairs = list(zip(emulator.proxy.actions, emulator.proxy.bodies))[since:]
    return sum(1 for _, body in pairs if json.loads(body or b"{}").get("WithDecryption") is True)


def measure_costs(results: RotationResults, rounds: int = COST_ROUNDS) -> None:
    """Cold renders and cold checks (nothing changed) at each N, interleaved in a random order."""
    with Emulator() as emulator:
        spawner = Spawner(emulator.runtime_dir)
        try:
            for size in COST_SIZES:
                names = parameter_names(f"/rotation/n{size}/", size)
                emulator.seed(names)
                emulator.write_template(_service(size), named_template(names))
                first = spawner.run(_argv("render", _service(size)), emulator.agent_env())
                if first.exit_code != 0:
                    raise SystemExit(f"render at N={size} failed:\n{first.stderr[-2000:]}")
            shuffle = random.Random(11)
            for _ in range(rounds):
                for size in COST_SIZES:
                    kinds = list(KINDS)
                    shuffle.shuffle(kinds)
                    for kind in kinds:
                        _measure_one(emulator, spawner, results, kind, size)
        finally:
            spawner.close()


def _measure_one(
    emulator: Emulator, spawner: Spawner, results: RotationResults, kind: str, size: int
) -> None:
    before, since = emulator.ssm_calls(), len(emulator.proxy.actions)
    measurement = spawner.run(_argv(kind, _service(size)), emulator.agent_env())
    after = emulator.ssm_calls()
    calls = {action: after[action] - before[action] for action in after}
    decrypting = _decrypting(emulator, since)
    results.costs.setdefault((kind, size), Cost()).add(measurement, calls, decrypting)
    if measurement.exit_code != 0:
        results.violations.append(f"{kind} N={size} exited {measurement.exit_code}")
    if kind == "check":
        if '"refresh_unchanged"' not in measurement.stderr:
            results.violations.append(f"check N={size}: no refresh_unchanged line")
        if calls.get("GetParameters") != math.ceil(size / 10) or decrypting:
            results.violations.append(
                f"check N={size}: {calls} calls, {decrypting} decrypting; "
                f"expected {math.ceil(size / 10)} GetParameters, none decrypting"
            )


def measure_fleets(results: RotationResults) -> None:
    """FLEET_CHECKS checks at once, then the same spread over a random delay, against 2 calls/s."""
    responder = ThrottlingResponder(None)
    with Emulator(responder=responder) as emulator:
        prepare_storm(emulator, FLEET_PARAMETERS)
        # One render records what every instance's check compares with; each instance gets a copy.
        rendered = emulator.runtime_dir / "first"
        env = {**emulator.agent_env(), "SECRETS_AGENT_RUNTIME_DIR": str(rendered)}
        spawner = Spawner(emulator.runtime_dir)
        try:
            first = spawner.run([sys.executable, "-m", "agent", "render", STORM_SERVICE], env)
        finally:
            spawner.close()
        if first.exit_code != 0:
            raise SystemExit(f"the fleet's render failed:\n{first.stderr[-2000:]}")
        draw = random.Random(7)
        for label, window in (
            ("checks at once (no delay)", 0.0),
            (f"checks after a random delay (0-{FLEET_DELAY_WINDOW_SECONDS:g} s)", FLEET_DELAY_WINDOW_SECONDS),
        ):
            commands = []
            for index in range(FLEET_CHECKS):
                runtime = emulator.runtime_dir / f"check-{window:g}-{index:03d}"
                shutil.copytree(rendered, runtime)
                delay = ["--delay", f"{draw.uniform(0, window):.3f}"] if window else []
                env = {**emulator.agent_env(), "SECRETS_AGENT_RUNTIME_DIR": str(runtime)}
                commands.append(([sys.executable, "-m", "bench.refresh_entry", *delay, STORM_SERVICE], env))
            print(f"  rotation fleet: {label}", flush=True)
            fleet = run_storm(
                emulator,
                responder,
                label=label,
                commands=commands,
                parameters=FLEET_PARAMETERS,
                rate_per_second=FLEET_RATE_PER_SECOND,
                burst=FLEET_RATE_PER_SECOND,
                log_dir=default_log_dir(emulator, f"rotation {label}"),
            )
            results.fleets.append(fleet)
            if fleet.failed:
                results.violations.append(f"rotation fleet, {label}: {fleet.failed} checks failed")


def measure(skip_fleets: bool = False) -> RotationResults:
    """The whole rotation benchmark."""
    results = RotationResults()
    print("rotation: cold checks against cold renders", flush=True)
    measure_costs(results)
    if not skip_fleets:
        measure_fleets(results)
    return results


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(results: Optional[RotationResults], emit: Callable[[str], None]) -> None:
    """The report's rotation section."""
    emit("## 7. Rotation: one check against one render, and a fleet of checks")
    emit("")
    if results is None:
        emit("Not run (--skip-rotation).")
        emit("")
        return
    emit(
        "A check is a cold `secrets-agent refresh` (through `bench/refresh_entry.py`: the real "
        "entry point, with systemd answering that the app runs) with nothing changed in SSM; a render "
        "is a cold `secrets-agent render` of the same template. Medians of "
        f"{COST_ROUNDS} interleaved rounds; CPU is user + system time of the process (wait4)."
    )
    emit("")
    emit(
        "| N | render s | check s | check / render | render CPU s | check CPU s | render calls "
        "| check calls | decrypting calls in a check |"
    )
    emit("|---:|---:|---:|---:|---:|---:|---|---|---:|")
    for size in COST_SIZES:
        render, check = results.costs.get(("render", size)), results.costs.get(("check", size))
        if render is None or check is None:
            continue
        r, c = _median(render.seconds), _median(check.seconds)
        emit(
            f"| {size} | {r:.3f} | {c:.3f} | {c / r:.2f}x | {_median(render.cpu_seconds):.3f} "
            f"| {_median(check.cpu_seconds):.3f} | {_calls(render.calls)} | {_calls(check.calls)} "
            f"| {check.decrypting_calls} |"
        )
    emit("")
    if not results.fleets:
        emit("Fleet of checks: not run.")
        emit("")
        return
    emit(
        f"{FLEET_CHECKS} checks ({FLEET_PARAMETERS} parameters each: 2 GetParameters) against an SSM "
        f"that lets {FLEET_RATE_PER_SECOND:g} calls a second through (the storm's token bucket, "
        "`ThrottlingException` beyond it): all started at once, as instances whose timers fire "
        "together, then each after a random delay, as `RandomizedDelaySec=` does. Total includes the "
        "delays."
    )
    emit("")
    emit(
        "| fleet | checks | failed | total s | slowest s | median s | calls let through | throttled answers |"
    )
    emit("|---|---:|---:|---:|---:|---:|---:|---:|")
    for fleet in results.fleets:
        emit(
            f"| {fleet.label} | {fleet.agents} | {fleet.failed} | {fleet.total_seconds:.1f} "
            f"| {fleet.slowest_agent_seconds:.1f} | {fleet.median_agent_seconds:.1f} "
            f"| {fleet.calls_allowed} | {fleet.calls_throttled} |"
        )
    emit("")


def _calls(calls: dict[str, int]) -> str:
    return ", ".join(f"{count} {action}" for action, count in calls.items() if count) or "none"
