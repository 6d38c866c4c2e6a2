"""One retry loop for IMDS and SSM: backoff with full jitter until a deadline, a throttled fleet's
pace, and the classes a failed attempt falls in.

A fleet that boots at once must get through SSM's throttle rather than fail after a fixed number of
tries, so retries are bounded by time, not by count. Two budgets: an outage (no answer, 5xx, answers
that are not the service's) ends at the short deadline, counted from the last time the service
answered; throttling, which means the service is up and busy, may go on for the longer throttled
budget.

Each client reads its transport's exceptions in one place (ssm_call.SsmCaller._classify for
botocore, imds.ImdsClient._http for requests) and gives the loop a classifier naming the class of
each failure; the loop (RetryLoop, used by both) acts on the class:

    an attempt failed
    ├── Failure OUTAGE        no answer, a 5xx, a cut connection: retried to the short deadline
    ├── Failure THROTTLED     "slow down": retried at the throttled pace, to the throttled budget
    ├── Failure NOT_ANSWER    NotServiceAnswer, or a body the transport could not read: retried
    │                         like an outage, and named when the client gives up
    └── no Failure            anything else (an error the client translated, a bug in the agent's
                              own code): raised at once, never retried

The error a loop raises when no time is left carries, as its cause, a GaveUp naming the last
failure's class: `outage_of` reads it back. That is how a caller tells "the service did not answer"
(serve what it holds, agent/commands/outage.py) from a refusal (an error the client translated, never
marked), with no second classifier.

Only the attempt's exceptions are classified: the client's `check` of an answer may raise
NotServiceAnswer (retried), and anything else it raises propagates untouched.
"""

from __future__ import annotations

import enum
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Generic, Optional, TypeVar

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
# then measured with real processes by `make bench`. A process sees only its own
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


class NotServiceAnswer(Exception):
    """An answer that does not hold up as the service's (a proxy's page, a truncated body); `reason`
    says why and never quotes the body. `request` names the request when it is not the one retried."""

    def __init__(self, reason: str, *, request: Optional[str] = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.request = request


class Kind(enum.Enum):
    """The retry class of a failed attempt."""

    OUTAGE = "outage"
    THROTTLED = "throttled"
    NOT_ANSWER = "not_answer"


@dataclass(frozen=True)
class Failure:
    """One failed attempt: its class, a short secret-free `error`, and the request it was (if named)."""

    kind: Kind
    error: str
    request: Optional[str] = None


class GaveUp(Exception):
    """The cause of the error a RetryLoop raises when no time is left: the last failure it retried."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.kind.value)
        self.failure = failure


def outage_of(error: BaseException) -> Optional[Failure]:
    """The last failure of the retry loop that gave up and raised `error`, or None when `error` is
    anything else (a refusal, a bad template, a bug): only a loop's own give-up counts, never an
    error that merely wraps one."""
    cause = error.__cause__
    return cause.failure if isinstance(cause, GaveUp) else None


_Answer = TypeVar("_Answer")
_T = TypeVar("_T")


@dataclass
class RetryLoop(Generic[_Answer]):
    """Runs an attempt until its answer passes `check` or the deadline passes.

    `classify` maps an exception the attempt raised to a Failure to retry, or returns None to let it
    propagate (it may also raise a translated error itself). `on_failure` reports each failure before
    the wait; `give_up` builds the error raised when no time is left, from this loop's record. No
    attempt starts with less than `min_attempt_seconds` left (0: the first attempt always starts).
    """

    deadline: Deadline
    backoff: Backoff
    classify: Callable[[Exception], Optional[Failure]]
    give_up: Callable[[RetryLoop[_Answer]], Exception]
    on_failure: Callable[[Failure, int], None] = lambda _failure, _attempt: None
    min_attempt_seconds: float = 0.0
    attempts: int = 0
    last: Optional[Failure] = None
    not_answer: Optional[Failure] = None

    def run(self, attempt: Callable[[], _Answer], check: Callable[[_Answer], _T]) -> _T:
        """`check` of the first answer it believes; raises give_up(self) once the deadline passes."""
        while True:
            if self.deadline.remaining < self.min_attempt_seconds:
                raise self._gave_up()
            self.attempts += 1
            try:
                answer = attempt()
            except NotServiceAnswer as bad:
                failure = Failure(Kind.NOT_ANSWER, bad.reason, bad.request)
            except Exception as error:
                classified = self.classify(error)
                if classified is None:
                    raise
                failure = classified
            else:
                try:
                    return check(answer)
                except NotServiceAnswer as bad:
                    failure = Failure(Kind.NOT_ANSWER, bad.reason, bad.request)
            self.last = failure
            if failure.kind is Kind.NOT_ANSWER:
                self.not_answer = failure
            self.on_failure(failure, self.attempts)
            if not self.backoff.wait(self.deadline, is_throttled=failure.kind is Kind.THROTTLED):
                raise self._gave_up()

    def _gave_up(self) -> Exception:
        """give_up's error, marked (its cause) with the last failure: see `outage_of`."""
        error = self.give_up(self)
        error.__cause__ = GaveUp(self.last or Failure(Kind.OUTAGE, "no attempt: the deadline had passed"))
        return error
