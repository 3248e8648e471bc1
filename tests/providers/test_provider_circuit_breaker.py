from __future__ import annotations

import pytest

from barp_sidecar.providers.circuit_breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def test_opens_after_consecutive_failures_only() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(3, 10.0, clock)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # resets the count
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == CLOSED and breaker.allow()
    breaker.record_failure()
    assert breaker.state == OPEN
    assert not breaker.allow()
    assert breaker.retry_in_s == pytest.approx(10.0)


def test_half_open_lets_exactly_one_probe_through() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(1, 10.0, clock)
    breaker.record_failure()
    clock.now_s += 9.9
    assert not breaker.allow()
    clock.now_s += 0.1
    assert breaker.state == HALF_OPEN
    assert breaker.allow()
    assert not breaker.allow()  # the probe is in flight
    breaker.record_success()
    assert breaker.state == CLOSED and breaker.allow() and breaker.allow()


def test_a_failed_probe_reopens_for_a_full_period() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(2, 5.0, clock)
    breaker.record_failure()
    breaker.record_failure()
    clock.now_s += 5.0
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == OPEN
    clock.now_s += 4.0
    assert not breaker.allow()
    clock.now_s += 1.0
    assert breaker.allow()


def test_a_released_probe_lets_the_next_caller_probe() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(1, 1.0, clock)
    breaker.record_failure()
    clock.now_s += 1.0
    assert breaker.allow()
    breaker.release_probe()  # the probing caller was cancelled: no verdict
    assert breaker.allow()


def test_threshold_zero_disables_the_breaker() -> None:
    breaker = CircuitBreaker(0, 1.0, FakeClock())
    for _ in range(100):
        breaker.record_failure()
    assert breaker.state == CLOSED and breaker.allow()


def test_invalid_parameters() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(-1, 1.0)
    with pytest.raises(ValueError):
        CircuitBreaker(1, 0.0)
