"""NATS publisher: streams spooled reward events into a JetStream stream and trims the spool on publish acks.

The ``nats`` implementation of the reward transport (``transport.RewardTransport``; ``publisher.py`` is
the ``grpc`` one). Owns the publishing session: pipelined publishes, trimming in order, resending
everything not yet acknowledged after a reconnect (the reconnect loop, backoff and the broker state of
``barp_event_broker_state`` / ``event_broker_*`` log lines are ``broker.session_loop``'s). Events go
up to ``events.max_events_per_message`` per message, never over the server's ``max_payload``
(``event_messages``: the format and its ``Nats-Msg-Id``), so a resend after a crash or a lost ack is
dropped by JetStream within the stream's duplicate window, and by the trainer's log (by event id) after
it or when its batch boundaries differ. The spool trims an event only after JetStream acknowledged the
message holding it as stored. Knows nothing about how events are built or consumed.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import structlog

from barp_sidecar.broker.nats_connection import NatsConnector, ensure_event_streams
from barp_sidecar.broker.session_loop import BrokerSessionLoop
from barp_sidecar.rewards.event_messages import HEADER_MARGIN_BYTES, MSG_ID_HEADER, pack_messages
from barp_sidecar.rewards.publisher import PublisherCounters
from barp_sidecar.rewards.spool import RewardSpool

log = structlog.get_logger("barp_sidecar.rewards.nats_publisher")

__all__ = ["MSG_ID_HEADER", "NatsRewardPublisher"]


class NatsRewardPublisher(BrokerSessionLoop):
    """Publishes the spool to JetStream in order, up to ``max_batches_in_flight`` batches of
    ``batch_events`` (each in messages of up to ``events.max_events_per_message``) awaiting their acks;
    the spool is trimmed batch by batch, in order. start/close."""

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
        self.duplicates = 0  # events of messages JetStream recognised as resent (by Nats-Msg-Id)
        self.messages_sent = 0

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
        max_events = self.settings.max_events_per_message
        max_bytes = max(1, client.max_payload - HEADER_MARGIN_BYTES)
        cursor = self.spool.acked_sequence
        # Batches whose publish acks are outstanding, oldest first: (last sequence, events per message,
        # all their messages' acks).
        in_flight: deque[tuple[int, list[int], asyncio.Future[list[Any]]]] = deque()
        try:
            while True:
                if not client.is_connected:
                    raise ConnectionError("the NATS connection closed")
                if in_flight and (in_flight[0][2].done() or len(in_flight) >= self.max_batches_in_flight):
                    await self._settle(in_flight)
                    continue
                batch = self.spool.read_after(cursor, self.batch_events)
                if not batch:
                    if in_flight:
                        await self._settle(in_flight)
                    else:
                        await self.spool.wait_durable_after(cursor, timeout_s=0.2)
                    continue
                messages = pack_messages(batch, max_events, max_bytes)
                futures = [
                    await js.publish_async(self.settings.subject, message.payload, headers=message.headers)
                    for message in messages
                ]
                self.counters.sent += len(batch)
                self.messages_sent += len(messages)
                sizes = [message.events for message in messages]
                in_flight.append((batch[-1].sequence, sizes, asyncio.ensure_future(asyncio.gather(*futures))))
                cursor = batch[-1].sequence
        finally:
            for _, _, pending in in_flight:
                pending.cancel()

    async def _settle(self, in_flight: deque[tuple[int, list[int], asyncio.Future[list[Any]]]]) -> None:
        """Wait for the publish acks of the oldest batch's messages, take every later batch whose acks are
        already in, and trim the spool once, up to the last event of those batches (one ``ACKED`` write
        for all of them, rather than one per batch)."""
        last_sequence = 0
        while in_flight and (last_sequence == 0 or in_flight[0][2].done()):
            batch_last, sizes, acks = in_flight[0]
            async with asyncio.timeout(self.settings.publish_timeout_s):
                results = await asyncio.shield(acks)
            in_flight.popleft()
            self.duplicates += sum(size for size, ack in zip(sizes, results, strict=True) if ack.duplicate)
            last_sequence = batch_last
        await self.spool.ack(last_sequence)
        self.counters.acked_sequence = self.spool.acked_sequence
