"""NATS publisher: streams spooled reward events into a JetStream stream and trims the spool on publish acks.

The ``nats`` implementation of the reward transport (``transport.RewardTransport``; ``publisher.py`` is
the ``grpc`` one). Owns the publishing session: pipelined publishes, trimming in order, resending
everything not yet acknowledged after a reconnect (the reconnect loop, backoff and the broker state of
``barp_event_broker_state`` / ``event_broker_*`` log lines are ``broker.session_loop``'s). Each event
is published with ``Nats-Msg-Id`` = its event id, so a resend after a crash or a lost ack is dropped
by JetStream within the stream's duplicate window (and by the trainer's log after it). The spool trims
an event only after JetStream acknowledged it as stored. Knows nothing about how events are built or
consumed.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import structlog

from barp_sidecar.broker.nats_connection import NatsConnector, ensure_event_streams
from barp_sidecar.broker.session_loop import BrokerSessionLoop
from barp_sidecar.rewards.publisher import PublisherCounters
from barp_sidecar.rewards.spool import RewardSpool

log = structlog.get_logger("barp_sidecar.rewards.nats_publisher")

MSG_ID_HEADER = "Nats-Msg-Id"


class NatsRewardPublisher(BrokerSessionLoop):
    """Publishes the spool to JetStream in order, up to ``max_batches_in_flight`` batches of
    ``batch_events`` awaiting their acks; the spool is trimmed batch by batch, in order. start/close."""

    task_name = "nats-reward-publisher"
    log_prefix = "event_broker"

    def __init__(
        self,
        spool: RewardSpool,
        connector: NatsConnector,
        batch_events: int = 256,
        max_batches_in_flight: int = 4,
        seed: int | None = None,
    ) -> None:
        super().__init__(connector, seed)
        self.spool = spool
        self.batch_events = batch_events
        self.max_batches_in_flight = max_batches_in_flight
        self.counters = PublisherCounters()
        self.duplicates = 0

    def progress(self) -> int:
        return self.spool.acked_sequence

    async def drain(self, timeout_s: float) -> bool:
        """Wait until everything durable in the spool is acknowledged by JetStream."""
        return await self.spool.wait_all_acked(timeout_s)

    async def session(self, client: Any) -> None:
        """Publish until the connection fails (always by raising)."""
        js = client.jetstream(timeout=self.settings.publish_timeout_s)
        await ensure_event_streams(js, self.settings)
        self.set_state("connected", stream=self.settings.stream, acked_sequence=self.spool.acked_sequence)
        cursor = self.spool.acked_sequence
        # Batches whose publish acks are outstanding, oldest first: (last sequence, all their acks).
        in_flight: deque[tuple[int, asyncio.Future[list[Any]]]] = deque()
        try:
            while True:
                if not client.is_connected:
                    raise ConnectionError("the NATS connection closed")
                if in_flight and (in_flight[0][1].done() or len(in_flight) >= self.max_batches_in_flight):
                    await self._settle(in_flight.popleft())
                    continue
                batch = self.spool.read_after(cursor, self.batch_events)
                if not batch:
                    if in_flight:
                        await self._settle(in_flight.popleft())
                    else:
                        await self.spool.wait_durable_after(cursor, timeout_s=0.2)
                    continue
                futures = [
                    await js.publish_async(
                        self.settings.subject,
                        event.SerializeToString(),
                        headers={MSG_ID_HEADER: event.event_id},
                    )
                    for event in batch
                ]
                self.counters.sent += len(batch)
                in_flight.append((batch[-1].sequence, asyncio.ensure_future(asyncio.gather(*futures))))
                cursor = batch[-1].sequence
        finally:
            for _, pending in in_flight:
                pending.cancel()

    async def _settle(self, entry: tuple[int, asyncio.Future[list[Any]]]) -> None:
        """Wait for one batch's publish acks (in order), then trim the spool up to its last event."""
        last_sequence, acks = entry
        results = await asyncio.wait_for(acks, self.settings.publish_timeout_s)
        self.duplicates += sum(1 for ack in results if ack.duplicate)
        await self.spool.ack(last_sequence)
        self.counters.acked_sequence = self.spool.acked_sequence
