"""The retry policy: two deadlines (outage and throttled) and a backoff that slows under throttling."""

from __future__ import annotations

import random
from typing import Callable, Optional

import pytest

from agent.aws.retry import (
    THROTTLED_JITTER_FLOOR,
    THROTTLED_MAX_DELAY_SECONDS,
    THROTTLED_STEP_SECONDS,
    Backoff,
    Deadline,
    Failure,
    Kind,
    NotServiceAnswer,
    RetryLoop,
    ThrottleMemory,
    outage_of,
)
from tests.timing import ManualClock


def test_a_deadline_without_a_throttled_budget_is_plain() -> None:
    """With no throttled budget the deadline ends `seconds` after the start, whatever is noted."""
    clock = ManualClock(500.0)
    deadline = Deadline(10.0, clock=clock)
    clock.now += 6
    deadline.note_answer()
    assert deadline.remaining == pytest.approx(4.0)
    clock.now += 4
    assert deadline.is_expired


def test_answers_move_the_outage_deadline_up_to_the_throttled_budget() -> None:
    """Each answer restarts the outage clock; the throttled budget caps the whole wait."""
    clock = ManualClock(500.0)
    deadline = Deadline(10.0, clock=clock, throttled_seconds=100.0)
    for _ in range(9):
        clock.now += 9
        assert not deadline.is_expired
        deadline.note_answer()
    assert deadline.remaining == pytest.approx(10.0)  # at 81 s, 10 s after the last answer
    clock.now += 12
    assert deadline.is_expired  # no answer for 12 s: an outage, well inside the budget
    deadline.note_answer()
    assert deadline.remaining == pytest.approx(7.0)  # at 93 s: the budget ends at 100 s
    assert deadline.budget_seconds == 100.0


def test_a_throttled_budget_shorter_than_the_deadline_never_shortens_it() -> None:
    """The longest wait is the larger of the two numbers."""
    deadline = Deadline(30.0, clock=ManualClock(500.0), throttled_seconds=5.0)
    assert deadline.budget_seconds == 30.0
    assert deadline.remaining == pytest.approx(30.0)


def test_outage_delays_stay_capped_at_two_seconds() -> None:
    """Without throttling the ceiling doubles from 50 ms and stops at 2 s."""
    backoff = Backoff(rng=random.Random(1))  # noqa: S311  (jitter, not cryptography)
    ceilings = []
    for _ in range(12):
        ceilings.append(min(backoff.cap, backoff.base * 2**backoff.attempt))
        assert 0.0 <= backoff.next_delay() <= ceilings[-1]
    assert ceilings[-1] == 2.0


def test_throttled_delays_grow_with_every_throttled_answer_up_to_their_cap() -> None:
    """Each throttled answer raises the ceiling by one step, to the cap; once that ceiling is above
    the outage one, the delay comes from its top part, [floor x ceiling, ceiling]."""
    memory = ThrottleMemory()
    rng = random.Random(3)  # noqa: S311
    delays = [Backoff(rng=rng, memory=memory).next_delay(is_throttled=True) for _ in range(200)]
    assert memory.count == 200
    assert max(delays[:2]) <= 2.0  # the first ones: at most the outage cap
    for seen, delay in enumerate(delays, start=1):
        ceiling = min(THROTTLED_MAX_DELAY_SECONDS, THROTTLED_STEP_SECONDS * seen)
        if ceiling > 2.0:
            assert THROTTLED_JITTER_FLOOR * ceiling <= delay <= ceiling
    assert THROTTLED_STEP_SECONDS * 20 >= THROTTLED_MAX_DELAY_SECONDS  # the cap is reached in 20 answers
    late = delays[100:]
    mean = THROTTLED_MAX_DELAY_SECONDS * (1 + THROTTLED_JITTER_FLOOR) / 2
    assert sum(late) / len(late) == pytest.approx(mean, rel=0.1)
    assert min(late) >= THROTTLED_JITTER_FLOOR * THROTTLED_MAX_DELAY_SECONDS


def test_a_call_let_through_halves_what_the_process_remembers() -> None:
    """Throttling eases once calls get through: the memory halves with each."""
    memory = ThrottleMemory(count=9)
    memory.let_through()
    assert memory.count == 4
    assert memory.throttled() == 5


class GaveUp(Exception):
    """What the loops below raise when the deadline passes."""


def _loop(
    clock: ManualClock, *, min_attempt_seconds: float = 0.0, throttled_seconds: Optional[float] = None
) -> RetryLoop[str]:
    """A loop on a hand-moved clock (each sleep moves it) whose classifier reads OSError as an outage
    and "throttled" as throttling, and lets everything else through."""

    def sleep(seconds: float) -> None:
        clock.now += seconds

    def classify(error: Exception) -> Optional[Failure]:
        if isinstance(error, OSError):
            return Failure(Kind.THROTTLED if str(error) == "throttled" else Kind.OUTAGE, str(error))
        return None

    return RetryLoop(
        deadline=Deadline(1.0, clock=clock, throttled_seconds=throttled_seconds),
        backoff=Backoff(rng=random.Random(3), sleep=sleep),  # noqa: S311
        classify=classify,
        give_up=lambda loop: GaveUp(loop.attempts, loop.last, loop.not_answer),
        min_attempt_seconds=min_attempt_seconds,
    )


