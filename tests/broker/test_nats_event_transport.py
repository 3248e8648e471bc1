"""The NATS event transport against a real ``nats-server -js`` on 127.0.0.1: spool -> JetStream -> the
trainer's durable consumer -> event log, exactly once, through an unreachable broker at start, a broker
killed mid-run, a deleted stream, malformed and foreign messages, and wrong credentials.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import nats
import pytest

from barp_sidecar.broker.nats_connection import NatsConnector
from barp_sidecar.broker.settings import EventsBackend, EventsSettings
from barp_sidecar.rewards.nats_publisher import MSG_ID_HEADER, NatsRewardPublisher
from barp_sidecar.rewards.spool import RewardSpool
from tests.learning_helpers import ARMS, DIM, random_event
from tests.support.nats_server import NatsServer, free_port, require_nats_server
from tests.support.waiting import wait_until
from trainer.service.eventlog import SegmentedEventLog
from trainer.service.nats_ingest import NatsEventIngestor

FAST = {"reconnect_initial_backoff_s": 0.05, "reconnect_max_backoff_s": 0.3, "connect_timeout_s": 1.0}


def events_settings(urls: list[str], **extra: object) -> EventsSettings:
    return EventsSettings(backend=EventsBackend.NATS, nats_urls=tuple(urls), **{**FAST, **extra})  # type: ignore[arg-type]


class Pipeline:
    """A sidecar's spool + NATS publisher and a trainer's consumer + event log, in this process."""

    def __init__(self, tmp_path: Path, settings: EventsSettings, env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.spool = RewardSpool(tmp_path / "spool", 1 << 20, 1.0)
        self.log = SegmentedEventLog(tmp_path / "events").open()
        self.publisher = NatsRewardPublisher(
            self.spool, NatsConnector(settings, env or {}, "sidecar"), seed=1
        )
        self.ingestor = NatsEventIngestor(
            NatsConnector(settings, env or {}, "trainer"), self.log, ARMS, DIM, seed=2
        )

    async def start(self) -> Pipeline:
        await self.spool.start()
        await self.publisher.start()
        await self.ingestor.start()
        return self

    async def close(self) -> None:
        await self.publisher.close()
        await self.ingestor.close()
        await self.spool.close()
        self.log.close()

    def stored_ids(self) -> list[str]:
        return [event.event_id for _, event in self.log.read_from(0, 1_000_000)]


async def append(spool: RewardSpool, rng: random.Random, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        event = random_event(rng)
        await spool.append(event)
        ids.append(event.event_id)
    return ids


async def test_every_event_reaches_the_trainer_log_once_and_the_spool_is_trimmed_on_publish_acks(
    tmp_path, broker
):
    pipeline = await Pipeline(tmp_path, events_settings([broker.url])).start()
    try:
        ids = await append(pipeline.spool, random.Random(0), 300)
        await wait_until(lambda: len(pipeline.stored_ids()) == 300, what="300 events in the log")
        assert sorted(pipeline.stored_ids()) == sorted(ids)
        assert await pipeline.publisher.drain(5.0)
        assert pipeline.spool.acked_sequence == 300 and pipeline.publisher.state == "connected"
        # The log is readable as soon as its fsync returns; the counters follow when the loop resumes.
        await wait_until(lambda: pipeline.ingestor.counters.stored == 300, what="300 counted as stored")
        assert not pipeline.ingestor.counters.dead_lettered
    finally:
        await pipeline.close()


@pytest.mark.parametrize("per_message", [1, 64], ids=["single-event messages", "batch messages"])
async def test_a_resend_after_a_lost_ack_is_dropped_by_msg_id_and_by_the_log(tmp_path, broker, per_message):
    settings = events_settings([broker.url], max_events_per_message=per_message)
    pipeline = await Pipeline(tmp_path, settings).start()
    ids = await append(pipeline.spool, random.Random(1), 50)
    await wait_until(lambda: pipeline.spool.acked_sequence == 50, what="50 acks")
    first_messages = pipeline.publisher.messages_sent
    await pipeline.close()
    # A crash after JetStream stored the events but before ACKED reached the disk: everything is resent.
    (tmp_path / "spool" / "ACKED").write_text("0\n")
    again = await Pipeline(tmp_path, settings).start()
    try:
        await wait_until(lambda: again.spool.acked_sequence == 50, what="resend acknowledged")
        await asyncio.sleep(0.5)
        assert sorted(again.stored_ids()) == sorted(ids)
        if per_message == 1:
            assert again.publisher.duplicates == 50  # JetStream recognised every Nats-Msg-Id
        else:
            # The events were appended one by one the first time (batches as they came) and resent all
            # at once: other boundaries, other Nats-Msg-Ids. The log drops the repeats by event id.
            # (The log also drops the events of its last message, which a process's first session reads
            # again: a crash may have torn it.)
            assert again.publisher.messages_sent < first_messages
            assert again.ingestor.counters.stored == 0
            assert again.publisher.duplicates + again.ingestor.counters.duplicates >= 50
    finally:
        await again.close()


async def test_broker_unreachable_at_start_spools_then_delivers_when_it_appears(tmp_path):
    require_nats_server()
    port = free_port()
    pipeline = await Pipeline(tmp_path, events_settings([f"nats://127.0.0.1:{port}"])).start()
    node = NatsServer(tmp_path / "late-store", port=port)
    try:
        ids = await append(pipeline.spool, random.Random(2), 40)  # recording never waits for the broker
        await wait_until(lambda: pipeline.publisher.state == "unreachable", what="unreachable state")
        assert pipeline.publisher.connect_failures >= 1 and pipeline.spool.unacked_events == 40
        node.start()
        await wait_until(lambda: sorted(pipeline.stored_ids()) == sorted(ids), what="late delivery")
        assert pipeline.publisher.state == "connected"
    finally:
        await pipeline.close()
        node.stop()


async def test_broker_killed_mid_run_loses_nothing_and_counts_nothing_twice(tmp_path):
    require_nats_server()
    node = NatsServer(tmp_path / "store").start()
    pipeline = await Pipeline(tmp_path, events_settings([node.url])).start()
    try:
        rng = random.Random(3)
        ids = await append(pipeline.spool, rng, 100)
        await wait_until(lambda: len(pipeline.stored_ids()) == 100, what="first 100")
        node.kill()
        ids += await append(pipeline.spool, rng, 100)  # recorded while the broker is down
        await wait_until(lambda: pipeline.publisher.state == "unreachable", what="broker lost")
        node.start()  # same port, same store: the stream and the durable consumer survive
        ids += await append(pipeline.spool, rng, 100)
        await wait_until(lambda: len(pipeline.stored_ids()) >= 300, what="all 300")
        await asyncio.sleep(0.5)
        assert sorted(pipeline.stored_ids()) == sorted(ids)
    finally:
        await pipeline.close()
        node.stop()


async def test_deleted_stream_is_recreated_and_delivery_continues(tmp_path, broker):
    pipeline = await Pipeline(tmp_path, events_settings([broker.url])).start()
    try:
        rng = random.Random(4)
        ids = await append(pipeline.spool, rng, 20)
        await wait_until(lambda: len(pipeline.stored_ids()) == 20, what="first 20")
        client = await nats.connect(broker.url)
        await client.jetstream().delete_stream(pipeline.settings.stream)
        await client.close()
        ids += await append(pipeline.spool, rng, 20)
        await wait_until(lambda: len(pipeline.stored_ids()) >= 40, timeout_s=30, what="after deletion")
        assert sorted(pipeline.stored_ids()) == sorted(ids)
    finally:
        await pipeline.close()


async def test_malformed_and_foreign_messages_are_dead_lettered_and_the_consumer_goes_on(tmp_path, broker):
    pipeline = await Pipeline(tmp_path, events_settings([broker.url])).start()
    try:
        rng = random.Random(5)
        await wait_until(lambda: pipeline.ingestor.connected, what="consumer connected")
        client = await nats.connect(broker.url)
        js = client.jetstream()
        s = pipeline.settings
        bad_arm = random_event(rng)
        bad_arm.model = "no-such-model"
        await js.publish(s.subject, b"\xff\xff\xff garbage", headers={MSG_ID_HEADER: "garbage-1"})
        await js.publish(s.subject, random_event(rng).SerializeToString())  # foreign: no Nats-Msg-Id
        await js.publish(s.subject, bad_arm.SerializeToString(), headers={MSG_ID_HEADER: bad_arm.event_id})
        ids = await append(pipeline.spool, rng, 30)
        await wait_until(lambda: len(pipeline.stored_ids()) == 30, what="good events after bad ones")
        assert sorted(pipeline.stored_ids()) == sorted(ids)
        dead = pipeline.ingestor.counters.dead_lettered
        assert dict(dead) == {"undecodable": 1, "foreign": 1, "invalid": 1}
        info = await js.stream_info(s.dead_letter_stream)
        assert info.state.messages == 3
        first = await js.get_msg(s.dead_letter_stream, 3)
        assert "model: unknown model" in first.headers["Barp-Dead-Reason"]
        await client.close()
    finally:
        await pipeline.close()


async def test_wrong_credentials_show_auth_failed_and_the_right_ones_connect(tmp_path):
    require_nats_server()
    node = NatsServer(tmp_path / "store", extra_args=["--user", "barp", "--pass", "s3cret"]).start()
    try:
        wrong = events_settings([node.url], nats_user="barp", nats_password_env="NATS_PASSWORD")
        pipeline = await Pipeline(tmp_path / "wrong", wrong, {"NATS_PASSWORD": "nope"}).start()
        try:
            await wait_until(lambda: pipeline.publisher.state == "auth_failed", what="auth_failed")
            assert pipeline.ingestor.state == "auth_failed"
        finally:
            await pipeline.close()
        right = await Pipeline(tmp_path / "right", wrong, {"NATS_PASSWORD": "s3cret"}).start()
        try:
            ids = await append(right.spool, random.Random(6), 10)
            await wait_until(lambda: sorted(right.stored_ids()) == sorted(ids), what="delivery with auth")
        finally:
            await right.close()
    finally:
        node.stop()
