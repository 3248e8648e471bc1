"""The durable reward spool: reward events on local disk until the trainer acknowledges them.

Owns the spool directory, sequence numbers, group fsync, the disk quota, recovery after a crash and
trimming on acknowledgement. Knows nothing about gRPC (the publisher streams what it hands out) or about
how events are built (the outcome recorder does that).

Layout: ``segment-<first sequence, 20 digits>.spool`` files of framed ``barp.v1.RewardEvent`` records
(see ``records.py``) plus ``ACKED``, the highest sequence the trainer acknowledged as durable.

Guarantees:
- ``append`` returns only after the record is fsync'd; fsyncs are grouped (``fsync_interval_ms``) so many
  concurrent appends share one. An event "counts as recorded" only when ``append`` returned.
- Sequences are strictly increasing per spool, also across restarts (``ACKED`` remembers the floor).
- A crash may leave a torn last record: ``start`` detects it (short header/payload or CRC mismatch),
  truncates the file there and keeps every whole record before it.
- Beyond ``max_bytes`` on disk, ``append`` raises ``SpoolFull`` (a metric and a log line); nothing already
  appended is dropped. Segments are deleted only when every record in them is acknowledged.
"""

from __future__ import annotations

import asyncio
import bisect
import fcntl
import itertools
import os
import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from barp_sidecar.errors import ConfigError, ResourceExhausted
from barp_sidecar.gen.barp.v1 import trainer_pb2
from barp_sidecar.rewards.records import encode_record, scan_file, truncate_to_valid
from barp_sidecar.tasks import cancel_and_wait, wait_event

_SEGMENT = re.compile(r"^segment-(\d{20})\.spool$")
ACKED_FILE = "ACKED"
# Held (flock, exclusive) while a spool is open: two sidecars must never share one spool directory.
LOCK_FILE = "LOCK"

log = structlog.get_logger("barp_sidecar.rewards.spool")


class SpoolFull(ResourceExhausted):
    """The spool reached its disk quota; the event was not recorded."""


@dataclass
class _Segment:
    first_sequence: int
    path: Path
    last_sequence: int = 0
    size_bytes: int = 0
    # Only the active segment keeps its records in memory; sealed ones are read back from disk on demand.
    records: list[trainer_pb2.RewardEvent] | None = field(default=None, repr=False)


def _sequence_of(event: trainer_pb2.RewardEvent) -> int:
    return event.sequence


def segment_name(first_sequence: int) -> str:
    return f"segment-{first_sequence:020d}.spool"


