"""One retry policy for IMDS and SSM: exponential backoff with full jitter until a deadline.

A fleet that boots at once must get through SSM's throttle rather than fail after a
fixed number of tries, so retries are bounded by time, not by count.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Callable

BASE_DELAY_SECONDS = 0.05
MAX_DELAY_SECONDS = 2.0


@dataclass
class Deadline:
    """A point in monotonic time after which no new attempt starts."""

    seconds: float
    clock: Callable[[], float] = time.monotonic
    started: float = field(init=False)

    def __post_init__(self) -> None:
        self.started = self.clock()

    @property
    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self.started + self.seconds - self.clock())

    @property
    def is_expired(self) -> bool:
        """True once no time is left."""
        return self.remaining <= 0.0


@dataclass
class Backoff:
    """Full-jitter exponential backoff: attempt n sleeps uniform(0, min(cap, base * 2**n))."""

    base: float = BASE_DELAY_SECONDS
    cap: float = MAX_DELAY_SECONDS
    rng: random.Random = field(default_factory=random.Random)
    sleep: Callable[[float], None] = time.sleep
    attempt: int = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; grows with every call."""
        ceiling = min(self.cap, self.base * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return self.rng.uniform(0.0, ceiling)

    def wait(self, deadline: Deadline) -> bool:
        """Sleep before the next attempt; False when the deadline leaves no time for one."""
        if deadline.is_expired:
            return False
        delay = min(self.next_delay(), deadline.remaining)
        self.sleep(delay)
        return not deadline.is_expired
