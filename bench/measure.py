"""Run one command in a fresh process and measure it: wall time, and the peak RSS of its largest process."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

SPAWNER_SCRIPT = Path(__file__).resolve().parent / "spawner.py"


@dataclass(frozen=True)
class Measurement:
    """One run: wall seconds from spawn to exit, and the peak RSS (KiB) of the largest process in its tree."""

    seconds: float
    max_rss_kib: int
    exit_code: int
    stderr: str
    # user + system CPU time of the process and the children it waited for
    cpu_seconds: float = 0.0


class Spawner:
    """Runs commands through bench/spawner.py, so each one's peak RSS is its own (see there why)."""

    def __init__(self, scratch_dir: Path) -> None:
        self._scratch = scratch_dir
        self._process = subprocess.Popen(
            [sys.executable, "-S", str(SPAWNER_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(
        self, command: Sequence[str], env: dict[str, str], *, stdout: Optional[Path] = None
    ) -> Measurement:
        """Run `command` to completion; its stdout goes to `stdout` (or nowhere), its stderr is returned."""
        executable = shutil.which(command[0], path=env.get("PATH")) or command[0]
        stderr_path = self._scratch / "spawned.stderr"
        request = {
            "argv": [executable, *command[1:]],
            "env": env,
            "stdout": str(stdout) if stdout is not None else os.devnull,
            "stderr": str(stderr_path),
        }
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()
        answer = json.loads(self._process.stdout.readline())
        stderr = stderr_path.read_text(encoding="utf-8", errors="replace")
        stderr_path.unlink()
        return Measurement(
            seconds=float(answer["seconds"]),
            max_rss_kib=int(answer["max_rss_kib"]),
            exit_code=int(answer["exit_code"]),
            stderr=stderr,
            cpu_seconds=float(answer.get("cpu_seconds", 0.0)),
        )

    def close(self) -> None:
        """Let the helper exit."""
        assert self._process.stdin is not None
        self._process.stdin.close()
        self._process.wait(timeout=10)


def median(values: Sequence[float]) -> float:
    """The median; NaN for no values."""
    return statistics.median(values) if values else float("nan")


@dataclass
class Series:
    """Every run of one tool at one size."""

    seconds: list[float]
    max_rss_kib: list[int]

    @classmethod
    def empty(cls) -> Series:
        return cls(seconds=[], max_rss_kib=[])

    def add(self, measurement: Measurement) -> None:
        self.seconds.append(measurement.seconds)
        self.max_rss_kib.append(measurement.max_rss_kib)

    @property
    def median_seconds(self) -> float:
        return median(self.seconds)

    @property
    def median_rss_mib(self) -> float:
        return median([kib / 1024 for kib in self.max_rss_kib])

    @property
    def runs(self) -> int:
        return len(self.seconds)

    def spread(self) -> Optional[tuple[float, float]]:
        """(min, max) seconds, or None before any run."""
        return (min(self.seconds), max(self.seconds)) if self.seconds else None
