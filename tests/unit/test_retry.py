"""The retry policy: two deadlines (outage and throttled) and a backoff that slows under throttling."""

from __future__ import annotations

import random

import pytest

from agent.retry import (
    THROTTLED_JITTER_FLOOR,
    THROTTLED_MAX_DELAY_SECONDS,
    THROTTLED_STEP_SECONDS,
    Backoff,
    Deadline,
    ThrottleMemory,
)


class Clock:
    """A monotonic clock moved by hand."""

    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def test_a_deadline_without_a_throttled_budget_is_plain() -> None:
    """With no throttled budget the deadline ends `seconds` after the start, whatever is noted."""
    clock = Clock()
    deadline = Deadline(10.0, clock=clock)
    clock.now += 6
    deadline.note_answer()
    assert deadline.remaining == pytest.approx(4.0)
    clock.now += 4
    assert deadline.is_expired


def test_answers_move_the_outage_deadline_up_to_the_throttled_budget() -> None:
    """Each answer restarts the outage clock; the throttled budget caps the whole wait."""
    clock = Clock()
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
    deadline = Deadline(30.0, clock=Clock(), throttled_seconds=5.0)
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
