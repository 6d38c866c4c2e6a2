"""What checking every SSM answer costs: cold renders of the agent as it was just before the checks
(BEFORE_REVISION, taken from git) against the agent of this tree, interleaved in one run, on the
same emulator and templates.

`make bench` runs it on its emulator and puts the rows in bench/RESULTS.md.
"""

from __future__ import annotations

import random
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Optional

from bench.measure import Series, Spawner
from bench.stack import Emulator

# The last commit before agent.answers: every answer was believed as it came.
BEFORE_REVISION = "e4d5a9a"
REPO = Path(__file__).resolve().parents[1]
# argv[1] is the tree whose `agent` package runs; the rest is the agent's own command line.
_RUN_FROM_TREE = "import sys; sys.path.insert(0, sys.argv.pop(1)); from agent.__main__ import run; run()"


@dataclass
class BeforeAfter:
    """Cold render seconds of one service, before and after the checks."""

    service: str
    size: int
    before: Series = field(default_factory=Series.empty)
    after: Series = field(default_factory=Series.empty)

    @property
    def ratio(self) -> float:
        """after / before, medians."""
        return self.after.median_seconds / self.before.median_seconds


def extract_before(into: Path) -> Optional[Path]:
    """BEFORE_REVISION's agent/ under `into`, or None when git or the revision is not there."""
    try:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", BEFORE_REVISION, "agent"],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into)  # noqa: S202  (this repository's own archive)
    return into


def measure(
    emulator: Emulator, spawner: Spawner, services: dict[str, int], rounds: int
) -> tuple[list[BeforeAfter], str]:
    """Interleaved cold renders of each service by both trees; (rows, a note on what ran)."""
    with tempfile.TemporaryDirectory(prefix="secrets-agent-before-") as scratch:
        before_tree = extract_before(Path(scratch))
        if before_tree is None:
            return [], f"not run: git revision {BEFORE_REVISION} is not available in this checkout"
        trees = {"before": str(before_tree), "after": str(REPO)}
        rows = {service: BeforeAfter(service, size) for service, size in services.items()}
        rng = random.Random(8)
        for _ in range(rounds):
            order = [(service, which) for service in services for which in trees]
            rng.shuffle(order)
            for service, which in order:
                argv = [sys.executable, "-c", _RUN_FROM_TREE, trees[which], "render", service]
                measurement = spawner.run(argv, emulator.agent_env())
                if measurement.exit_code != 0:
                    raise SystemExit(f"{which} render of {service} failed:\n{measurement.stderr[-2000:]}")
                getattr(rows[service], which).add(measurement)
    return list(rows.values()), f"before = git revision {BEFORE_REVISION}, {rounds} interleaved rounds"


def render_section(rows: list[BeforeAfter], note: str) -> str:
    """The report's section."""
    lines = [
        "## Cost of checking every SSM answer",
        "",
        "Cold named renders (a fresh process each, as at boot) by the agent as it was before every "
        f"answer was checked and by this tree, on the same emulator; {note}; medians.",
        "",
    ]
    if not rows:
        return "\n".join(lines) + "\n"
    lines += ["| N | before s | after s | after / before |", "|---:|---:|---:|---:|"]
    lines += [
        f"| {row.size} | {row.before.median_seconds:.3f} | {row.after.median_seconds:.3f} | {row.ratio:.3f} |"
        for row in rows
    ]
    return "\n".join(lines) + "\n"
