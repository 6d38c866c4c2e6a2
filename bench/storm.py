"""Fleet boot storm: many agents start at once against an SSM that throttles at a fixed rate.

The throttle is a token bucket in the recording proxy in front of moto: a call that finds a token is
forwarded, any other is answered with SSM's own `ThrottlingException`, as AWS does beyond an
account's Parameter Store throughput (40 transactions per second by default, shared by
GetParameter, GetParameters and GetParametersByPath).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from bench.stack import REGION, SSM_ACTIONS, Emulator, named_template, parameter_names
from tests.integration.moto_server import CannedResponse, aws_json_error

GET_PARAMETERS_MAX_NAMES = 10
# AWS's answer beyond the quota, word for word.
THROTTLED = aws_json_error("ThrottlingException", "Rate exceeded")
STORM_SERVICE = "storm"
STORM_PREFIX = "/storm/"
# Section 4's storm by this agent runs this many times and its target applies to the median: the
# same 40-agent storm by one tree spans 1.18x to 1.34x of the ideal within one run (its total is
# the slowest agent's, and the last agents' retries are random).
AGENT_STORM = "secrets-agent"
AGENT_STORM_ROUNDS = 3


class TokenBucket:
    """`rate_per_second` tokens a second, holding at most `burst`; starts full."""

    def __init__(
        self, rate_per_second: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate_per_second = rate_per_second
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._updated = clock()
        self._lock = threading.Lock()

    def take(self) -> bool:
        """Take one token if there is one; False means the caller is over the rate."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate_per_second)
            self._updated = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False


class ThrottlingResponder:
    """A RecordingProxy responder: SSM calls over the bucket's rate get ThrottlingException."""

    def __init__(self, bucket: Optional[TokenBucket]) -> None:
        self.bucket = bucket
        self.allowed = 0
        self.throttled = 0
        # monotonic times of the first SSM call and of the last one let through
        self.first_call_at: Optional[float] = None
        self.last_allowed_at: Optional[float] = None
        self._lock = threading.Lock()

    def __call__(self, index: int, action: str) -> Optional[CannedResponse]:
        if action not in SSM_ACTIONS:
            return None
        is_allowed = self.bucket is None or self.bucket.take()
        now = time.monotonic()
        with self._lock:
            if self.first_call_at is None:
                self.first_call_at = now
            if is_allowed:
                self.allowed += 1
                self.last_allowed_at = now
            else:
                self.throttled += 1
        return None if is_allowed else THROTTLED

    def reset(self, bucket: Optional[TokenBucket]) -> None:
        """Start a new storm: a fresh bucket (None for no throttle) and zero counts."""
        with self._lock:
            self.bucket = bucket
            self.allowed = 0
            self.throttled = 0
            self.first_call_at = None
            self.last_allowed_at = None

    @property
    def span_seconds(self) -> Optional[float]:
        """From the first SSM call to the last one let through: the fleet's time at the throttle."""
        if self.first_call_at is None or self.last_allowed_at is None:
            return None
        return self.last_allowed_at - self.first_call_at


