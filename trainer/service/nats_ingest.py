"""NATS ingestion: the trainer's durable JetStream consumer feeding its event log.

The ``nats`` counterpart of ``TrainerServicer.PublishRewards``. Owns one durable pull consumer
(``events.consumer``) on the reward stream (the reconnect loop is ``broker.session_loop``'s), validation
(the same ``event_problem`` as the gRPC path), dead-lettering and acknowledgement. A fetched batch is
appended to the ``EventLog`` (fsync'd, de-duplicated by event id) *before* any of its messages is
acknowledged, so a crash between the two redelivers them and the log drops the repeats. A message holds
one event or a batch of them (``barp_sidecar.rewards.event_messages``: a header says which); a batch's
events are appended together, all with the message's stream sequence. A message that is not reward
events (undecodable, a bad batch, no or a different ``Nats-Msg-Id``) is copied to
``events.dead_letter_subject`` with the reason in a ``Barp-Dead-Reason`` header, and so is an event
failing validation (alone, from a batch); counted and acknowledged: it never stops the consumer or
crashes the trainer.

The log follows the stream's order (what trainer replicas resume by, docs/learning.md §10): each stored
event carries its stream sequence, every session starts a fresh consumer right after the log's last
one, and ``StreamOrder`` stops at the first delivery out of turn (a gap in the consumer's delivery
sequence: a message delivered but never received, which JetStream would redeliver after newer ones),
restarting the consumer there. Messages at or below the position (redeliveries) are acknowledged and
skipped.

Decision (docs/learning.md §8): the stream feeds the trainer's log rather than being it. Knows nothing
about learning (the training loop reads the log).
"""

from __future__ import annotations

import asyncio
import importlib
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from barp_sidecar.broker.nats_connection import NatsConnector, ensure_event_streams
from barp_sidecar.broker.session_loop import BrokerSessionLoop
from barp_sidecar.gen.barp.v1 import trainer_pb2
from barp_sidecar.rewards.event_messages import (
    EVENT_COUNT_HEADER,
    MSG_ID_HEADER,
    MalformedMessage,
    unpack_message,
)
from trainer.service.eventlog import SegmentedEventLog
from trainer.service.model_pool import PoolHistory
from trainer.service.nats_pull import PullBatches
from trainer.service.validation import event_problem

log = structlog.get_logger("trainer.service.nats_ingest")

__all__ = ["MSG_ID_HEADER", "NatsEventIngestor", "StreamOrder", "fetch_available"]
DEAD_REASON_HEADER = "Barp-Dead-Reason"
# Messages fetched but not acknowledged (a trainer killed between fetch and ack) are redelivered after
# this long; an ack follows the log's fsync within milliseconds, so this only bounds crash recovery.
ACK_WAIT_S = 10.0


@dataclass
class NatsIngestCounters:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    redelivered: int = 0  # at or below the stream position already stored: acknowledged, skipped
    consumer_restarts: int = 0  # deliveries out of turn: the consumer restarted after the position
    dead_lettered: Counter[str] = field(default_factory=Counter)


class StreamOrder:
    """Admits one consumer's deliveries in stream order. ``position``: the stream sequence of the last
    message admitted; the consumer was created to start right after it, so its deliveries are numbered
    1, 2, … (``sequence.consumer``, redeliveries included). A delivery with another number means one was
    lost on the way (it would come again after newer messages): admission stops there."""

    def __init__(self, position: int) -> None:
        self.position = position
        self.next_delivery = 1

    def admit(self, messages: list[Any]) -> tuple[list[Any], list[Any], bool]:
        """(new messages in stream order, redeliveries of admitted ones, whether a delivery was out of
        turn: the messages from it on are neither, and the consumer must restart after ``position``)."""
        fresh: list[Any] = []
        repeated: list[Any] = []
        for msg in messages:
            sequence = msg.metadata.sequence
            if sequence.consumer != self.next_delivery:
                return fresh, repeated, True
            self.next_delivery += 1
            if sequence.stream <= self.position:
                repeated.append(msg)
            else:
                self.position = sequence.stream
                fresh.append(msg)
        return fresh, repeated, False


