"""Cold renders of the agent at an earlier git revision against the agent of this tree, interleaved in
one run, on the same emulator and templates: what checking every SSM answer cost (BEFORE_REVISION),
and what the consolidation into one render pipeline cost (CONSOLIDATION_REVISION).

`make bench` runs both on its emulator and puts the rows in bench/RESULTS.md;
`python -m bench.checks` runs the consolidation's comparison alone and prints its section.
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

# The last commit before agent.aws.answers: every answer was believed as it came.
BEFORE_REVISION = "e4d5a9a"
# The last commit before agent/render.py and agent/template/formats.py: the pipeline lived in agent/cli.py.
CONSOLIDATION_REVISION = "5b9aeae"
REPO = Path(__file__).resolve().parents[1]
# argv[1] is the tree whose `agent` package runs; the rest is the agent's own command line.
RUN_FROM_TREE = "import sys; sys.path.insert(0, sys.argv.pop(1)); from agent.__main__ import run; run()"


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


def extract_before(into: Path, revision: str = BEFORE_REVISION) -> Optional[Path]:
    """`revision`'s agent/ under `into`, or None when git or the revision is not there."""
    try:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", revision, "agent"],
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
    emulator: Emulator,
    spawner: Spawner,
    services: dict[str, int],
    rounds: int,
    revision: str = BEFORE_REVISION,
) -> tuple[list[BeforeAfter], str]:
    """Interleaved cold renders of each service by both trees; (rows, a note on what ran)."""
    with tempfile.TemporaryDirectory(prefix="secrets-agent-before-") as scratch:
        before_tree = extract_before(Path(scratch), revision)
        if before_tree is None:
            return [], f"not run: git revision {revision} is not available in this checkout"
        trees = {"before": str(before_tree), "after": str(REPO)}
        rows = {service: BeforeAfter(service, size) for service, size in services.items()}
        rng = random.Random(8)
        for _ in range(rounds):
            order = [(service, which) for service in services for which in trees]
            rng.shuffle(order)
            for service, which in order:
                argv = [sys.executable, "-c", RUN_FROM_TREE, trees[which], "render", service]
                measurement = spawner.run(argv, emulator.agent_env())
                if measurement.exit_code != 0:
                    raise SystemExit(f"{which} render of {service} failed:\n{measurement.stderr[-2000:]}")
                getattr(rows[service], which).add(measurement)
    return list(rows.values()), f"before = git revision {revision}, {rounds} interleaved rounds"


def render_section(
    rows: list[BeforeAfter],
    note: str,
    *,
    title: str = "Cost of checking every SSM answer",
    before: str = "as it was before every answer was checked",
) -> str:
    """The report's section."""
    lines = [
        f"## {title}",
        "",
        f"Cold named renders (a fresh process each, as at boot) by the agent {before} and by this tree, "
        f"on the same emulator; {note}; medians.",
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


CONSOLIDATION_TITLE = "Cost of the consolidation (one render pipeline, one formats table)"
CONSOLIDATION_BEFORE = "with its pipeline in agent/cli.py"


def main(argv: Optional[list[str]] = None) -> int:
    """Run the consolidation's before/after alone (N=10 and N=1000) and print its section."""
    import argparse

    from bench.run import prepare_named

    parser = argparse.ArgumentParser(prog="python -m bench.checks", description=main.__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--revision", default=CONSOLIDATION_REVISION)
    options = parser.parse_args(argv)
    with Emulator() as emulator:
        services = prepare_named(emulator, (10, 1000))
        spawner = Spawner(emulator.runtime_dir)
        try:
            rows, note = measure(emulator, spawner, services, options.rounds, options.revision)
        finally:
            spawner.close()
    print(render_section(rows, note, title=CONSOLIDATION_TITLE, before=CONSOLIDATION_BEFORE))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
