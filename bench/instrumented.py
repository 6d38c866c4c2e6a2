"""One render with timestamps at each stage, run as `python -m bench.instrumented SERVICE` in a fresh process.

It runs the agent's own pipeline (`agent.render.render`) with a `stages` callback that notes the time
as each stage starts and ends: nothing of the agent is replaced or wrapped. The parent passes its spawn
time in BENCH_SPAWNED_AT; the events go to stdout as JSON.
"""

from __future__ import annotations

import time

FIRST_LINE_AT = time.time()

import contextlib  # noqa: E402 - the first timestamp must come before any import
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from collections.abc import Iterator  # noqa: E402

EVENTS: list[tuple[str, float]] = [("started", FIRST_LINE_AT)]


def note(event: str) -> None:
    """Record that `event` happened now."""
    EVENTS.append((event, time.time()))


@contextlib.contextmanager
def timed_stage(stage: str) -> Iterator[None]:
    """The `stages` callback render.py calls around each stage: `<stage>_start` and `<stage>_end`."""
    note(f"{stage}_start")
    if stage == "ssm_client":
        # The imports botocore costs, timed apart from building the client.
        import botocore.config
        import botocore.session  # noqa: F401

        note("botocore_imported")
    try:
        yield
    finally:
        note(f"{stage}_end")


def main() -> int:
    """Render the service named in argv[1] as `secrets-agent render` does, and print the events as JSON."""
    # The entry point turns the collector off before importing the agent; the same step runs here.
    from agent.__main__ import collector_off

    collector_off()
    from agent import render
    from agent.config import load_agent_settings, load_service_settings
    from agent.log import configure_logging

    note("imported")
    os.umask(0o077)
    configure_logging(stream=sys.stderr, fmt="json")
    note("main_start")
    settings = load_agent_settings(os.environ)
    render.render(settings, load_service_settings(settings, sys.argv[1]), stages=timed_stage)
    note("main_end")
    spawned = float(os.environ.get("BENCH_SPAWNED_AT", FIRST_LINE_AT))
    print(json.dumps({"exit_code": 0, "spawned": spawned, "events": EVENTS}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
