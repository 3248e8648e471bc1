"""Trainer replicas keep the stream's order and resume each other by stream sequence (docs/learning.md §10).

Against a real ``nats-server -js``: a message JetStream delivered to replica a but that never reached a's
consumer code (lost on the way, as in a connection blip) is redelivered by JetStream after newer ones.
Replica a's log must still hold the stream in order (its consumer restarts after the last stored
sequence), equal to replica b's, and b resumes a version a published by its ``training.stream_sequence``
with no event lost and none trained twice. ``StreamOrder`` (the admission rule) is also tested alone.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from pathlib import Path

import nats

from barp_sidecar.broker.nats_connection import NatsConnector, ensure_event_streams
from barp_sidecar.broker.settings import EventsBackend, EventsSettings
from barp_sidecar.policy.checkpoint import CheckpointStore
from tests.learning_helpers import ARMS, DIM, random_event, trainer_settings_yaml
from tests.support.waiting import wait_until
from trainer.service import nats_ingest
from trainer.service.eventlog import SegmentedEventLog
from trainer.service.failover import resume_offset
from trainer.service.learner import is_holdout
from trainer.service.loop import TrainingLoop
from trainer.service.nats_ingest import MSG_ID_HEADER, NatsEventIngestor, StreamOrder
from trainer.service.policy_source import PolicyAnnouncer, starting_policy
from trainer.service.settings import load_trainer_settings

EVENTS = 240
LOST_SEQUENCE = 37  # the stream sequence whose first delivery to replica a is lost


@dataclass
class Sequence:
    stream: int
    consumer: int


@dataclass
class Metadata:
    sequence: Sequence


@dataclass
class FakeMessage:
    metadata: Metadata


def delivered(stream: int, consumer: int) -> FakeMessage:
    return FakeMessage(Metadata(Sequence(stream, consumer)))


def test_stream_order_admits_in_turn_skips_repeats_and_stops_at_a_delivery_out_of_turn():
    order = StreamOrder(position=10)
    fresh, repeated, out_of_turn = order.admit([delivered(11, 1), delivered(9, 2), delivered(14, 3)])
    assert [m.metadata.sequence.stream for m in fresh] == [11, 14]  # gaps in the stream are other subjects
    assert [m.metadata.sequence.stream for m in repeated] == [9]
    assert not out_of_turn and order.position == 14
    # Delivery 4 never arrived (it would come again later, after 16): stop before 16.
    fresh, repeated, out_of_turn = order.admit([delivered(16, 5), delivered(17, 6)])
    assert (fresh, repeated, out_of_turn) == ([], [], True)
    assert order.position == 14


def settings(url: str) -> EventsSettings:
    return EventsSettings(
        backend=EventsBackend.NATS,
        nats_urls=(url,),
        reconnect_initial_backoff_s=0.05,
        reconnect_max_backoff_s=0.3,
        connect_timeout_s=1.0,
    )


async def publish_events(s: EventsSettings, count: int) -> list[str]:
    client = await nats.connect(list(s.nats_urls))
    try:
        js = client.jetstream()
        await ensure_event_streams(js, s)
        rng, ids = random.Random(7), []
        for _ in range(count):
            event = random_event(rng)
            await js.publish(s.subject, event.SerializeToString(), headers={MSG_ID_HEADER: event.event_id})
            ids.append(event.event_id)
        return ids
    finally:
        await client.close()


def logged(log: SegmentedEventLog) -> list[tuple[str, int]]:
    return [(e.event_id, e.stream_sequence) for _, e in log.read_from(0, 1_000_000)]


def loop_on(tmp_path: Path, log: SegmentedEventLog) -> TrainingLoop:
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = tmp_path / "trainer.yaml"
    config.write_text(trainer_settings_yaml(tmp_path / "data", every_events=10_000, every_s=600))
    s = load_trainer_settings(config, {"BARP_TRAINER__PUBLISH__GATE_MARGIN": "1.0"})  # the gate passes
    store = CheckpointStore(s.checkpoints_dir)
    loop = TrainingLoop(
        log,
        store,
        PolicyAnnouncer(),
        starting_policy(s.learner, store),
        s.learner,
        s.publish,
        clock=lambda: 0,
    )
    loop.ensure_published()
    return loop


async def test_a_lost_delivery_keeps_both_logs_in_stream_order_and_the_takeover_exact(
    tmp_path, broker, monkeypatch
):
    monkeypatch.setattr(nats_ingest, "ACK_WAIT_S", 1.0)  # JetStream redelivers the lost message after 1 s
    real_fetch = nats_ingest.fetch_available
    lost: list[int] = []

    async def losing_fetch(batches, timeout_s):
        messages = await real_fetch(batches, timeout_s)
        keep = []
        for msg in messages:
            if msg.metadata.consumer.endswith("-a") and msg.metadata.sequence.stream == LOST_SEQUENCE:
                if not lost:
                    lost.append(msg.metadata.sequence.consumer)
                    continue  # delivered by the server, never seen by the consumer code
            keep.append(msg)
        return keep

    monkeypatch.setattr(nats_ingest, "fetch_available", losing_fetch)
    s = settings(broker.url)
    ids = await publish_events(s, EVENTS)
    logs = {r: SegmentedEventLog(tmp_path / f"events-{r}").open() for r in ("a", "b")}
    ingestors = {
        r: NatsEventIngestor(
            NatsConnector(s, {}, f"trainer-{r}"), log, ARMS, DIM, consumer=f"barp-trainer-{r}"
        )
        for r, log in logs.items()
    }
    try:
        for ingestor in ingestors.values():
            await ingestor.start()
        await wait_until(
            lambda: all(log.end_offset == EVENTS for log in logs.values()), what="both logs full"
        )
        await asyncio.sleep(1.5)  # past the ack wait: a late redelivery would show up now
        a, b = logged(logs["a"]), logged(logs["b"])
        assert lost, "the test did not lose a delivery"
        assert ingestors["a"].counters.consumer_restarts >= 1
        # Both logs are the stream, in stream order, event for event.
        assert [i for i, _ in a] == ids and a == b
        assert [seq for _, seq in a] == list(range(1, EVENTS + 1))
        assert ingestors["a"].position == ingestors["b"].position == EVENTS

        # Replica a trains part of its log and publishes; b takes over from that version.
        loop = loop_on(tmp_path / "a", logs["a"])
        for _ in range(2):
            await asyncio.to_thread(loop.step)
        assert await asyncio.to_thread(loop.evaluate_and_maybe_publish) is not None
        training = loop.manifest.training
        trained_until = training["log_offset"]
        assert 0 < trained_until < EVENTS
        assert training["stream_sequence"] == a[trained_until - 1][1]
        resumed = await resume_offset(logs["b"], loop.manifest, wait_s=5.0)
        assert resumed == trained_until

        def trainable(entries):
            return [i for i, _ in entries if not is_holdout(i, loop.learner_settings.holdout_every)]

        by_a, by_b = trainable(a[:trained_until]), trainable(b[resumed:])
        assert training["events_trained"] == len(by_a)
        assert not set(by_a) & set(by_b), "an event would be trained twice"
        assert sorted(by_a + by_b) == sorted(trainable(a)), "an event would be lost"
    finally:
        for ingestor in ingestors.values():
            await ingestor.close()
        for log in logs.values():
            log.close()
