"""`python -m bench.refresh_entry [--delay SECONDS] SERVICE`: one cold `secrets-agent refresh SERVICE`.

The real entry point and `agent.cli.main`, with one stand-in: systemd, which the benchmark host does
not run the app under, is asked nothing and says the app runs (so the check goes on to SSM), and any
restart it is asked for is only counted on stderr. `--delay` sleeps first, as the timer's
RandomizedDelaySec= does.
"""

from __future__ import annotations

import sys
import time

from agent.__main__ import collector_off


class AppRunning:
    """systemd as the check sees it on an instance where the app runs."""

    def active_apps(self, name: str) -> list[str]:
        """The app runs."""
        return [f"{name}.service"]

    def try_restart(self, unit: str) -> None:
        """Counted, not done."""
        sys.stderr.write(f'{{"event": "bench_restart", "unit": "{unit}"}}\n')

    def try_reload_or_restart(self, unit: str) -> None:
        """Counted, not done."""
        sys.stderr.write(f'{{"event": "bench_reload", "unit": "{unit}"}}\n')


def run(argv: list[str]) -> int:
    """Sleep the delay, then run the check; returns its exit code."""
    if argv[:1] == ["--delay"]:
        time.sleep(float(argv[1]))
        argv = argv[2:]
    collector_off()
    from agent.cli import main

    return main(["--log-format", "json", "refresh", *argv], systemd=AppRunning())


if __name__ == "__main__":
    raise SystemExit(run(sys.argv[1:]))
