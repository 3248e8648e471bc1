"""Publisher: streams spooled reward events to the trainer and trims the spool on durable acks.

Owns the Trainer.PublishRewards session (a bidirectional stream: events go up, ``PublishAck``s with the
highest durable sequence come back continuously), reconnects with backoff, and resends everything not
yet acknowledged. Delivery is at-least-once; the trainer de-duplicates by event id. Knows nothing about
how events are built; the spool is its only source.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import grpc
import structlog

from barp_sidecar.backoff import ReconnectBackoff
from barp_sidecar.gen.barp.v1 import trainer_pb2_grpc
from barp_sidecar.rewards.spool import RewardSpool
from barp_sidecar.tasks import cancel_and_wait

log = structlog.get_logger("barp_sidecar.rewards.publisher")


@dataclass
class PublisherCounters:
    sent: int = 0
    acked_sequence: int = 0
    rejected: int = 0
    sessions: int = 0
    session_failures: int = 0


class RewardPublisher:
    """One long-lived PublishRewards session at a time. ``start()`` / ``close()``."""

    def __init__(
        self,
        spool: RewardSpool,
        channel: grpc.aio.Channel,
        initial_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        max_in_flight: int = 4096,
        batch_events: int = 256,
        seed: int | None = None,
    ) -> None:
        self.spool = spool
        self.channel = channel
        self.max_in_flight = max_in_flight
        self.batch_events = batch_events
        self.counters = PublisherCounters()
        self.connected = False
        self._backoff = ReconnectBackoff(initial_backoff_s, max_backoff_s, random.Random(seed))
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="reward-publisher")

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def drain(self, timeout_s: float) -> bool:
        """Wait until everything durable in the spool is acknowledged (used at shutdown and in tests)."""
        return await self.spool.wait_all_acked(timeout_s)

    async def _run(self) -> None:
        while True:
            acked_before = self.spool.acked_sequence
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                self.counters.session_failures += 1
                log.warning("trainer_publish_stream_failed", code=exc.code().name, details=exc.details())
            except Exception as exc:
                self.counters.session_failures += 1
                log.warning("trainer_publish_stream_failed", error=repr(exc))
            finally:
                self.connected = False
            # A session that made progress resets the schedule; a trainer that is down backs off.
            await asyncio.sleep(self._backoff.next_delay_s(self.spool.acked_sequence > acked_before))

    async def _session(self) -> None:
        """Run one stream until it fails (always by raising)."""
        stub = trainer_pb2_grpc.TrainerStub(self.channel)
        call = stub.PublishRewards()
        self.counters.sessions += 1
        receiver = asyncio.get_running_loop().create_task(self._receive(call), name="reward-acks")
        try:
            cursor = self.spool.acked_sequence
            while True:
                if receiver.done():
                    receiver.result()  # raises the stream's error
                    raise ConnectionError("trainer closed the PublishRewards stream")
                if cursor - self.spool.acked_sequence >= self.max_in_flight:
                    await asyncio.wait({receiver}, timeout=0.005)
                    continue
                batch = self.spool.read_after(cursor, self.batch_events)
                if not batch:
                    await self.spool.wait_durable_after(cursor, timeout_s=0.2)
                    continue
                for event in batch:
                    await call.write(event)
                    self.counters.sent += 1
                cursor = batch[-1].sequence
        finally:
            call.cancel()
            receiver.cancel()
            try:
                await receiver
            except (asyncio.CancelledError, grpc.aio.AioRpcError, ConnectionError):
                pass

    async def _receive(self, call: grpc.aio.StreamStreamCall) -> None:
        async for ack in call:
            if not self.connected:
                self.connected = True
                log.info("trainer_publish_connected", acked_sequence=ack.durable_sequence)
            for sequence, reason in zip(ack.rejected_sequences, ack.rejected_reasons, strict=False):
                self.counters.rejected += 1
                log.error("reward_event_rejected_by_trainer", sequence=sequence, reason=reason)
            await self.spool.ack(ack.durable_sequence)
            self.counters.acked_sequence = self.spool.acked_sequence
        raise ConnectionError("trainer ended the PublishRewards stream")