class RewardSpool:
    """Append-only, fsync'd, quota-bounded spool of reward events. ``start()`` first, ``close()`` last."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        fsync_interval_ms: float,
        segment_max_bytes: int = 4 << 20,
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.fsync_interval_s = fsync_interval_ms / 1000.0
        self.segment_max_bytes = segment_max_bytes
        self._segments: list[_Segment] = []
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._next_sequence = 1
        self._written_sequence = 0
        self._durable_sequence = 0
        self._acked_sequence = 0
        self._total_bytes = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._dirty = asyncio.Event()
        self._durable_changed = asyncio.Event()
        self._to_close: list[int] = []
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        self.refused_total = 0
        self.torn_records_dropped = 0
        self._sealed_cache: tuple[int, list[trainer_pb2.RewardEvent]] | None = None

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self._recover)
        self._flusher = asyncio.get_running_loop().create_task(self._flush_loop(), name="spool-flusher")

    async def close(self) -> None:
        """Make everything appended durable, then stop. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._flusher is not None:
            self._dirty.set()
            await cancel_and_wait(self._flusher)
        await asyncio.to_thread(self._fsync_pending)
        self._resolve_waiters()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _lock_directory(self) -> None:
        """Take the directory's exclusive lock, or raise ConfigError naming the setting (nothing opened)."""
        fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(
                "rewards.spool_dir",
                f"{self.directory} is in use by another sidecar (each needs its own spool; set "
                "rewards.spool_dir or state.dir)",
            ) from None
        self._lock_fd = fd

    # -- state -----------------------------------------------------------------------------------------

    @property
    def durable_sequence(self) -> int:
        return self._durable_sequence

    @property
    def acked_sequence(self) -> int:
        return self._acked_sequence

    @property
    def size_bytes(self) -> int:
        return self._total_bytes

    @property
    def unacked_events(self) -> int:
        return self._durable_sequence - self._acked_sequence

    # -- writing ---------------------------------------------------------------------------------------

    async def append(self, event: trainer_pb2.RewardEvent) -> int:
        """Assign the next sequence to ``event``, write it, and return once it is fsync'd.

        Raises ``SpoolFull`` (the event is not recorded) when the disk quota would be exceeded.
        """
        if self._closed or self._flusher is None:
            raise RuntimeError("spool is not started or already closed")
        sequence = self._next_sequence
        event.sequence = sequence
        record = encode_record(event.SerializeToString())
        if self._total_bytes + len(record) > self.max_bytes:
            self.refused_total += 1
            log.error(
                "spool_full_event_refused",
                event_id=event.event_id,
                size_bytes=self._total_bytes,
                max_bytes=self.max_bytes,
                unacked_events=self.unacked_events,
            )
            raise SpoolFull(
                f"reward spool is full ({self._total_bytes} of {self.max_bytes} bytes); the trainer is not "
                "acknowledging events"
            )
        self._next_sequence += 1
        segment = self._active_segment(len(record), sequence)
        assert self._fd is not None
        os.write(self._fd, record)
        segment.last_sequence = sequence
        segment.size_bytes += len(record)
        assert segment.records is not None
        segment.records.append(event)
        self._total_bytes += len(record)
        self._written_sequence = sequence
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((sequence, future))
        self._dirty.set()
        await asyncio.shield(future)
        return sequence

    def _active_segment(self, record_bytes: int, sequence: int) -> _Segment:
        active = self._segments[-1] if self._segments and self._segments[-1].records is not None else None
        if active is not None and active.size_bytes + record_bytes <= self.segment_max_bytes:
            return active
        if active is not None:
            active.records = None  # sealed: read back from disk when needed
            assert self._fd is not None
            self._to_close.append(self._fd)
        path = self.directory / segment_name(sequence)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        segment = _Segment(first_sequence=sequence, path=path, last_sequence=sequence - 1, records=[])
        self._segments.append(segment)
        return segment

    async def _flush_loop(self) -> None:
        while True:
            await self._dirty.wait()
            if self.fsync_interval_s > 0:
                await asyncio.sleep(self.fsync_interval_s)
            self._dirty.clear()
            await asyncio.to_thread(self._fsync_pending)
            self._resolve_waiters()

    def _fsync_pending(self) -> None:
        target = self._written_sequence
        closing, self._to_close = self._to_close, []
        for fd in closing:
            os.fsync(fd)
            os.close(fd)
        if self._fd is not None:
            os.fsync(self._fd)
        if closing:
            _fsync_dir(self.directory)
        self._durable_sequence = max(self._durable_sequence, target)

    def _resolve_waiters(self) -> None:
        while self._waiters and self._waiters[0][0] <= self._durable_sequence:
            _, future = self._waiters.popleft()
            if not future.done():
                future.set_result(None)
        self._durable_changed.set()

    # -- reading and trimming --------------------------------------------------------------------------

    def read_after(self, sequence: int, max_events: int) -> list[trainer_pb2.RewardEvent]:
        """Durable events with sequence > ``sequence``, in order, at most ``max_events``."""
        out: list[trainer_pb2.RewardEvent] = []
        for segment in self._segments:
            if segment.last_sequence <= sequence:
                continue
            records = segment.records if segment.records is not None else self._read_sealed(segment)
            # Records are in sequence order: start at the first one after ``sequence`` (a binary search,
            # so a publisher reading small batches near the end of a large active segment does not rescan it).
            start = bisect.bisect_right(records, sequence, key=_sequence_of)
            for event in itertools.islice(records, start, None):
                if event.sequence > self._durable_sequence:
                    return out
                out.append(event)
                if len(out) >= max_events:
                    return out
        return out

    def _read_sealed(self, segment: _Segment) -> list[trainer_pb2.RewardEvent]:
        if self._sealed_cache is not None and self._sealed_cache[0] == segment.first_sequence:
            return self._sealed_cache[1]
        events = [trainer_pb2.RewardEvent.FromString(p) for p in scan_file(segment.path).payloads]
        self._sealed_cache = (segment.first_sequence, events)
        return events

    async def wait_durable_after(self, sequence: int, timeout_s: float) -> None:
        """Return when an event with sequence > ``sequence`` is durable, or after ``timeout_s``."""
        if self._durable_sequence > sequence:
            return
        self._durable_changed.clear()
        await wait_event(self._durable_changed, timeout_s)

    async def wait_all_acked(self, timeout_s: float) -> bool:
        """Wait until every durable event is acknowledged (a publisher's drain); False after ``timeout_s``."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self._acked_sequence < self._durable_sequence:
            if asyncio.get_running_loop().time() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def ack(self, sequence: int) -> None:
        """The trainer made every event up to ``sequence`` durable: remember it, delete covered segments."""
        sequence = min(sequence, self._durable_sequence)
        if sequence <= self._acked_sequence:
            return
        self._acked_sequence = sequence
        removable = [s for s in self._segments[:-1] if s.last_sequence <= sequence and s.records is None]
        await asyncio.to_thread(self._persist_ack, sequence, [s.path for s in removable])
        for segment in removable:
            self._segments.remove(segment)
            self._total_bytes -= segment.size_bytes

    def _persist_ack(self, sequence: int, paths: list[Path]) -> None:
        temp = self.directory / f".{ACKED_FILE}.tmp"
        with open(temp, "w") as handle:
            handle.write(f"{sequence}\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, self.directory / ACKED_FILE)
        for path in paths:
            path.unlink(missing_ok=True)
        _fsync_dir(self.directory)

    # -- recovery --------------------------------------------------------------------------------------

    def _recover(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_directory()
        acked_path = self.directory / ACKED_FILE
        try:
            self._acked_sequence = int(acked_path.read_text().strip() or 0)
        except FileNotFoundError:
            self._acked_sequence = 0
        except ValueError:
            log.error("spool_acked_file_unreadable", path=str(acked_path))
            self._acked_sequence = 0
        last = self._acked_sequence
        found = sorted(
            (int(m.group(1)), entry)
            for entry in self.directory.iterdir()
            if (m := _SEGMENT.match(entry.name)) and entry.is_file()
        )
        for first, path in found:
            result = scan_file(path)
            if result.torn:
                self.torn_records_dropped += 1
                log.warning(
                    "spool_torn_record_dropped",
                    path=str(path),
                    problem=result.problem,
                    kept_bytes=result.valid_bytes,
                    dropped_bytes=result.file_bytes - result.valid_bytes,
                )
                truncate_to_valid(path, result)
            events = [trainer_pb2.RewardEvent.FromString(p) for p in result.payloads]
            if not events or events[-1].sequence <= self._acked_sequence:
                path.unlink()
                continue
            segment = _Segment(first, path, events[-1].sequence, result.valid_bytes, None)
            self._segments.append(segment)
            self._total_bytes += result.valid_bytes
            last = max(last, events[-1].sequence)
        _fsync_dir(self.directory)
        self._next_sequence = last + 1
        self._written_sequence = last
        self._durable_sequence = last
        if self._segments:
            log.info(
                "spool_recovered",
                unacked_events=last - self._acked_sequence,
                segments=len(self._segments),
                size_bytes=self._total_bytes,
            )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
