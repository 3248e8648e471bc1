"""The one jittered backoff schedule shared by reconnect loops and provider retries."""

from __future__ import annotations

import random

import pytest

from barp_sidecar.backoff import ReconnectBackoff, backoff_delay_s


def test_delay_is_full_jitter_under_a_doubling_cap() -> None:
    rng = random.Random(7)
    for attempt, cap in ((0, 0.1), (1, 0.2), (3, 0.8), (10, 2.0)):
        delays = [backoff_delay_s(attempt, 0.1, 2.0, rng) for _ in range(300)]
        assert 0.0 <= min(delays) < 0.2 * cap
        assert 0.8 * cap < max(delays) <= cap


def test_min_s_is_a_floor_for_reconnect_loops() -> None:
    rng = random.Random(1)
    delays = [backoff_delay_s(4, 0.5, 8.0, rng, min_s=0.25) for _ in range(300)]
    assert min(delays) == 0.25
    assert max(delays) > 7.0


def test_seeded_schedules_repeat() -> None:
    first = [backoff_delay_s(a, 0.1, 2.0, random.Random(3)) for a in range(6)]
    assert first == [backoff_delay_s(a, 0.1, 2.0, random.Random(3)) for a in range(6)]


@pytest.mark.parametrize(
    ("attempt", "initial_s", "max_s", "min_s"), [(-1, 0.1, 1.0, 0.0), (0, 0.5, 0.1, 0.0), (0, 0.1, 1.0, -1.0)]
)
def test_invalid_schedules_are_refused(attempt: int, initial_s: float, max_s: float, min_s: float) -> None:
    with pytest.raises(ValueError):
        backoff_delay_s(attempt, initial_s, max_s, random.Random(0), min_s=min_s)


def test_reconnect_backoff_grows_while_sessions_fail_and_restarts_after_progress() -> None:
    schedule = ReconnectBackoff(0.5, 8.0, random.Random(0))
    caps = [min(8.0, 0.5 * 2**attempt) for attempt in range(1, 7)]
    delays = [schedule.next_delay_s(made_progress=False) for _ in caps]
    assert all(0.25 <= delay <= cap for delay, cap in zip(delays, caps, strict=True))
    assert 0.25 <= schedule.next_delay_s(made_progress=True) <= 0.5  # attempt 0 again
    with pytest.raises(ValueError):
        ReconnectBackoff(0.0, 1.0, random.Random(0))
