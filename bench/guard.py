"""The refresh guard's cost: on a change, a check renders the new set in full (fetch with
decryption, template, encoding, limits) before it acts. That extra fetch, against one cold render
of the same template; `python -m bench.guard` runs this section alone and prints it.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from bench.measure import Spawner
from bench.report import finish_section
from bench.rotation import Cost as Runs
from bench.stack import Emulator, named_template, parameter_names

SIZES = (10, 100)
ROUNDS = 7
# The extra fetch may cost at most this many renders of the same template.
TARGET_RATIO = 1.0
RENDER, UNCHANGED, CHANGED = "render", "check, nothing changed", "check, a change that renders"
KINDS = (RENDER, UNCHANGED, CHANGED)


@dataclass
class GuardResults:
    """What the guard's benchmark measured."""

    rounds: int = ROUNDS
    runs: dict[tuple[str, int], Runs] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    def extra_seconds(self, size: int) -> float:
        """Median changed check minus median unchanged check: what the guard's render adds."""
        return _median(self.runs[(CHANGED, size)].seconds) - _median(self.runs[(UNCHANGED, size)].seconds)

    def ratio(self, size: int) -> float:
        """The extra fetch over one cold render of the same template."""
        return self.extra_seconds(size) / _median(self.runs[(RENDER, size)].seconds)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _argv(kind: str, size: int) -> list[str]:
    # The changed service's record predates the change and on_change = "none" never rewrites it,
    # so each of its checks sees the change, renders the new set, and stops there.
    if kind == RENDER:
        return [sys.executable, "-m", "agent", "render", f"guard-same-n{size}"]
    service = f"guard-n{size}" if kind == CHANGED else f"guard-same-n{size}"
    return [sys.executable, "-m", "bench.refresh_entry", service]


def measure(rounds: int = ROUNDS) -> GuardResults:
    """Cold renders, unchanged checks and changed checks at each N, interleaved in random order."""
    results = GuardResults(rounds=rounds)
    with Emulator() as emulator:
        spawner = Spawner(emulator.runtime_dir)
        try:
            for size in SIZES:
                names = parameter_names(f"/guard/n{size}/", size)
                emulator.seed(names)
                for service in (f"guard-n{size}", f"guard-same-n{size}"):
                    emulator.write_template(service, named_template(names))
                    emulator.write_service_settings(service, 'on_change = "none"\n')
                _render_once(emulator, spawner, f"guard-n{size}")
                emulator.seed(names[:1])  # the change: a new version of one parameter
                _render_once(emulator, spawner, f"guard-same-n{size}")
            shuffle = random.Random(23)
            for _ in range(rounds):
                for size in SIZES:
                    kinds = list(KINDS)
                    shuffle.shuffle(kinds)
                    for kind in kinds:
                        _measure_one(emulator, spawner, results, kind, size)
        finally:
            spawner.close()
    for size in SIZES:
        if results.ratio(size) > TARGET_RATIO:
            results.violations.append(
                f"guard N={size}: the extra fetch costs {results.ratio(size):.2f} renders "
                f"(target at most {TARGET_RATIO:g})"
            )
    return results


def _render_once(emulator: Emulator, spawner: Spawner, service: str) -> None:
    first = spawner.run([sys.executable, "-m", "agent", "render", service], emulator.agent_env())
    if first.exit_code != 0:
        raise SystemExit(f"render of {service} failed:\n{first.stderr[-2000:]}")


def _measure_one(emulator: Emulator, spawner: Spawner, results: GuardResults, kind: str, size: int) -> None:
    before, since = emulator.ssm_calls(), len(emulator.proxy.actions)
    measurement = spawner.run(_argv(kind, size), emulator.agent_env())
    after = emulator.ssm_calls()
    calls = {action: after[action] - before[action] for action in after}
    bodies = list(emulator.proxy.bodies)[since:]
    decrypting = sum(1 for body in bodies if json.loads(body or b"{}").get("WithDecryption") is True)
    results.runs.setdefault((kind, size), Runs()).add(measurement, calls, decrypting)
    batches = math.ceil(size / 10)
    expected = {
        RENDER: (batches, batches, None),
        UNCHANGED: (batches, 0, '"refresh_unchanged"'),
        CHANGED: (2 * batches, batches, '"refresh_ready"'),
    }[kind]
    if measurement.exit_code != 0:
        results.violations.append(f"guard {kind} N={size} exited {measurement.exit_code}")
    if (calls.get("GetParameters"), decrypting) != expected[:2]:
        results.violations.append(
            f"guard {kind} N={size}: {calls} calls, {decrypting} decrypting; expected "
            f"{expected[0]} GetParameters, {expected[1]} decrypting"
        )
    if expected[2] is not None and expected[2] not in measurement.stderr:
        results.violations.append(f"guard {kind} N={size}: no {expected[2]} line")


def report(results: Optional[GuardResults], emit: Callable[[str], None]) -> None:
    """The report's section on the refresh guard."""
    emit("## 9. The refresh guard: the extra fetch on a change, against one render")
    emit("")
    if results is None:
        emit("Not run (--skip-guard).")
        emit("")
        return
    emit(
        "On a change, a check renders the new set in full without writing it before it acts; this "
        "is what that costs. Cold processes, medians of "
        f"{results.rounds} interleaved rounds: a render, a check with nothing changed, and a check that sees "
        'a new version of one parameter and renders the set (`on_change = "none"`, so it acts on '
        "nothing and sees the change every time). Extra = changed check - unchanged check. With "
        "`restart`, the agent's start then renders once more: that second fetch is one render by "
        "definition."
    )
    emit("")
    emit(
        "| N | render s | check s | changed check s | extra s | extra / render (target <= "
        f"{TARGET_RATIO:g}) | render CPU s | changed check CPU s | calls of a changed check |"
    )
    emit("|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for size in SIZES:
        render, changed = results.runs[(RENDER, size)], results.runs[(CHANGED, size)]
        emit(
            f"| {size} | {_median(render.seconds):.3f} | "
            f"{_median(results.runs[(UNCHANGED, size)].seconds):.3f} | {_median(changed.seconds):.3f} "
            f"| {results.extra_seconds(size):.3f} | {results.ratio(size):.2f}x "
            f"| {_median(render.cpu_seconds):.3f} | {_median(changed.cpu_seconds):.3f} "
            f"| {changed.calls.get('GetParameters', 0)} GetParameters "
            f"({changed.decrypting_calls} decrypting) |"
        )
    emit("")


def main(argv: Optional[list[str]] = None) -> int:
    """Run this section alone; print it (and write it with --output); exit 1 on a missed target."""
    parser = argparse.ArgumentParser(prog="python -m bench.guard", description=__doc__)
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="interleaved rounds per kind and N")
    parser.add_argument("--output", type=Path, help="also write the section to this file")
    args = parser.parse_args(argv)
    results = measure(args.rounds)
    lines: list[str] = []
    report(results, lines.append)
    return finish_section(lines, results.violations, args.output)


if __name__ == "__main__":
    raise SystemExit(main())
