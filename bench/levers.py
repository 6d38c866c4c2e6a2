"""Where the agent's time goes, and the levers that would take some of it back, each measured.

Each lever is timed both ways in fresh processes (or in one process for pure code), interleaved,
so that RESULTS.md can say what a proposed change would gain rather than guess.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench.checks import REPO

# Python's own start-up and exit plus these imports, in a fresh interpreter each time.
IMPORT_PROBES = {
    "python -c pass": "pass",
    'python -c "import boto3"': "import boto3",
    'python -c "import boto3, requests, jinja2"': "import boto3, requests, jinja2",
}

_CLIENT_CREATION_SCRIPT = """
import json, sys, time
import botocore.session
from botocore.config import Config
from agent.aws.clients import create_client
config = Config(retries={"total_max_attempts": 1, "mode": "standard"})
started = time.perf_counter()
if sys.argv[1] == "stock":
    botocore.session.Session().create_client(
        "ssm", region_name="eu-west-1", endpoint_url="http://127.0.0.1:9",
        aws_access_key_id="a", aws_secret_access_key="b", aws_session_token="c", config=config,
    )
else:
    create_client(
        "ssm", region="eu-west-1", endpoint_url="http://127.0.0.1:9", credentials=("a", "b", "c"),
        config=config,
    )
print(json.dumps(time.perf_counter() - started))
"""


@dataclass(frozen=True)
class Lever:
    """One measured change: the cost now, the cost with the change, and where it would go."""

    name: str
    where: str
    now_ms: float
    with_change_ms: float
    how: str

    @property
    def gain_ms(self) -> float:
        return self.now_ms - self.with_change_ms


def _fresh_seconds(args: Sequence[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def import_cost_ms(statements: dict[str, str], rounds: int) -> dict[str, float]:
    """Median wall ms of `python -c STATEMENT` for each entry, interleaved over `rounds`."""
    samples: dict[str, list[float]] = {label: [] for label in statements}
    for _ in range(rounds):
        for label, statement in statements.items():
            samples[label].append(_fresh_seconds(["-c", statement]))
    return {label: statistics.median(values) * 1000 for label, values in samples.items()}


def client_creation_lever(rounds: int) -> Lever:
    """SSM client creation by stock botocore and by the agent's create_client (a Loader that lists
    only the one service): a lever already taken, measured so that its gain stays on record."""
    samples: dict[str, list[float]] = {"stock": [], "agent": []}
    for _ in range(rounds):
        for mode, values in samples.items():
            out = subprocess.run(
                [sys.executable, "-c", _CLIENT_CREATION_SCRIPT, mode],
                check=True,
                capture_output=True,
                text=True,
                cwd=REPO,
            )
            values.append(float(json.loads(out.stdout)))
    return Lever(
        name="SSM client: a Loader that lists only `ssm` (taken)",
        where="agent/aws/clients.py create_client",
        now_ms=statistics.median(samples["stock"]) * 1000,
        with_change_ms=statistics.median(samples["agent"]) * 1000,
        how="stock botocore create_client against the agent's, fresh process each, median of each",
    )


def import_levers(rounds: int) -> list[Lever]:
    """What requests and structlog add to a process that imports botocore anyway."""
    costs = import_cost_ms(
        {
            "botocore": "import botocore.session",
            "botocore+requests": "import botocore.session, requests",
            "botocore+structlog": "import botocore.session, structlog",
            "botocore+logging+json": "import botocore.session, logging, json",
        },
        rounds,
    )
    return [
        Lever(
            name="IMDS over urllib3 (already loaded by botocore) instead of requests",
            where="agent/aws/imds.py",
            now_ms=costs["botocore+requests"],
            with_change_ms=costs["botocore"],
            how="fresh `python -c 'import botocore.session[, requests]'`, median",
        ),
        Lever(
            name="logging without structlog (it imports asyncio, colorama, rich if present)",
            where="agent/log.py (a dependency change)",
            now_ms=costs["botocore+structlog"],
            with_change_ms=costs["botocore+logging+json"],
            how="fresh `python -c 'import botocore.session, structlog'` vs `..., logging, json`, median",
        ),
    ]


@dataclass(frozen=True)
class ImportShare:
    """Import time (-X importtime, exclusive) attributed to the package that pulled the module in."""

    group: str
    milliseconds: float


_GROUPS = {
    "botocore": "botocore (+ jmespath, dateutil)",
    "jmespath": "botocore (+ jmespath, dateutil)",
    "dateutil": "botocore (+ jmespath, dateutil)",
    "urllib3": "urllib3 (shared by botocore and requests)",
    "requests": "requests (+ charset_normalizer, idna, certifi)",
    "charset_normalizer": "requests (+ charset_normalizer, idna, certifi)",
    "idna": "requests (+ charset_normalizer, idna, certifi)",
    "certifi": "requests (+ charset_normalizer, idna, certifi)",
    "structlog": "structlog (+ asyncio, colorama)",
    "jinja2": "jinja2 (+ markupsafe)",
    "markupsafe": "jinja2 (+ markupsafe)",
    "agent": "agent's own modules (+ stdlib they use)",
}
_OTHER = "interpreter start-up, site, stdlib"


def import_shares(importtime_stderr: str) -> list[ImportShare]:
    """Sum each module's own import time under the nearest package of interest that imported it."""
    totals: dict[str, float] = {}
    stack: list[tuple[int, str]] = []  # (depth, group) of the open ancestors
    lines = [line for line in importtime_stderr.splitlines() if line.startswith("import time:")]
    # -X importtime prints a child before its parent; read bottom-up to see parents first.
    for line in reversed(lines[1:]):
        self_column, _, name_column = line.split("|", 2)
        self_us = int(self_column.rsplit(":", 1)[1])
        depth = len(name_column) - len(name_column.lstrip(" "))
        module = name_column.strip()
        while stack and stack[-1][0] >= depth:
            stack.pop()
        group = _GROUPS.get(module.split(".")[0]) or (stack[-1][1] if stack else _OTHER)
        stack.append((depth, group))
        totals[group] = totals.get(group, 0.0) + self_us / 1000
    return sorted((ImportShare(g, ms) for g, ms in totals.items()), key=lambda s: -s.milliseconds)
