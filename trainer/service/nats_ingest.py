"""NATS ingestion: the trainer's durable JetStream consumer feeding its event log.

The ``nats`` counterpart of ``TrainerServicer.PublishRewards``. Owns one durable pull consumer
(``events.consumer``) on the reward stream (the reconnect loop is ``broker.session_loop``'s), validation
(the same ``event_problem`` as the gRPC path), dead-lettering and acknowledgement. A fetched batch is
appended to the ``EventLog`` (fsync'd, de-duplicated by event id) *before* any of its messages is
acknowledged, so a crash between the two redelivers them and the log drops the repeats. A message that is
not a reward event (undecodable, no or a different ``Nats-Msg-Id``, or failing validation) is copied to
``events.dead_letter_subject`` with the reason in a ``Barp-Dead-Reason`` header, counted, and
acknowledged: it never stops the consumer or crashes the trainer.

Decision (docs/learning.md §8): the stream feeds the trainer's log rather than being it. Knows nothing
about learning (the training loop reads the log).
"""

from __future__ import annotations

import asyncio
import importlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from google.protobuf.message import DecodeError

from barp_sidecar.broker.nats_connection import NatsConnector, ensure_event_streams
from barp_sidecar.broker.session_loop import BrokerSessionLoop
from barp_sidecar.gen.barp.v1 import trainer_pb2
from trainer.service.eventlog import EventLog
from trainer.service.model_pool import PoolHistory
from trainer.service.nats_pull import PullBatches
from trainer.service.validation import event_problem

log = structlog.get_logger("trainer.service.nats_ingest")

MSG_ID_HEADER = "Nats-Msg-Id"
DEAD_REASON_HEADER = "Barp-Dead-Reason"
# Messages fetched but not acknowledged (a trainer killed between fetch and ack) are redelivered after
# this long; an ack follows the log's fsync within milliseconds, so this only bounds crash recovery.
ACK_WAIT_S = 10.0


@dataclass
class NatsIngestCounters:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)


def classify(
    msg_data: bytes,
    headers: dict[str, str] | None,
    models: tuple[str, ...],
    embedding_dim: int,
    decided_with: Callable[[int], tuple[str, ...]] | None = None,
) -> tuple[trainer_pb2.RewardEvent | None, str, str]:
    """(event or None, dead-letter reason kind, detail). Pure: the consumer's whole notion of "malformed"."""
    try:
        event = trainer_pb2.RewardEvent.FromString(msg_data)
    except DecodeError as exc:
        return None, "undecodable", f"not a barp.v1.RewardEvent: {exc}"
    msg_id = (headers or {}).get(MSG_ID_HEADER)
    if not msg_id or msg_id != event.event_id:
        return None, "foreign", f"{MSG_ID_HEADER} {msg_id!r} does not match event_id {event.event_id[:64]!r}"
    problem = event_problem(event, models, embedding_dim, decided_with)
    if problem is not None:
        return None, "invalid", problem
    return event, "", ""


class NatsEventIngestor(BrokerSessionLoop):
    """Durable consumer -> ``EventLog``. ``start()`` / ``close()``; ``connected`` and counters for metrics."""

    task_name = "nats-event-ingest"
    log_prefix = "event_broker"

    def __init__(
        self,
        connector: NatsConnector,
        event_log: EventLog,
        models: tuple[str, ...],
        embedding_dim: int,
        max_batch_events: int = 1024,
        fetch_timeout_s: float = 1.0,
        seed: int | None = None,
        consumer: str | None = None,
        history: PoolHistory | None = None,
    ) -> None:
        """``consumer``: the durable consumer's name (default ``events.consumer``; each trainer replica
        of a failover pair has its own, so each keeps a whole copy of the stream). ``history``: each
        published version's model list (events decided before a pool change stay valid)."""
        super().__init__(connector, seed)
        self.consumer = consumer or connector.settings.consumer
        self.event_log = event_log
        self.decided_with = history.decided_with if history is not None else None
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
        subscription = await js.pull_subscribe(
            s.subject,
            durable=self.consumer,
            stream=s.stream,
            config=api.ConsumerConfig(
                ack_policy=api.AckPolicy.EXPLICIT,
                deliver_policy=api.DeliverPolicy.ALL,
                ack_wait=ACK_WAIT_S,
                max_ack_pending=8 * self.max_batch_events,
            ),
        )
        self.set_state("connected", stream=s.stream, consumer=self.consumer)
        # One batch at a time is validated, appended (fsync) and acknowledged; the next one streams in
        # meanwhile (nats_pull: an outstanding pull request answered into a callback).
        batches = PullBatches(client, s.stream, self.consumer, self.max_batch_events, self.fetch_timeout_s)
        await batches.start()
        try:
            while True:
                if not client.is_connected:
                    raise ConnectionError("the NATS connection closed")
                messages = await batches.next_batch(self.fetch_timeout_s)
                if not messages:
                    # Idle: make sure the consumer still exists (a deleted stream takes it along silently).
                    await subscription.consumer_info()
                    continue
                valid = await self._validate(js, messages)
                await self._store_and_ack(valid, messages)
        finally:
            await batches.close()

    async def _validate(self, js: Any, messages: list[Any]) -> list[trainer_pb2.RewardEvent]:
        """The valid events of a fetch; the others are copied to the dead-letter subject (acknowledged by
        JetStream there) before their originals are acknowledged with the batch."""
        valid: list[trainer_pb2.RewardEvent] = []
        for msg in messages:
            event, kind, detail = classify(
                msg.data, msg.headers, self.models, self.embedding_dim, self.decided_with
            )
            if event is not None:
                valid.append(event)
                continue
            await js.publish(
                self.settings.dead_letter_subject,
                msg.data,
                headers={DEAD_REASON_HEADER: f"{kind}: {detail}"[:512]},
            )
            self.counters.dead_lettered[kind] += 1
            log.warning(
                "reward_event_dead_lettered",
                kind=kind,
                reason=detail[:256],
                stream_sequence=msg.metadata.sequence.stream,
            )
        return valid

    async def _store_and_ack(self, valid: list[trainer_pb2.RewardEvent], messages: list[Any]) -> None:
        if valid:
            flags = await asyncio.to_thread(self.event_log.append, valid)
            stored = sum(flags)
            self.counters.stored += stored
            self.counters.duplicates += len(flags) - stored
        # Explicit acks, one per message: with AckPolicy.ALL an ack for a new message would also cover an
        # older one still waiting for redelivery after a crash, which was never stored.
        for msg in messages:
            await msg.ack()
        self.counters.received += len(messages)
