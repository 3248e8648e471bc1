"""NatsRewardPublisher._settle: the oldest batch's acks are awaited, every later batch whose acks are already
in is taken with it, and the spool is trimmed once, up to the last of them; a batch still waiting stays."""

from __future__ import annotations

import asyncio
from collections import deque
from types import SimpleNamespace
from typing import Any

import pytest

from barp_sidecar.broker.nats_connection import NatsConnector
from barp_sidecar.broker.settings import EventsBackend, EventsSettings
from barp_sidecar.rewards.nats_publisher import NatsRewardPublisher


class RecordingSpool:
    def __init__(self) -> None:
        self.acks: list[int] = []
        self.acked_sequence = 0

    async def ack(self, sequence: int) -> None:
        self.acks.append(sequence)
        self.acked_sequence = sequence


def publish_acks(*duplicates: bool) -> asyncio.Future[list[Any]]:
    future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
    future.set_result([SimpleNamespace(duplicate=d) for d in duplicates])
    return future


async def test_done_batches_are_settled_together_with_one_spool_ack():
    settings = EventsSettings(backend=EventsBackend.NATS, nats_urls=("nats://127.0.0.1:1",))
    spool = RecordingSpool()
    publisher = NatsRewardPublisher(spool, NatsConnector(settings, {}, "test"))  # type: ignore[arg-type]
    oldest: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
    waiting: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
    in_flight = deque(
        [
            (10, [4, 6], oldest),
            (20, [10], publish_acks(True)),  # JetStream had stored this message already
            (30, [3, 7], publish_acks(False, False)),
            (40, [10], waiting),
        ]
    )
    asyncio.get_running_loop().call_later(0.02, oldest.set_result, [SimpleNamespace(duplicate=False)] * 2)
    await publisher._settle(in_flight)
    assert spool.acks == [30]  # one trim for three batches
    assert publisher.duplicates == 10
    assert [entry[0] for entry in in_flight] == [40]
    assert publisher.counters.acked_sequence == 30

    waiting.set_result([SimpleNamespace(duplicate=False)])
    await publisher._settle(in_flight)
    assert spool.acks == [30, 40] and not in_flight


async def test_a_batch_whose_acks_time_out_stays_in_flight_for_the_session_to_cancel():
    settings = EventsSettings(
        backend=EventsBackend.NATS, nats_urls=("nats://127.0.0.1:1",), publish_timeout_s=0.05
    )
    spool = RecordingSpool()
    publisher = NatsRewardPublisher(spool, NatsConnector(settings, {}, "test"))  # type: ignore[arg-type]
    never: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
    in_flight = deque([(10, [10], never)])
    with pytest.raises(TimeoutError):  # fails the session, which reconnects and resends
        await publisher._settle(in_flight)
    assert spool.acks == [] and list(in_flight) == [(10, [10], never)] and not never.cancelled()
