"""NATS publisher: streams spooled reward events into a JetStream stream and trims the spool on publish acks.

The ``nats`` implementation of the reward transport (``transport.RewardTransport``; ``publisher.py`` is
the ``grpc`` one). Owns one broker connection at a time, the reconnect loop (``barp_sidecar/backoff.py``),
the broker state shown in ``barp_event_broker_state`` and the ``event_broker_*`` log lines, and resending
everything not yet acknowledged. Each event is published with ``Nats-Msg-Id`` = its event id, so a resend
after a crash or a lost ack is dropped by JetStream within the stream's duplicate window (and by the
trainer's log after it). The spool trims an event only after JetStream acknowledged it as stored.
Knows nothing about how events are built or consumed.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from typing import Any

import structlog

from barp_sidecar.backoff import ReconnectBackoff
from barp_sidecar.broker.nats_connection import (
    BrokerAuthFailed,
    BrokerUnavailable,
    NatsConnector,
    ensure_event_streams,
)
from barp_sidecar.rewards.publisher import PublisherCounters
from barp_sidecar.rewards.spool import RewardSpool
from barp_sidecar.tasks import cancel_and_wait

log = structlog.get_logger("barp_sidecar.rewards.nats_publisher")

MSG_ID_HEADER = "Nats-Msg-Id"
BROKER_STATES = ("connecting", "connected", "unreachable", "auth_failed")


class NatsRewardPublisher:
    """Publishes the spool to JetStream in order, up to ``max_batches_in_flight`` batches of
    ``batch_events`` awaiting their acks; the spool is trimmed batch by batch, in order. start/close."""

    def __init__(
        self,
        spool: RewardSpool,
        connector: NatsConnector,
        batch_events: int = 256,
        max_batches_in_flight: int = 4,
        seed: int | None = None,
    ) -> None:
        s = connector.settings
        self.spool = spool
        self.connector = connector
        self.settings = s
        self.batch_events = batch_events
        self.max_batches_in_flight = max_batches_in_flight
        self.counters = PublisherCounters()
        self.duplicates = 0
        self.connect_failures = 0
        self.connected = False
        self.state = "connecting"
        self._backoff = ReconnectBackoff(
            s.reconnect_initial_backoff_s, s.reconnect_max_backoff_s, random.Random(seed)
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="nats-reward-publisher")

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def drain(self, timeout_s: float) -> bool:
        """Wait until everything durable in the spool is acknowledged by JetStream."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self.spool.acked_sequence < self.spool.durable_sequence:
            if asyncio.get_running_loop().time() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def _set_state(self, state: str, **fields: Any) -> None:
        changed = state != self.state
        self.state = state
        self.connected = state == "connected"
        if state == "connected":
            log.info(
                "event_broker_connected",
                urls=list(self.settings.nats_urls),
                stream=self.settings.stream,
                **fields,
            )
        elif changed or state == "auth_failed":
            level = log.error if state == "auth_failed" else log.warning
            level(
                f"event_broker_{state}",
                urls=list(self.settings.nats_urls),
                unacked_events=self.spool.unacked_events,
                **fields,
            )

    async def _run(self) -> None:
        while True:
            acked_before = self.spool.acked_sequence
            try:
                client = await self.connector.connect()
            except BrokerAuthFailed as exc:
                self.connect_failures += 1
                self._set_state("auth_failed", error=str(exc))
            except BrokerUnavailable as exc:
                self.connect_failures += 1
                self._set_state("unreachable", error=str(exc))
            else:
                try:
                    await self._session(client)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.counters.session_failures += 1
                    self._set_state("unreachable", error=repr(exc), phase="publishing")
                finally:
                    self.connected = False
                    await _close_quietly(client)
            await asyncio.sleep(self._backoff.next_delay_s(self.spool.acked_sequence > acked_before))

    async def _session(self, client: Any) -> None:
        """Publish until the connection fails (always by raising)."""
        js = client.jetstream(timeout=self.settings.publish_timeout_s)
        await ensure_event_streams(js, self.settings)
        self.counters.sessions += 1
        self._set_state("connected", acked_sequence=self.spool.acked_sequence)
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


async def _close_quietly(client: Any) -> None:
    try:
        await asyncio.wait_for(client.close(), 2.0)
    except Exception as exc:  # closing a broken connection may fail in many ways; it is gone either way
        log.debug("event_broker_close_failed", error=repr(exc))
