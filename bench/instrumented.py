"""One render with timestamps at each stage, run as `python -m bench.instrumented SERVICE` in a fresh process.

It runs the real `agent.cli.main`; only the names agent.cli looks up (its IMDS and SSM clients, the
template compiler, the encoder and the writer) are wrapped to note the time as each stage starts and
ends. The parent passes its spawn time in BENCH_SPAWNED_AT; the events go to stdout as JSON.
"""

from __future__ import annotations

import time

FIRST_LINE_AT = time.time()

import json  # noqa: E402 - the first timestamp must come before any import
import os  # noqa: E402
import sys  # noqa: E402
from typing import Any, Callable  # noqa: E402

EVENTS: list[tuple[str, float]] = [("started", FIRST_LINE_AT)]


def note(event: str) -> None:
    """Record that `event` happened now."""
    EVENTS.append((event, time.time()))


def _timed(function: Callable[..., Any], start: str, end: str) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        note(start)
        try:
            return function(*args, **kwargs)
        finally:
            note(end)

    return wrapper


def _instrument() -> Any:
    import importlib

    cli: Any = importlib.import_module("agent.cli")

    note("imported")

    class TimedImdsClient(cli.ImdsClient):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            note("imds_start")
            super().__init__(*args, **kwargs)

        def close(self) -> None:
            super().close()
            note("imds_end")

    class TimedSsmClient(cli.SsmClient):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            note("ssm_client_start")
            # The same imports SsmClient makes lazily; timed apart from building the client.
            import botocore.config
            import botocore.session  # noqa: F401

            note("botocore_imported")
            super().__init__(*args, **kwargs)
            note("ssm_client_end")

        def fetch(self, *args: Any, **kwargs: Any) -> Any:
            note("ssm_fetch_start")
            try:
                return super().fetch(*args, **kwargs)
            finally:
                note("ssm_fetch_end")

        def fetch_path(self, *args: Any, **kwargs: Any) -> Any:
            note("ssm_fetch_start")
            try:
                return super().fetch_path(*args, **kwargs)
            finally:
                note("ssm_fetch_end")

    compile_template = cli.compile_template

    def timed_compile(*args: Any, **kwargs: Any) -> Any:
        note("compile_start")
        template = compile_template(*args, **kwargs)
        note("compile_end")
        template.render = _timed(template.render, "render_start", "render_end")
        return template

    cli.ImdsClient = TimedImdsClient
    cli.SsmClient = TimedSsmClient
    cli.compile_template = timed_compile
    cli._encode = _timed(cli._encode, "encode_start", "encode_end")
    cli.write_secret_file = _timed(cli.write_secret_file, "write_start", "write_end")
    return cli


def main() -> int:
    """Render the service named in argv[1] and print the events as JSON."""
    # The entry point turns the collector off before importing agent.cli; calling agent.cli.main
    # directly would skip that, so the same step runs here (agent.__main__ imports nothing else).
    from agent.__main__ import collector_off

    collector_off()
    cli = _instrument()
    note("main_start")
    code: int = cli.main(["render", sys.argv[1]])
    note("main_end")
    spawned = float(os.environ.get("BENCH_SPAWNED_AT", FIRST_LINE_AT))
    print(json.dumps({"exit_code": code, "spawned": spawned, "events": EVENTS}))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
