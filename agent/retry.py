"""One retry policy for IMDS and SSM: backoff with full jitter until a deadline, and a throttled
fleet's pace.

A fleet that boots at once must get through SSM's throttle rather than fail after a fixed number of
tries, so retries are bounded by time, not by count. Two budgets: an outage (no answer, 5xx, answers
that are not SSM's) ends at the short deadline, counted from the last time the service answered;
throttling, which means the service is up and busy, may go on for the longer throttled budget.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

BASE_DELAY_SECONDS = 0.05
MAX_DELAY_SECONDS = 2.0
# Under throttling the ceiling of the next delay grows by this much with every throttled answer the
# process has seen, up to the cap. A fleet of K agents against R calls/s then settles near a
# retry rate of K / (mean delay), falling as throttling persists; linear growth (not doubling)
# keeps the last few agents of a storm from sleeping while the quota goes unused. A throttled
# delay is drawn from the top of its range, [floor x ceiling, ceiling] (between full and "equal"
# jitter): the same longest sleep with a longer mean, so fewer retries, while still spread out.
# Chosen with `python -m bench.fleet_model` (this Backoff in a model of 10 to 150 agents booting at
# once against 2 calls/s: fewer throttled answers per call against time lost at the end of a storm),
# then measured with real processes by `make bench` (bench/RESULTS.md). A process sees only its own
# answers, so the last agents of a storm wait longer than the quota needs: the price of wasting a
# third of the calls that retrying every second wastes.
THROTTLED_STEP_SECONDS = 0.5
THROTTLED_MAX_DELAY_SECONDS = 10.0
THROTTLED_JITTER_FLOOR = 0.4


@dataclass
class Deadline:
    """When no new attempt may start: `seconds` after the service last answered, and never later
    than `throttled_seconds` after the start while it answers only "slow down"."""

    seconds: float
    clock: Callable[[], float] = time.monotonic
    throttled_seconds: Optional[float] = None
    started: float = field(init=False)
    answered_at: float = field(init=False)

    def __post_init__(self) -> None:
        self.started = self.answered_at = self.clock()

    @property
    def budget_seconds(self) -> float:
        """The longest this deadline can last: the throttled budget, or the short one if longer."""
        return max(self.seconds, self.throttled_seconds or 0.0)

    def note_answer(self) -> None:
        """The service answered (if only to say "slow down"): an outage now counts from here."""
        self.answered_at = self.clock()

    @property
    def budget_remaining(self) -> float:
        """Seconds left of the throttled budget (the longest this deadline can last), never negative."""
        return max(0.0, self.started + self.budget_seconds - self.clock())

    @property
    def remaining(self) -> float:
        """Seconds left, never negative."""
        ends = min(self.answered_at + self.seconds, self.started + self.budget_seconds)
        return max(0.0, ends - self.clock())

    @property
    def is_expired(self) -> bool:
        """True once no time is left."""
        return self.remaining <= 0.0


@dataclass
class ThrottleMemory:
    """How many throttled answers this process has seen, halved on every call let through: what a
    single agent knows of how busy the fleet is."""

    count: int = 0

    def throttled(self) -> int:
        """Count one throttled answer; returns the new count."""
        self.count += 1
        return self.count

    def let_through(self) -> None:
        """A call got through: the throttle is easing."""
        self.count //= 2


@dataclass
class Backoff:
    """Full-jitter backoff: attempt n sleeps uniform(0, min(cap, base * 2**n)); while throttled, once
    c = min(throttled_cap, throttled_step * throttled answers seen) is the larger ceiling, it sleeps
    uniform(throttled_floor * c, c) instead."""

    base: float = BASE_DELAY_SECONDS
    cap: float = MAX_DELAY_SECONDS
    rng: random.Random = field(default_factory=random.Random)
    sleep: Callable[[float], None] = time.sleep
    attempt: int = 0
    throttled_step: float = THROTTLED_STEP_SECONDS
    throttled_cap: float = THROTTLED_MAX_DELAY_SECONDS
    throttled_floor: float = THROTTLED_JITTER_FLOOR
    memory: ThrottleMemory = field(default_factory=ThrottleMemory)

    def next_delay(self, *, is_throttled: bool = False) -> float:
        """The delay before the next attempt; grows with every call."""
        ceiling = min(self.cap, self.base * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        if is_throttled:
            throttled = min(self.throttled_cap, self.throttled_step * self.memory.throttled())
            if throttled > ceiling:
                return self.rng.uniform(self.throttled_floor * throttled, throttled)
        return self.rng.uniform(0.0, ceiling)

    def wait(self, deadline: Deadline, *, is_throttled: bool = False) -> bool:
        """Sleep before the next attempt; False when the deadline leaves no time for one.

        After a throttled answer the sleep is the agent's own choice, not an outage: it may run to
        the throttled budget, and the outage clock starts again with the next attempt.
        """
        if is_throttled:
            if deadline.budget_remaining <= 0.0:
                return False
            self.sleep(min(self.next_delay(is_throttled=True), deadline.budget_remaining))
            deadline.note_answer()
            return deadline.budget_remaining > 0.0
        if deadline.is_expired:
            return False
        delay = min(self.next_delay(is_throttled=is_throttled), deadline.remaining)
        self.sleep(delay)
        return not deadline.is_expired
