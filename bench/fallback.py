"""The GetParameter fallback's price: a role with ssm:GetParameter only (SSM denies ssm:GetParameters
in its own shape) against the batched path, in calls and cold render time, at N=10 and N=100."""

from __future__ import annotations

import math
import random
import sys
import threading
from dataclasses import dataclass, field
from typing import Optional

from bench.measure import Series, Spawner
from bench.stack import Emulator, named_template, parameter_names
from devtools.systemd_envfile import parse_env
from tests.integration.moto_server import CannedResponse, Responder, aws_json_error

SIZES = (10, 100)
MODES = ("batched (ssm:GetParameters)", "fallback (ssm:GetParameter only)")
ROLE_ARN = "arn:aws:sts::123456789012:assumed-role/bench-app-role/i-0fa4e1fa4e1fa4e10"
DENIED = aws_json_error(
    "AccessDeniedException",
    f"User: {ROLE_ARN} is not authorized to perform: ssm:GetParameters on resource: "
    "arn:aws:ssm:eu-west-1:123456789012:parameter/bench because no identity-based policy allows the "
    "ssm:GetParameters action",
)


class GetParametersDenial:
    """A RecordingProxy responder: while `enabled`, GetParameters is denied as SSM denies it.

    An `inner` responder (a throttle) answers first, so a denied call still takes its share of the
    account's rate, as every call that reaches SSM does.
    """

    def __init__(self, inner: Optional[Responder] = None) -> None:
        self.inner = inner
        self.enabled = False
        self._lock = threading.Lock()

    def __call__(self, index: int, action: str) -> Optional[CannedResponse]:
        canned = self.inner(index, action) if self.inner is not None else None
        if canned is not None:
            return canned
        with self._lock:
            return DENIED if self.enabled and action == "GetParameters" else None


def fallback_calls_per_agent(parameters: int) -> int:
    """Calls one agent makes with ssm:GetParameter only: one denied GetParameters, one call a name."""
    return 1 + parameters


@dataclass
class FallbackResults:
    """Cold render times and calls per render, by (mode, N); and what did not hold."""

    series: dict[tuple[str, int], Series] = field(default_factory=dict)
    calls: dict[tuple[str, int], dict[str, int]] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)


def _service(size: int) -> str:
    return f"fallback-n{size}"


def _expected_calls(mode: str, size: int) -> dict[str, int]:
    if mode == MODES[0]:
        return {"GetParameters": math.ceil(size / 10), "GetParameter": 0}
    return {"GetParameters": 1, "GetParameter": size}


def measure_fallback(rounds: int) -> FallbackResults:
    """`rounds` interleaved rounds of both modes at each N, each a cold `secrets-agent render`."""
    results = FallbackResults()
    denial = GetParametersDenial()
    shuffle = random.Random(2027)
    with Emulator(responder=denial) as emulator:
        values: dict[int, dict[str, str]] = {}
        for size in SIZES:
            names = parameter_names(f"/bench/fallback/n{size}/", size)
            values[size] = emulator.seed(names)
            emulator.write_template(_service(size), named_template(names))
        spawner = Spawner(emulator.runtime_dir)
        try:
            for _ in range(rounds):
                runs = [(mode, size) for mode in MODES for size in SIZES]
                shuffle.shuffle(runs)
                for mode, size in runs:
                    denial.enabled = mode == MODES[1]
                    before = emulator.ssm_calls()
                    argv = [sys.executable, "-m", "agent", "render", _service(size)]
                    measurement = spawner.run(argv, emulator.agent_env())
                    after = emulator.ssm_calls()
                    calls = {action: after[action] - before[action] for action in after}
                    if measurement.exit_code != 0:
                        raise SystemExit(f"{mode} N={size} failed:\n{measurement.stderr[-2000:]}")
                    for action, count in _expected_calls(mode, size).items():
                        if calls[action] != count:
                            results.violations.append(
                                f"{mode} N={size}: {calls[action]} {action}, not {count}"
                            )
                    warnings = measurement.stderr.count('"ssm_get_parameters_denied"')
                    if warnings != (1 if denial.enabled else 0):
                        results.violations.append(f"{mode} N={size}: {warnings} fallback warnings")
                    path = emulator.runtime_dir / _service(size) / "env"
                    got = dict(parse_env(path.read_text(encoding="utf-8")))
                    wanted = {name.rsplit("/", 1)[1].upper(): value for name, value in values[size].items()}
                    if got != wanted:
                        results.violations.append(f"{mode} N={size}: rendered file differs from SSM's values")
                    results.series.setdefault((mode, size), Series.empty()).add(measurement)
                    results.calls[(mode, size)] = calls
        finally:
            spawner.close()
    return results