def _failing(errors: list[Exception]) -> Callable[[], str]:
    """An attempt that raises each of `errors` in turn, then answers "answer"."""

    def attempt() -> str:
        if errors:
            raise errors.pop(0)
        return "answer"

    return attempt


def test_classified_failures_are_retried_until_an_answer() -> None:
    """Outages and answers that are not the service's are retried; the checked answer is returned."""
    loop = _loop(ManualClock(500.0))
    errors: list[Exception] = [OSError("refused"), NotServiceAnswer("a page"), OSError("reset")]
    assert loop.run(_failing(errors), str.upper) == "ANSWER"
    assert loop.attempts == 4
    assert loop.not_answer == Failure(Kind.NOT_ANSWER, "a page")


def test_an_error_the_classifier_does_not_claim_is_raised_at_the_first_attempt() -> None:
    """A KeyError from the attempt (not the transport's) propagates at once, without a retry."""
    loop = _loop(ManualClock(500.0))
    with pytest.raises(KeyError):
        loop.run(_failing([KeyError("bug")]), str.upper)
    assert loop.attempts == 1


def test_only_not_service_answer_from_the_check_is_retried() -> None:
    """The check's NotServiceAnswer is retried; any other error it raises is a bug and propagates."""
    verdicts: list[Exception] = [NotServiceAnswer("truncated"), KeyError("bug")]

    def check(answer: str) -> str:
        raise verdicts.pop(0)

    loop = _loop(ManualClock(500.0))
    with pytest.raises(KeyError):
        loop.run(_failing([]), check)
    assert loop.attempts == 2


def test_the_deadline_ends_the_loop_with_the_client_error_naming_the_last_failure() -> None:
    """Outages past the deadline end in give_up, which sees the attempts, the last failure and the last
    answer not believed."""
    clock = ManualClock(500.0)
    loop = _loop(clock)
    errors: list[Exception] = [NotServiceAnswer("a page"), *[OSError("refused") for _ in range(1000)]]
    with pytest.raises(GaveUp) as raised:
        loop.run(_failing(errors), str.upper)
    attempts, last, not_answer = raised.value.args
    assert attempts > 2
    assert last == Failure(Kind.OUTAGE, "refused")
    assert not_answer == Failure(Kind.NOT_ANSWER, "a page")
    assert clock.now - 500.0 == pytest.approx(1.0)


def test_throttling_runs_to_the_throttled_budget() -> None:
    """Throttled answers keep the loop going past the short deadline, up to the throttled budget."""
    clock = ManualClock(500.0)
    loop = _loop(clock, throttled_seconds=30.0)
    with pytest.raises(GaveUp):
        loop.run(_failing([OSError("throttled") for _ in range(1000)]), str.upper)
    assert clock.now - 500.0 == pytest.approx(30.0)


def test_no_attempt_starts_with_less_than_the_minimum_left() -> None:
    """With min_attempt_seconds above what is left, the loop gives up before its first attempt."""
    clock = ManualClock(500.0)
    loop = _loop(clock, min_attempt_seconds=0.05)
    clock.now += 0.99
    with pytest.raises(GaveUp) as raised:
        loop.run(_failing([]), str.upper)
    assert raised.value.args[0] == 0


def test_a_loop_that_gives_up_marks_its_error_as_an_outage_and_nothing_else_is() -> None:
    """outage_of reads the last failure back from the error a loop raised on giving up (throttled or
    outage); an error the loop let through, and one that merely wraps a give-up, are not outages."""
    throttled = _loop(ManualClock(500.0), throttled_seconds=5.0)
    with pytest.raises(GaveUp) as raised:
        throttled.run(_failing([OSError("throttled") for _ in range(1000)]), str.upper)
    assert outage_of(raised.value) == Failure(Kind.THROTTLED, "throttled")

    down = _loop(ManualClock(500.0))
    with pytest.raises(GaveUp) as gave_up:
        down.run(_failing([OSError("refused") for _ in range(1000)]), str.upper)
    assert outage_of(gave_up.value) == Failure(Kind.OUTAGE, "refused")

    refused = _loop(ManualClock(500.0))
    with pytest.raises(KeyError) as let_through:
        refused.run(_failing([KeyError("denied")]), str.upper)
    assert outage_of(let_through.value) is None
    wrapped = ValueError("wrapped")
    wrapped.__cause__ = gave_up.value
    assert outage_of(wrapped) is None
