"""The hand-over's retry (trainer/service/failover.py ``retry_while_held``): a new active replica whose
download of the latest version meets a broker that does not answer yet (a JetStream node died with the
active replica and the meta leader is being re-elected: the API request times out) tries again instead of
standing down, only while it holds the lease and only until ``failover.resume_wait_s``; any other error
fails the hand-over at once. Found by tests/e2e/test_cluster_failover_faults_processes.py."""

from __future__ import annotations

import random

import pytest

from barp_sidecar.backoff import ReconnectBackoff
from barp_sidecar.broker.nats_connection import BrokerUnavailable
from trainer.service.failover import retry_while_held

nats_errors = pytest.importorskip("nats.errors")


class Flaky:
    """An operation that raises each of ``errors`` in turn, then returns "downloaded"; counts its calls."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "downloaded"


def fast_backoff() -> ReconnectBackoff:
    return ReconnectBackoff(0.001, 0.002, random.Random(0))


async def test_broker_timeouts_and_lost_connections_are_retried_until_the_download_succeeds():
    operation = Flaky(
        nats_errors.TimeoutError(), BrokerUnavailable("no server"), nats_errors.NoRespondersError()
    )
    result = await retry_while_held(operation, lambda: True, fast_backoff(), wait_s=10.0)
    assert result == "downloaded"
    assert operation.calls == 4


async def test_an_error_that_is_not_the_broker_fails_the_hand_over_at_once():
    operation = Flaky(ValueError("announcement is not JSON"))
    with pytest.raises(ValueError, match="not JSON"):
        await retry_while_held(operation, lambda: True, fast_backoff(), wait_s=10.0)
    assert operation.calls == 1


async def test_a_replica_that_lost_its_lease_does_not_retry():
    operation = Flaky(nats_errors.TimeoutError(), nats_errors.TimeoutError())
    with pytest.raises(nats_errors.TimeoutError):
        await retry_while_held(operation, lambda: False, fast_backoff(), wait_s=10.0)
    assert operation.calls == 1


async def test_retries_stop_when_the_wait_is_up():
    now = [0.0]
    operation = Flaky(*(nats_errors.TimeoutError() for _ in range(100)))

    async def slow_operation() -> str:
        now[0] += 5.0  # each attempt is a 5 s API timeout
        return await operation()

    with pytest.raises(nats_errors.TimeoutError):
        await retry_while_held(
            slow_operation, lambda: True, fast_backoff(), wait_s=12.0, clock=lambda: now[0]
        )
    assert operation.calls == 3  # at 5 s, 10 s and 15 s: past the 12 s wait, no fourth try