async def fetch_available(batches: PullBatches, timeout_s: float) -> list[Any]:
    """The next delivered messages, in delivery order ([] when none came within ``timeout_s``): the one
    place the session receives messages (tests wrap it to lose a delivery on the way)."""
    return await batches.next_batch(timeout_s)


class NatsEventIngestor(BrokerSessionLoop):
    """Durable consumer -> ``EventLog``. ``start()`` / ``close()``; ``connected`` and counters for metrics."""

    task_name = "nats-event-ingest"
    log_prefix = "event_broker"

    def __init__(
        self,
        connector: NatsConnector,
        event_log: SegmentedEventLog,
        models: tuple[str, ...],
        embedding_dim: int,
        max_batch_events: int = 1024,
        fetch_timeout_s: float = 1.0,
        seed: int | None = None,
        consumer: str | None = None,
        history: PoolHistory | None = None,
        learn_models: Callable[[Any, int], Awaitable[bool]] | None = None,
    ) -> None:
        """``consumer``: the durable consumer's name (default ``events.consumer``; each trainer replica
        of a failover pair has its own, so each keeps a whole copy of the stream). ``history``: each
        published version's model list (events decided before a pool change stay valid).
        ``learn_models(js, version)``: records an unknown version's model list in ``history`` (trainer
        failover: versions another replica published), asked once per version before its events are
        validated."""
        super().__init__(connector, seed)
        self.consumer = consumer or connector.settings.consumer
        self.event_log = event_log
        self.history = history
        self.decided_with = history.decided_with if history is not None else None
        self.learn_models = learn_models if history is not None else None
        self.position = 0  # stream sequence of the last message stored (or dead-lettered)
        self.stream_identity = ""  # the stream incarnation ``position`` counts in
        self.models = models
        self.embedding_dim = embedding_dim
        self.max_batch_events = max_batch_events
        self.fetch_timeout_s = fetch_timeout_s
        self.counters = NatsIngestCounters()

    def progress(self) -> int:
        return self.counters.received

    async def session(self, client: Any) -> None:
        api = importlib.import_module("nats.js.api")
        s = self.settings
        js = client.jetstream(timeout=s.publish_timeout_s)
        await ensure_event_streams(js, s)
        order, subscription = await self._subscribe(js, api)
        self.set_state("connected", stream=s.stream, consumer=self.consumer, stream_sequence=self.position)
        # One batch at a time is admitted, validated, appended (fsync) and acknowledged; the next one
        # streams in meanwhile (nats_pull: an outstanding pull request answered into a callback).
        batches = await self._pull(client)
        try:
            while True:
                if not client.is_connected:
                    raise ConnectionError("the NATS connection closed")
                messages = await fetch_available(batches, self.fetch_timeout_s)
                if not messages:
                    # Idle: make sure the consumer still exists (a deleted stream takes it along silently).
                    await subscription.consumer_info()
                    continue
                fresh, repeated, out_of_turn = order.admit(messages)
                valid = await self._validate(js, fresh)
                await self._store_and_ack(valid, fresh, repeated)
                if out_of_turn:
                    self.counters.consumer_restarts += 1
                    log.warning(
                        "event_consumer_restarted", reason="delivery out of turn", position=self.position
                    )
                    await batches.close()  # drops the pull in flight and what it delivered, unacknowledged
                    await subscription.unsubscribe()
                    order, subscription = await self._subscribe(js, api)
                    batches = await self._pull(client)
        finally:
            await batches.close()

    async def _pull(self, client: Any) -> PullBatches:
        batches = PullBatches(
            client, self.settings.stream, self.consumer, self.max_batch_events, self.fetch_timeout_s
        )
        await batches.start()
        return batches

    async def _subscribe(self, js: Any, api: Any) -> tuple[StreamOrder, Any]:
        """A fresh durable consumer that starts right after ``position`` (at it in a process's first
        session, below). An existing one is deleted: its pending redeliveries would come after newer
        messages. A stream other than the one the log's
        sequences count in (deleted and recreated: its sequences start again) is read from its start
        (the log drops the events it already holds)."""
        s = self.settings
        errors = importlib.import_module("nats.js.errors")
        info = await js.stream_info(s.stream)
        identity = f"{s.stream}@{info.created.isoformat() if info.created else ''}"
        known, self.stream_identity = self.event_log.stream_identity, identity
        if await asyncio.to_thread(self.event_log.set_stream_identity, identity):
            if known:
                log.warning("event_stream_reset", position=self.position, previous=known, stream=identity)
            self.position = 0
        # The log's newest sequence, or a later one when dead-lettered messages followed it (this process).
        recovering = self.position == 0
        self.position = max(self.position, self.event_log.last_stream_sequence)
        # The first session of a process reads the log's last message again: a crash during its append
        # may have left only some of a batch message's events (the log keeps whole records); the log
        # drops those it holds. Later sessions follow appends that returned: they resume after it.
        start = self.position if recovering and self.position > 0 else self.position + 1
        try:
            await js.delete_consumer(s.stream, self.consumer)
        except errors.NotFoundError:
            pass
        config = api.ConsumerConfig(
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_wait=ACK_WAIT_S,
            max_ack_pending=8 * self.max_batch_events,
        )
        if start > 1:
            config.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = start
        subscription = await js.pull_subscribe(
            s.subject, durable=self.consumer, stream=s.stream, config=config
        )
        return StreamOrder(start - 1), subscription

    async def _validate(self, js: Any, messages: list[Any]) -> list[trainer_pb2.RewardEvent]:
        """The valid events of a fetch, in stream order (a batch message's in its order; all carry the
        message's stream sequence). A malformed message, or an invalid event of a message, is copied to
        the dead-letter subject (acknowledged by JetStream there) before the originals are acknowledged
        with the batch."""
        valid: list[trainer_pb2.RewardEvent] = []
        for msg in messages:
            sequence = msg.metadata.sequence.stream
            try:
                events = unpack_message(msg.data, msg.headers)
            except MalformedMessage as exc:
                await self._dead_letter(js, msg.data, exc.kind, str(exc), sequence, f"{sequence}")
                continue
            batch = len(events) > 1 or EVENT_COUNT_HEADER in (msg.headers or {})
            for index, event in enumerate(events):
                await self._learn_models_of(js, event)
                problem = event_problem(event, self.models, self.embedding_dim, self.decided_with)
                if problem is None:
                    event.stream_sequence = sequence
                    valid.append(event)
                    continue
                data = event.SerializeToString() if batch else msg.data
                await self._dead_letter(
                    js, data, "invalid", problem, sequence, f"{sequence}.{index}" if batch else f"{sequence}"
                )
        return valid

    async def _dead_letter(
        self, js: Any, data: bytes, kind: str, detail: str, sequence: int, position: str
    ) -> None:
        # Nats-Msg-Id: a second copy (a redelivery, another replica) is dropped by the server.
        await js.publish(
            self.settings.dead_letter_subject,
            data,
            headers={
                DEAD_REASON_HEADER: f"{kind}: {detail}"[:512],
                MSG_ID_HEADER: f"{self.stream_identity}-{position}",
            },
        )
        self.counters.dead_lettered[kind] += 1
        log.warning("reward_event_dead_lettered", kind=kind, reason=detail[:256], stream_sequence=sequence)

    async def _learn_models_of(self, js: Any, event: trainer_pb2.RewardEvent) -> None:
        """Records the model list of the version that decided ``event`` when it is not known here yet
        (failover: a version another replica published), so the event validates against it."""
        if self.learn_models is not None and self.history is not None:
            if not self.history.knows(event.policy_version):
                await self.learn_models(js, event.policy_version)

    async def _store_and_ack(
        self, valid: list[trainer_pb2.RewardEvent], messages: list[Any], repeated: list[Any]
    ) -> None:
        if valid:
            flags = await asyncio.to_thread(self.event_log.append, valid)
            stored = sum(flags)
            self.counters.stored += stored
            self.counters.duplicates += len(flags) - stored
        if messages:
            self.position = messages[-1].metadata.sequence.stream
        # Explicit acks, one per message: with AckPolicy.ALL an ack for a new message would also cover an
        # older one still waiting for redelivery after a crash, which was never stored.
        for msg in (*messages, *repeated):
            await msg.ack()
        self.counters.received += len(messages)
        self.counters.redelivered += len(repeated)
