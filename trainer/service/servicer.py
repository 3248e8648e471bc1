"""Trainer gRPC servicer: PublishRewards (ingestion with durable acks), WatchPolicy, FetchPolicy.

Owns the wire side only: batching a stream's events per fsync, validating them, acknowledging, and
streaming announcements and checkpoint files. Storage is the ``EventLog``; policies come from the
``CheckpointStore`` and the ``PolicyAnnouncer``.

PublishRewards is a bidirectional stream (not the "client stream" of DESIGN §3): the trainer must keep
acknowledging durable sequence numbers while the sidecar keeps streaming, so the sidecar can trim its
spool without closing the stream. Every ack covers a whole batch: all of its events are durable (fsync'd)
or rejected (named in ``rejected_reasons``) before ``durable_sequence`` moves past them.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import structlog
from opentelemetry.trace import NoOpTracer, Tracer

from barp_sidecar.errors import InvalidArgument, NotFound
from barp_sidecar.gen.barp.v1 import trainer_pb2, trainer_pb2_grpc
from barp_sidecar.policy.calibration import CALIBRATION_FILE
from barp_sidecar.policy.checkpoint import MANIFEST_FILE, WEIGHTS_FILE, CheckpointStore
from barp_sidecar.tracing import logged_with
from trainer.service.eventlog import EventLog
from trainer.service.model_pool import PoolHistory
from trainer.service.policy_source import PolicyAnnouncer
from trainer.service.validation import event_problem

log = structlog.get_logger("trainer.service.servicer")


@dataclass
class IngestCounters:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    acks: int = 0
    streams_open: int = 0


class TrainerServicer(trainer_pb2_grpc.TrainerServicer):
    def __init__(
        self,
        event_log: EventLog,
        store: CheckpointStore,
        announcer: PolicyAnnouncer,
        models: tuple[str, ...],
        embedding_dim: int,
        chunk_bytes: int = 1 << 20,
        max_batch_events: int = 1024,
        tracer: Tracer | None = None,
        history: PoolHistory | None = None,
    ) -> None:
        """``history``: each published version's model list (events decided before a pool change stay
        valid)."""
        self.event_log = event_log
        self.decided_with = history.decided_with if history is not None else None
        self.store = store
        self.announcer = announcer
        self.models = models
        self.embedding_dim = embedding_dim
        self.chunk_bytes = chunk_bytes
        self.max_batch_events = max_batch_events
        self.counters = IngestCounters()
        self._tracer = tracer or NoOpTracer()
        # One writer at a time: the log's fsync is the bottleneck; concurrent streams queue here.
        self._append_lock = asyncio.Lock()

    async def PublishRewards(
        self,
        request_iterator: AsyncIterator[trainer_pb2.RewardEvent],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[trainer_pb2.PublishAck]:
        queue: asyncio.Queue[trainer_pb2.RewardEvent | None] = asyncio.Queue(
            maxsize=4 * self.max_batch_events
        )

        async def read() -> None:
            try:
                async for event in request_iterator:
                    await queue.put(event)
            finally:
                await queue.put(None)

        reader = asyncio.get_running_loop().create_task(read(), name="publish-rewards-reader")
        self.counters.streams_open += 1
        try:
            finished = False
            while not finished:
                first = await queue.get()
                if first is None:
                    break
                batch = [first]
                while len(batch) < self.max_batch_events and not queue.empty():
                    item = queue.get_nowait()
                    if item is None:
                        finished = True
                        break
                    batch.append(item)
                yield await self._ingest(batch)
            reader.result() if reader.done() else None
        finally:
            self.counters.streams_open -= 1
            reader.cancel()
            try:
                await reader
            except (asyncio.CancelledError, grpc.aio.AioRpcError):
                pass

    async def _ingest(self, batch: list[trainer_pb2.RewardEvent]) -> trainer_pb2.PublishAck:
        """One acknowledged batch, in a ``barp.trainer.ingest`` span (validation, durable append)."""
        with (
            self._tracer.start_as_current_span("barp.trainer.ingest", record_exception=True) as span,
            logged_with(span),
        ):
            ack = await self._ingest_batch(batch)
            span.set_attributes(
                {
                    "barp.sidecar_id": batch[0].sidecar_id,
                    "barp.events": len(batch),
                    "barp.rejected": len(ack.rejected_sequences),
                    "barp.durable_sequence": ack.durable_sequence,
                }
            )
            return ack

    async def _ingest_batch(self, batch: list[trainer_pb2.RewardEvent]) -> trainer_pb2.PublishAck:
        ack = trainer_pb2.PublishAck()
        valid = []
        for event in batch:
            problem = event_problem(event, self.models, self.embedding_dim, self.decided_with)
            if problem is None:
                event.ClearField("stream_sequence")  # only a broker-fed log records one
                valid.append(event)
            else:
                ack.rejected_sequences.append(event.sequence)
                ack.rejected_reasons.append(problem)
                log.warning(
                    "reward_event_rejected",
                    sidecar_id=event.sidecar_id,
                    sequence=event.sequence,
                    event_id=event.event_id[:64],
                    reason=problem,
                )
        if valid:
            async with self._append_lock:
                flags = await asyncio.to_thread(self.event_log.append, valid)
            stored = sum(flags)
            self.counters.stored += stored
            self.counters.duplicates += len(flags) - stored
        self.counters.received += len(batch)
        self.counters.rejected += len(ack.rejected_sequences)
        self.counters.acks += 1
        ack.durable_sequence = max(event.sequence for event in batch)
        return ack

    async def WatchPolicy(
        self, request: trainer_pb2.WatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[trainer_pb2.PolicyAnnouncement]:
        log.info(
            "policy_watch_opened", sidecar_id=request.sidecar_id, current_version=request.current_version
        )
        seen = -1
        current = self.announcer.current
        # Announce the current version at once (even if the sidecar claims it: it compares sha256).
        while True:
            if current is not None and current.version != seen:
                seen = current.version
                yield trainer_pb2.PolicyAnnouncement(
                    version=current.version,
                    weights_sha256=current.weights_sha256,
                    size_bytes=current.size_bytes,
                    arms=list(current.models),  # trainer.proto field name
                )
            current = await self.announcer.wait_newer(seen)
            if current is None:
                return

    async def FetchPolicy(
        self, request: trainer_pb2.FetchPolicyRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[trainer_pb2.CheckpointChunk]:
        if request.version <= 0:
            raise InvalidArgument("version", "must be >= 1")
        directory = self.store.path(request.version)
        if request.version not in self.store.versions():
            raise NotFound(f"version: policy v{request.version} is not published")
        for name in (MANIFEST_FILE, WEIGHTS_FILE, CALIBRATION_FILE):
            path = directory / name
            if name == CALIBRATION_FILE and not (
                request.include_calibration and await asyncio.to_thread(path.is_file)
            ):
                continue  # not asked for (an older sidecar), or a checkpoint written before sets existed
            data = await asyncio.to_thread(path.read_bytes)
            digest = hashlib.sha256(data).hexdigest()
            offset = 0
            while True:
                piece = data[offset : offset + self.chunk_bytes]
                last = offset + len(piece) >= len(data)
                yield trainer_pb2.CheckpointChunk(
                    file_name=name, offset=offset, data=piece, file_sha256=digest if last else ""
                )
                offset += len(piece)
                if last:
                    break