@dataclass
class StormResult:
    """How one fleet fared."""

    label: str
    agents: int
    calls_needed: int
    rate_per_second: Optional[float]
    exit_codes: list[int]
    agent_seconds: list[float]
    total_seconds: float
    calls_allowed: int
    calls_throttled: int
    span_seconds: Optional[float]
    failure_samples: list[str] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(1 for code in self.exit_codes if code != 0)

    @property
    def ideal_seconds(self) -> Optional[float]:
        """calls / rate: the time the throttle alone imposes on the fleet."""
        if self.rate_per_second is None:
            return None
        return self.calls_needed / self.rate_per_second

    @property
    def ratio_to_ideal(self) -> Optional[float]:
        ideal = self.ideal_seconds
        return self.total_seconds / ideal if ideal else None

    @property
    def slowest_agent_seconds(self) -> float:
        return max(self.agent_seconds)

    @property
    def median_agent_seconds(self) -> float:
        ordered = sorted(self.agent_seconds)
        return ordered[len(ordered) // 2]


def calls_per_agent(parameters: int) -> int:
    """GetParameters calls one agent needs for `parameters` named parameters."""
    return math.ceil(parameters / GET_PARAMETERS_MAX_NAMES)


def storm_names(parameters: int) -> list[str]:
    """The parameters every agent of the storm asks for."""
    return parameter_names(STORM_PREFIX, parameters)


def prepare_storm(emulator: Emulator, parameters: int) -> None:
    """Seed the storm's parameters and write the template every agent renders."""
    names = storm_names(parameters)
    emulator.seed(names)
    emulator.write_template(STORM_SERVICE, named_template(names))


def storm_env_file(emulator: Emulator, index: int) -> Path:
    """Where storm agent `index` writes its EnvironmentFile (its own runtime folder)."""
    return emulator.runtime_dir / f"agent-{index:03d}" / STORM_SERVICE / "env"


def clear_agent_folders(runtime: Path) -> None:
    """Remove a storm agent's runtime folder and its records folder beside it (the render record
    and the set on_outage keeps), as a fresh instance has neither: an agent of a later storm that
    found an earlier one's kept set would serve it when throttled, and count as a success."""
    for folder in (runtime, runtime.with_name(runtime.name + "-state")):
        shutil.rmtree(folder, ignore_errors=True)


def clear_storm_files(emulator: Emulator, agents: int) -> None:
    """Remove what agents 0..agents-1 of an earlier storm wrote, so that each storm starts as a
    fleet of fresh instances and its check sees only its own files."""
    for index in range(agents):
        clear_agent_folders(storm_env_file(emulator, index).parents[1])


def agent_commands(
    emulator: Emulator, agents: int, *, entry: Sequence[str] = ("-m", "agent")
) -> list[tuple[list[str], dict[str, str]]]:
    """One `secrets-agent render` per agent, each with a runtime folder of its own (one per instance);
    `entry` picks what runs (another tree's agent, for a before/after)."""
    commands = []
    for index in range(agents):
        env = emulator.agent_env()
        env["SECRETS_AGENT_RUNTIME_DIR"] = str(storm_env_file(emulator, index).parents[1])
        commands.append(([sys.executable, *entry, "render", STORM_SERVICE], env))
    return commands


def plain_boto3_commands(
    emulator: Emulator, agents: int, parameters: int, retry_mode: str
) -> list[tuple[list[str], dict[str, str]]]:
    """One bench.plain_boto3 per agent: boto3's own retries in `retry_mode`, credentials from IMDS."""
    commands = []
    for index in range(agents):
        env = emulator.agent_env()
        env.update(AWS_REGION=REGION, AWS_DEFAULT_REGION=REGION, AWS_RETRY_MODE=retry_mode)
        out = emulator.runtime_dir / f"boto3-{retry_mode}-{index:03d}.env"
        commands.append(
            ([sys.executable, "-m", "bench.plain_boto3", str(out), *storm_names(parameters)], env)
        )
    return commands


def run_fleet(
    commands: Sequence[tuple[list[str], dict[str, str]]], log_dir: Path, timeout_seconds: float = 300.0
) -> tuple[list[int], list[float], float, list[str]]:
    """Start every command at once; returns exit codes, each one's seconds, the total and failure logs."""
    log_dir.mkdir(parents=True, exist_ok=True)
    exit_codes = [0] * len(commands)
    seconds = [0.0] * len(commands)
    waiters = []
    started = time.perf_counter()
    for index, (command, env) in enumerate(commands):
        log_path = log_dir / f"{index:03d}.log"
        # Logs go to files (on disk: they hold no value, by the agent's redaction and design).
        with open(log_path, "wb") as log:
            spawned = time.perf_counter()
            process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log)

        def wait(
            process: subprocess.Popen[bytes] = process, index: int = index, spawned: float = spawned
        ) -> None:
            exit_codes[index] = process.wait(timeout=timeout_seconds)
            seconds[index] = time.perf_counter() - spawned

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        waiters.append(waiter)
    for waiter in waiters:
        waiter.join()
    total = time.perf_counter() - started
    failures = [
        (log_dir / f"{index:03d}.log").read_text(encoding="utf-8", errors="replace")[-400:]
        for index, code in enumerate(exit_codes)
        if code != 0
    ][:3]
    return exit_codes, seconds, total, failures


def run_storm(
    emulator: Emulator,
    responder: ThrottlingResponder,
    *,
    label: str,
    commands: Sequence[tuple[list[str], dict[str, str]]],
    parameters: int,
    rate_per_second: Optional[float],
    burst: float,
    log_dir: Path,
    calls_needed: Optional[int] = None,
) -> StormResult:
    """Run one fleet against the throttled SSM (`rate_per_second` None: no throttle); `calls_needed`
    defaults to the batched path's ceil(parameters/10) an agent."""
    bucket = TokenBucket(rate_per_second, burst) if rate_per_second is not None else None
    responder.reset(bucket)
    exit_codes, seconds, total, failures = run_fleet(commands, log_dir)
    return StormResult(
        label=label,
        agents=len(commands),
        calls_needed=calls_needed
        if calls_needed is not None
        else len(commands) * calls_per_agent(parameters),
        rate_per_second=rate_per_second,
        exit_codes=exit_codes,
        agent_seconds=seconds,
        total_seconds=total,
        calls_allowed=responder.allowed,
        calls_throttled=responder.throttled,
        span_seconds=responder.span_seconds,
        failure_samples=failures,
    )


def default_log_dir(emulator: Emulator, label: str) -> Path:
    """Where one storm's per-agent logs go."""
    return emulator.workdir / "logs" / label.replace(" ", "-").replace("/", "-")


def storm_environment_note() -> str:
    """How the fleet runs, for the report."""
    return f"separate processes (python {sys.version.split()[0]}), {os.cpu_count()} CPUs"
