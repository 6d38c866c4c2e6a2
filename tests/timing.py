"""Time in tests: the one hand-moved clock, and the one slack policy for the few wall-clock bounds
that must stay.

A test that can inject a clock does (ManualClock, or the `clock` fixture), and then asserts times
exactly. A test that must run against real time (a deadline a real server makes the code wait out)
asserts only that the code did not end early (a lower bound, which load cannot break) and that it
ended by the moment it promises plus SLACK_SECONDS. Nothing asserts a pace or a speed: those are
measured by `make bench` as ratios in one run (bench/pace.py says what moved there).
"""

from __future__ import annotations

import os
import queue
import select
import threading
import time
from typing import IO, Any, Callable

# How late after the moment it promises a run may end on a loaded 2-core machine (thread and process
# scheduling, a garbage collection): the suite's one slack.
SLACK_SECONDS = 2.5
# pytest-timeout's limit (pyproject's `timeout`, set-up included) for the tests that build or boot
# Debian roots, containers or the dist: the first one's set-up may debootstrap a root (up to 15 min).
MACHINE_TIMEOUT_SECONDS = 1800


class ManualClock:
    """A monotonic clock the test moves by hand (`clock.now += s` or `clock.advance(s)`), so expiry
    and backoff need no sleeping."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by `seconds`."""
        self.now += seconds


def assert_ended_by(elapsed: float, promised_seconds: float, context: str = "") -> None:
    """`elapsed` (measured from the start of the call) is within `promised_seconds` plus the one slack."""
    limit = promised_seconds + SLACK_SECONDS
    assert elapsed <= limit, (
        f"ended {elapsed:.2f} s after the start: past the promised {promised_seconds:g} s "
        f"plus the {SLACK_SECONDS:g} s slack. {context}".rstrip()
    )


# How often wait_until looks again: short against what it waits for, long enough not to load the machine.
POLL_SECONDS = 0.05


def wait_until(condition: Callable[[], bool], timeout_seconds: float, what: str) -> None:
    """Wait for an event (a unit's state, a file's appearance, a reader's first pass) by looking at it
    every POLL_SECONDS; AssertionError naming `what` when it has not happened within `timeout_seconds`
    (a limit against hanging, not a speed target: make it generous)."""
    limit = time.monotonic() + timeout_seconds
    while not condition():
        if time.monotonic() > limit:
            raise AssertionError(f"{what}: did not happen within {timeout_seconds:g} s")
        time.sleep(POLL_SECONDS)


class HeldClock:
    """time.monotonic, held still until release(): a deadline built before slow set-up (botocore's
    client and its models, seconds on a loaded machine) then counts from the release, so a test's
    deadline measures the calls it is about, not the set-up."""

    def __init__(self) -> None:
        self._held_at = time.monotonic()
        self._offset: float | None = None

    def __call__(self) -> float:
        if self._offset is None:
            return self._held_at
        return time.monotonic() - self._offset

    def release(self) -> None:
        """Let the clock run from here on, from the moment it was held at."""
        if self._offset is None:
            self._offset = time.monotonic() - self._held_at


class Lines:
    """A child process's output, line by line, read by a thread: a test waits for the next line (a
    reader's pass, a server's "listening" line) with a timeout, which a blocking readline() lacks."""

    def __init__(self, stream: IO[str]) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                self._queue.put(line.rstrip("\n"))
        except ValueError:  # the stream was closed under the thread
            pass
        finally:
            self._queue.put(None)

    def next(self, timeout_seconds: float, what: str) -> str | None:
        """The next line (None once the stream has ended); AssertionError naming `what` when none
        came within `timeout_seconds` (a limit against hanging, not a speed target)."""
        try:
            return self._queue.get(timeout=timeout_seconds)
        except queue.Empty:
            raise AssertionError(f"{what}: no line within {timeout_seconds:g} s") from None


def read_line(stream: IO[Any], timeout_seconds: float, what: str) -> str:
    """One line from a child process's pipe (a server printing its URL), read byte by byte from its
    file descriptor so that nothing past the line is taken; "" at end of file. AssertionError naming
    `what` when no whole line came within `timeout_seconds` (a limit against hanging)."""
    descriptor = stream.fileno()
    limit = time.monotonic() + timeout_seconds
    data = b""
    while not data.endswith(b"\n"):
        left = limit - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{what}: no whole line within {timeout_seconds:g} s (got {data!r})")
        ready, _, _ = select.select([descriptor], [], [], left)
        if not ready:
            continue
        byte = os.read(descriptor, 1)
        if not byte:
            break
        data += byte
    return data.decode("utf-8", errors="replace")
