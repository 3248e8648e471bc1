"""Batch messages (several reward events per NATS message) against a real ``nats-server -js``: a stream
mixing single-event and batch messages is read whole and in order, a malformed batch and an invalid event
inside a batch go to the dead-letter subject with their reasons, no message exceeds the server's
``max_payload``, and a batch message a crash left half-appended to the log is completed, nothing twice.
"""

from __future__ import annotations

import random

import nats

from barp_sidecar.broker.nats_connection import NatsConnector
from barp_sidecar.rewards.event_messages import EVENT_COUNT_HEADER, pack_messages, unpack_message
from tests.broker.test_nats_event_transport import Pipeline, append, events_settings
from tests.learning_helpers import ARMS, DIM, random_event
from tests.support.nats_server import NatsServer
from tests.support.waiting import wait_until
from trainer.service.eventlog import SegmentedEventLog
from trainer.service.nats_ingest import NatsEventIngestor


async def test_single_event_and_batch_messages_mix_and_bad_ones_are_dead_lettered(tmp_path, broker):
    pipeline = await Pipeline(tmp_path, events_settings([broker.url])).start()
    try:
        rng = random.Random(21)
        await wait_until(lambda: pipeline.ingestor.connected, what="consumer connected")
        client = await nats.connect(broker.url)
        js = client.jetstream()
        s = pipeline.settings
        old = [random_event(rng) for _ in range(3)]  # a sidecar before batch messages: one per message
        for message in pack_messages(old, 1, 1 << 20):
            await js.publish(s.subject, message.payload, headers=message.headers)
        batch = [random_event(rng) for _ in range(4)]
        batch[2].model = "no-such-model"  # one invalid event inside a batch: dead-lettered alone
        (good_batch,) = pack_messages(batch, 64, 1 << 20)
        await js.publish(s.subject, good_batch.payload, headers=good_batch.headers)
        (broken,) = pack_messages([random_event(rng) for _ in range(3)], 64, 1 << 20)
        await js.publish(s.subject, broken.payload[:-7], headers=broken.headers)  # truncated
        miscounted = {EVENT_COUNT_HEADER: "9", "Nats-Msg-Id": "a..b"}  # (its own id: not a resend)
        await js.publish(s.subject, good_batch.payload, headers=miscounted)
        # This sidecar: batch messages (the default). The publisher is paused while the 30 events are
        # recorded, so it finds all of them at once (appended while it runs, each may go out alone).
        await pipeline.publisher.close()
        ids = await append(pipeline.spool, rng, 30)
        await pipeline.publisher.start()
        expected = [e.event_id for e in old] + [e.event_id for i, e in enumerate(batch) if i != 2] + ids
        await wait_until(lambda: len(pipeline.stored_ids()) == len(expected), what="every good event")
        assert pipeline.stored_ids()[:6] == expected[:6]  # the stream's order, a batch's own order
        assert sorted(pipeline.stored_ids()) == sorted(expected)
        assert dict(pipeline.ingestor.counters.dead_lettered) == {"invalid": 1, "undecodable": 2}
        dead = [await js.get_msg(s.dead_letter_stream, q) for q in (1, 2, 3)]
        reasons = [m.headers["Barp-Dead-Reason"] for m in dead]
        assert "model: unknown model" in reasons[0]
        assert unpack_message(dead[0].data or b"", {"Nats-Msg-Id": batch[2].event_id}) == [batch[2]]
        assert "runs past the end" in reasons[1] and "Barp-Events says 9" in reasons[2]
        assert pipeline.publisher.messages_sent == 1  # 30 events in one message
        await client.close()
    finally:
        await pipeline.close()


async def test_no_message_exceeds_the_servers_max_payload(tmp_path):
    config = tmp_path / "small-payload.conf"
    config.write_text("max_payload: 4096\n")
    server = NatsServer(tmp_path / "nats-store", extra_args=["-c", str(config)]).start()
    pipeline = await Pipeline(tmp_path, events_settings([server.url], max_events_per_message=512)).start()
    try:
        ids = await append(pipeline.spool, random.Random(22), 200)  # ~250 bytes each: ~50 kB in all
        await wait_until(lambda: len(pipeline.stored_ids()) == 200, what="200 events in the log")
        assert sorted(pipeline.stored_ids()) == sorted(ids)
        client = await nats.connect(server.url)
        assert client.max_payload == 4096
        js = client.jetstream()
        info = await js.stream_info(pipeline.settings.stream)
        sizes = []
        for sequence in range(1, info.state.last_seq + 1):
            msg = await js.get_msg(pipeline.settings.stream, sequence)
            sizes.append(len(msg.data or b""))
        await client.close()
        assert max(sizes) <= 4096 - 1024 and len(sizes) < 200
    finally:
        await pipeline.close()
        server.stop()


async def test_a_batch_message_half_appended_before_a_crash_is_completed_and_nothing_is_twice(
    tmp_path, broker
):
    rng = random.Random(23)
    settings = events_settings([broker.url])
    client = await nats.connect(broker.url)
    js = client.jetstream()
    first, second = [random_event(rng) for _ in range(5)], [random_event(rng) for _ in range(6)]
    pipeline = Pipeline(tmp_path, settings)  # creates the stream; its consumer stores the first message
    await pipeline.ingestor.start()
    try:
        await wait_until(lambda: pipeline.ingestor.connected, what="consumer connected")
        for batch in (first,):
            (message,) = pack_messages(batch, 64, 1 << 20)
            await js.publish(settings.subject, message.payload, headers=message.headers)
        await wait_until(lambda: len(pipeline.stored_ids()) == 5, what="the first message stored")
    finally:
        await pipeline.ingestor.close()
        pipeline.log.close()
    # The crash: the second message's append reached the disk only for its first two events.
    log = SegmentedEventLog(tmp_path / "events").open()
    (message,) = pack_messages(second, 64, 1 << 20)
    ack = await js.publish(settings.subject, message.payload, headers=message.headers)
    torn = [event.__deepcopy__() for event in second[:2]]
    for event in torn:
        event.stream_sequence = ack.seq
    log.append(torn)
    ingestor = NatsEventIngestor(NatsConnector(settings, {}, "trainer"), log, ARMS, DIM, seed=3)
    await ingestor.start()  # the process starts again: its first session reads the last message again
    try:
        every = [e.event_id for e in first + second]
        await wait_until(lambda: log.end_offset == 11, what="the rest of the torn message")
        assert [event.event_id for _, event in log.read_from(0, 100)] == every
        await wait_until(lambda: ingestor.counters.stored == 4, what="the 4 missing events counted")
        assert ingestor.counters.duplicates == 2 and log.last_stream_sequence == ack.seq
        assert log.offset_after_stream_sequence(ack.seq, second[1].event_id) == 7
    finally:
        await ingestor.close()
        log.close()
        await client.close()
