"""The trainer's own JetStream pull requests (``trainer/service/nats_pull.py``) and the consumer's
acknowledge-after-durable rule, against a real ``nats-server -js``: batches in stream order and bounded,
the next batch requested before the caller acknowledges, an idle consumer, a deleted consumer, and a
trainer failing before / after its fsync'd append (the next session's consumer starts after the log's
last stream sequence: what was not stored comes again, nothing is stored twice).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig
from structlog.testing import capture_logs

import trainer.service.nats_ingest as nats_ingest
from barp_sidecar.gen.barp.v1 import trainer_pb2
from tests.broker.test_nats_event_transport import Pipeline, append, events_settings
from tests.support.waiting import wait_until
from trainer.service.eventlog import SegmentedEventLog
from trainer.service.nats_pull import PullBatches, PullFailed

STREAM, SUBJECT, CONSUMER = "PULLTEST", "pull.test", "reader"


@asynccontextmanager
async def pulling(url: str, messages: int, batch: int, expires_s: float) -> AsyncIterator[tuple[Any, Any]]:
    """(JetStream context, started PullBatches) on a fresh stream holding ``messages`` messages."""
    client = await nats.connect(url)
    js = client.jetstream()
    await js.add_stream(name=STREAM, subjects=[SUBJECT])
    for i in range(messages):
        await js.publish(SUBJECT, f"m{i}".encode())
    await js.add_consumer(
        STREAM, ConsumerConfig(durable_name=CONSUMER, ack_policy=AckPolicy.EXPLICIT, ack_wait=30)
    )
    batches = PullBatches(client, STREAM, CONSUMER, batch=batch, expires_s=expires_s)
    await batches.start()
    try:
        yield js, batches
    finally:
        await batches.close()
        await client.close()


async def consumer_settles(js, num_ack_pending: int, ack_floor: int) -> None:
    async def state() -> tuple[int, int]:
        info = await js.consumer_info(STREAM, CONSUMER)
        return info.num_ack_pending, info.ack_floor.stream_seq

    deadline = time.monotonic() + 10
    while await state() != (num_ack_pending, ack_floor):
        assert time.monotonic() < deadline, f"consumer at {await state()}, not {(num_ack_pending, ack_floor)}"
        await asyncio.sleep(0.05)


async def test_batches_come_in_stream_order_bounded_and_the_next_streams_in_before_any_ack(broker):
    async with pulling(broker.url, 25, batch=10, expires_s=1.0) as (js, batches):
        first = await batches.next_batch(5.0)
        assert 1 <= len(first) <= 10
        # Nothing acknowledged, and the next messages are already on their way.
        await wait_until(lambda: batches.buffered > 0, what="the next batch streaming in")
        received = list(first)
        while len(received) < 25:
            batch = await batches.next_batch(5.0)
            assert 1 <= len(batch) <= 10
            received += batch
        assert [m.data for m in received] == [f"m{i}".encode() for i in range(25)]
        await consumer_settles(js, num_ack_pending=25, ack_floor=0)
        for msg in received:
            await msg.ack()
        await consumer_settles(js, num_ack_pending=0, ack_floor=25)
        assert await batches.next_batch(0.3) == []


async def test_an_idle_consumer_returns_nothing_and_later_messages_still_arrive(broker):
    async with pulling(broker.url, 0, batch=8, expires_s=0.3) as (js, batches):
        started = time.monotonic()
        assert await batches.next_batch(0.5) == []
        assert await batches.next_batch(0.5) == []  # the first request expired (408); a new one went out
        assert time.monotonic() - started < 5
        assert batches.requests >= 2
        await js.publish(SUBJECT, b"late")
        assert [m.data for m in await batches.next_batch(5.0)] == [b"late"]


async def test_a_deleted_consumer_fails_the_pull(broker):
    async with pulling(broker.url, 0, batch=8, expires_s=0.3) as (js, batches):
        assert await batches.next_batch(0.2) == []
        await js.delete_consumer(STREAM, CONSUMER)
        with pytest.raises(PullFailed):
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                assert await batches.next_batch(0.5) == []


class FailingLog:
    """The trainer's event log, failing the first append the way a crash would: before the records are
    written (``durable=False``) or after they were fsync'd but before the consumer acknowledged them."""

    def __init__(self, inner: SegmentedEventLog, durable: bool) -> None:
        self.inner = inner
        self.durable = durable
        self.entered = threading.Event()
        self.release = threading.Event()
        self.failed = False

    def append(self, events: Sequence[trainer_pb2.RewardEvent]) -> list[bool]:
        if not self.failed:
            self.entered.set()
            assert self.release.wait(30), "the test never released the append"
            self.failed = True
            if self.durable:
                self.inner.append(events)
            raise OSError("simulated crash around the fsync")
        return self.inner.append(events)

    def __getattr__(self, name: str) -> Any:  # everything else is the real log's
        return getattr(self.inner, name)


@pytest.mark.parametrize("durable", [False, True], ids=["before-fsync", "after-fsync-before-ack"])
async def test_a_failure_around_the_durable_append_loses_nothing_and_stores_each_event_once(
    tmp_path: Path, broker, monkeypatch, durable
):
    monkeypatch.setattr(nats_ingest, "ACK_WAIT_S", 1.0)  # redelivery of unacknowledged messages after 1 s
    pipeline = Pipeline(tmp_path, events_settings([broker.url]))
    failing = FailingLog(pipeline.log, durable)
    pipeline.ingestor.event_log = failing  # type: ignore[assignment]
    await pipeline.start()
    client = await nats.connect(broker.url)
    try:
        ids = await append(pipeline.spool, random.Random(7), 120)
        assert await asyncio.to_thread(failing.entered.wait, 20)
        # A session that failed before the first append is not this test's subject (seen once in 20 loaded
        # runs: a BadRequest from JetStream while both sides declared the stream; the session retried).
        failures_before_crash = pipeline.ingestor.session_failures
        # The consumer holds a fetched batch whose append has not returned: not one message is acknowledged.
        info = await client.jetstream().consumer_info(pipeline.settings.stream, pipeline.settings.consumer)
        assert info.num_ack_pending > 0 and info.ack_floor.stream_seq == 0
        with capture_logs() as logs:
            failing.release.set()
            await wait_until(lambda: sorted(pipeline.stored_ids()) == sorted(ids), 30, "redelivered events")
        # A local failure is not the broker's: shown as session_failed (error level), not as unreachable.
        failed = [e for e in logs if e["event"] == "event_broker_session_failed"]
        assert failed and failed[0]["log_level"] == "error" and "simulated crash" in failed[0]["error"]
        assert not [e for e in logs if e["event"] == "event_broker_unreachable"]
        await asyncio.sleep(1.5)  # one more redelivery period: nothing arrives twice
        stored = pipeline.stored_ids()
        assert len(stored) == len(set(stored)) == 120
        assert pipeline.ingestor.session_failures == failures_before_crash + 1  # the crash, once
        info = await client.jetstream().consumer_info(pipeline.settings.stream, pipeline.settings.consumer)
        assert info.num_ack_pending == 0
    finally:
        await client.close()
        failing.release.set()
        await pipeline.close()
