"""The trainer's durable event log: append-only segments of reward events, de-duplicated by event id.

Owns the log's files, offsets, fsync-before-ack, de-duplication and retention. ``EventLog`` is the small
interface the rest of the trainer uses, so the log can move to a real broker (Kafka, Redis Streams) later
(DESIGN §7): ingestion only needs ``append`` and the learner only ``read_from``.

Layout: ``data_dir/events/events-<first offset, 20 digits>.log`` of framed serialized ``barp.v1.RewardEvent``
records (``barp_sidecar.rewards.records``: magic, length, CRC32, payload). Offsets are global record
indices (0-based) that never repeat, also across retention. A torn tail left by a crash is truncated at
open, keeping every whole record before it.

Stream positions: an event fed from a broker carries its position there (``RewardEvent.stream_sequence``,
the JetStream stream sequence; 0 for PublishRewards), written inside the record, so it is as durable as
the event. The NATS consumer appends in stream order (``nats_ingest.py``), so the positions grow along
the log; ``last_stream_sequence`` is where the consumer resumes and ``offset_after_stream_sequence`` is
where a trainer replica resumes training after a version another replica published (``failover.py``).
Sequences count in one incarnation of the stream (a deleted and recreated stream starts again at 1): the
file ``stream`` records which one (``stream_identity``, set by the consumer) and the offset from which
the log's records carry its sequences; positions are only compared within it.

Thread-safety: all methods take one lock; they block (fsync, file reads) and are called from worker
threads, never from the event loop.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog

from barp_sidecar.gen.barp.v1 import trainer_pb2
from barp_sidecar.rewards.records import encode_record, iter_records, scan_bytes, truncate_to_valid

_SEGMENT = re.compile(r"^events-(\d{20})\.log$")
STREAM_FILE = "stream"
log = structlog.get_logger("trainer.service.eventlog")


class EventLog(Protocol):
    """What the trainer needs from an event log (file segments today, a broker tomorrow)."""

    def append(self, events: Sequence[trainer_pb2.RewardEvent]) -> list[bool]:
        """Store the events not seen before (by ``event_id``); durable when this returns.

        Returns one flag per event: True = stored now, False = duplicate (already stored)."""
        ...

    def read_from(self, offset: int, max_events: int) -> list[tuple[int, trainer_pb2.RewardEvent]]:
        """Stored (offset, event) pairs with offset >= ``offset``, in order, at most ``max_events``."""
        ...

    @property
    def end_offset(self) -> int:
        """Offset the next stored event will get."""
        ...

    def stream_identity_at(self, offset: int) -> str:
        """The stream incarnation whose sequences the record at ``offset`` carries ("" when unknown)."""
        ...

    def close(self) -> None: ...


@dataclass
class _Segment:
    first_offset: int
    path: Path
    created_unix_s: float
    size_bytes: int = 0
    # Byte position of each record (for seeking) and its event id (for retention of the id set).
    positions: list[int] = field(default_factory=list, repr=False)
    event_ids: list[str] = field(default_factory=list, repr=False)
    # Each record's stream sequence (0: not from a broker).
    stream_sequences: list[int] = field(default_factory=list, repr=False)

    @property
    def end_offset(self) -> int:
        return self.first_offset + len(self.positions)


def segment_name(first_offset: int) -> str:
    return f"events-{first_offset:020d}.log"


class SegmentedEventLog:
    """File-segment implementation of ``EventLog``. Call ``open()`` before use and ``close()`` after."""

    def __init__(
        self,
        directory: Path,
        segment_max_bytes: int = 16 << 20,
        retention_max_bytes: int = 4 << 30,
        retention_max_age_s: float = 7 * 24 * 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = Path(directory)
        self.segment_max_bytes = segment_max_bytes
        self.retention_max_bytes = retention_max_bytes
        self.retention_max_age_s = retention_max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._ids: set[str] = set()
        self._fd: int | None = None
        self._total_bytes = 0
        self.torn_records_dropped = 0
        self.duplicates_total = 0
        self._last_stream_sequence = 0
        self._stream_identity = ""
        self._stream_from_offset = 0

    # -- lifecycle -------------------------------------------------------------------------------------

    def open(self) -> SegmentedEventLog:
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            found = sorted(
                (int(m.group(1)), entry)
                for entry in self.directory.iterdir()
                if (m := _SEGMENT.match(entry.name)) and entry.is_file()
            )
            self._read_stream_file()
            for first, path in found:
                self._segments.append(self._recover_segment(first, path))
            if self._segments:
                last = self._segments[-1]
                self._fd = os.open(last.path, os.O_WRONLY | os.O_APPEND)
                log.info(
                    "event_log_opened",
                    segments=len(self._segments),
                    events=len(self._ids),
                    end_offset=last.end_offset,
                )
        return self

    def _recover_segment(self, first: int, path: Path) -> _Segment:
        data = path.read_bytes()
        segment = _Segment(first, path, created_unix_s=path.stat().st_mtime)
        start = 0
        valid = 0
        for end, payload in iter_records(data):
            event = trainer_pb2.RewardEvent.FromString(payload)
            segment.positions.append(start)
            segment.event_ids.append(event.event_id)
            segment.stream_sequences.append(event.stream_sequence)
            if event.stream_sequence and first + len(segment.positions) > self._stream_from_offset:
                self._last_stream_sequence = event.stream_sequence
            self._ids.add(event.event_id)
            start = end
            valid = end
        if valid < len(data):
            result = scan_bytes(data)
            self.torn_records_dropped += 1
            log.warning(
                "event_log_torn_record_dropped",
                path=str(path),
                problem=result.problem,
                kept_bytes=valid,
                dropped_bytes=len(data) - valid,
            )
            truncate_to_valid(path, result)
        segment.size_bytes = valid
        self._total_bytes += valid
        return segment

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = None

    # -- EventLog --------------------------------------------------------------------------------------

    @property
    def end_offset(self) -> int:
        with self._lock:
            return self._segments[-1].end_offset if self._segments else 0

    @property
    def size_bytes(self) -> int:
        return self._total_bytes

    # -- stream positions --------------------------------------------------------------------------------

    def _read_stream_file(self) -> None:
        path = self.directory / STREAM_FILE
        try:
            data = json.loads(path.read_text())
            self._stream_identity = str(data["identity"])
            self._stream_from_offset = int(data["from_offset"])
        except FileNotFoundError:
            return
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: unreadable stream record ({exc})") from exc

    @property
    def stream_identity(self) -> str:
        """The stream incarnation the newest records' sequences count in ("" before any)."""
        with self._lock:
            return self._stream_identity

    def set_stream_identity(self, identity: str) -> bool:
        """Record that records from now on carry sequences of stream incarnation ``identity`` (durable when
        this returns). True when it changed: ``last_stream_sequence`` then starts again at 0."""
        with self._lock:
            if identity == self._stream_identity:
                return False
            end = self._segments[-1].end_offset if self._segments else 0
            self.directory.mkdir(parents=True, exist_ok=True)
            temp = self.directory / f".{STREAM_FILE}.tmp"
            with open(temp, "w") as handle:
                json.dump({"identity": identity, "from_offset": end}, handle)
                handle.flush()
                os.fsync(handle.fileno())
            temp.replace(self.directory / STREAM_FILE)
            self._stream_identity, self._stream_from_offset = identity, end
            self._last_stream_sequence = 0
            return True

    def stream_identity_at(self, offset: int) -> str:
        with self._lock:
            return self._stream_identity if offset >= self._stream_from_offset else ""

    @property
    def last_stream_sequence(self) -> int:
        """The stream sequence of the newest record of the current stream incarnation (0: none): the
        consumer resumes right after it."""
        with self._lock:
            return self._last_stream_sequence

    def offset_after_stream_sequence(self, sequence: int, last_event_id: str = "") -> int | None:
        """The offset just after the last record of the current stream incarnation whose sequence is in
        [1, ``sequence``] (scanning back from the end: a resume point is near it); where the incarnation
        starts when it has none. A stream message can hold several events (a batch message, all with its
        sequence): with ``last_event_id``, the position is (``sequence``, that event), i.e. just after
        that event when it is one of the message's records here, so a version trained on part of a
        message resumes within it. None when retention removed the start of the incarnation (the record
        may be gone). Only meaningful once the consumer has handled ``sequence``."""
        with self._lock:
            after: int | None = None
            for offset, found, event_id in self._stream_records_backwards():
                if after is None:
                    if not 0 < found <= sequence:
                        continue
                    after = offset + 1
                    if found < sequence or not last_event_id:
                        return after
                if found != sequence:
                    return after  # the message's records end here: the event is not among them
                if event_id == last_event_id:
                    return offset + 1
            if after is not None:
                return after
            first = self._segments[0].first_offset if self._segments else 0
            return self._stream_from_offset if first <= self._stream_from_offset else None

    def _stream_records_backwards(self) -> Iterator[tuple[int, int, str]]:
        """(offset, stream sequence, event id) of the current incarnation's records, newest first."""
        for segment in reversed(self._segments):
            for index in range(len(segment.stream_sequences) - 1, -1, -1):
                offset = segment.first_offset + index
                if offset < self._stream_from_offset:
                    return
                yield offset, segment.stream_sequences[index], segment.event_ids[index]

    def __contains__(self, event_id: str) -> bool:
        with self._lock:
            return event_id in self._ids

    def append(self, events: Sequence[trainer_pb2.RewardEvent]) -> list[bool]:
        with self._lock:
            flags: list[bool] = []
            chunk: list[bytes] = []
            new_ids: list[str] = []
            sequences: list[int] = []
            batch_ids: set[str] = set()
            for event in events:
                if event.event_id in self._ids or event.event_id in batch_ids:
                    self.duplicates_total += 1
                    flags.append(False)
                    continue
                batch_ids.add(event.event_id)
                chunk.append(encode_record(event.SerializeToString()))
                new_ids.append(event.event_id)
                sequences.append(event.stream_sequence)
                flags.append(True)
            if chunk:
                self._write(chunk, new_ids, sequences)
                self._ids.update(new_ids)
                self._apply_retention()
            return flags

    def _write(self, records: list[bytes], ids: list[str], sequences: list[int]) -> None:
        segment = self._segments[-1] if self._segments else None
        if segment is None or segment.size_bytes >= self.segment_max_bytes:
            segment = self._roll(segment.end_offset if segment else 0)
        blob = b"".join(records)
        assert self._fd is not None
        written = 0
        while written < len(blob):
            written += os.write(self._fd, blob[written:])
        os.fsync(self._fd)
        position = segment.size_bytes
        for record, event_id in zip(records, ids, strict=True):
            segment.positions.append(position)
            segment.event_ids.append(event_id)
            position += len(record)
        segment.stream_sequences.extend(sequences)
        segment.size_bytes = position
        self._total_bytes += len(blob)
        self._last_stream_sequence = next((q for q in reversed(sequences) if q), self._last_stream_sequence)

    def _roll(self, first_offset: int) -> _Segment:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
        path = self.directory / segment_name(first_offset)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        segment = _Segment(first_offset, path, created_unix_s=self._clock())
        self._segments.append(segment)
        return segment

    def _apply_retention(self) -> None:
        now = self._clock()
        while len(self._segments) > 1:
            oldest = self._segments[0]
            too_big = self._total_bytes > self.retention_max_bytes
            too_old = now - oldest.created_unix_s > self.retention_max_age_s
            if not (too_big or too_old):
                break
            self._segments.pop(0)
            self._total_bytes -= oldest.size_bytes
            self._ids.difference_update(oldest.event_ids)
            oldest.path.unlink(missing_ok=True)
            log.info(
                "event_log_segment_retired",
                path=str(oldest.path),
                events=len(oldest.positions),
                reason="size" if too_big else "age",
            )

    def read_from(self, offset: int, max_events: int) -> list[tuple[int, trainer_pb2.RewardEvent]]:
        with self._lock:
            out: list[tuple[int, trainer_pb2.RewardEvent]] = []
            for segment in self._segments:
                if segment.end_offset <= offset or not segment.positions:
                    continue
                index = max(0, offset - segment.first_offset)
                take = min(len(segment.positions) - index, max_events - len(out))
                start = segment.positions[index]
                end = (
                    segment.positions[index + take]
                    if index + take < len(segment.positions)
                    else segment.size_bytes
                )
                with open(segment.path, "rb") as handle:
                    handle.seek(start)
                    data = handle.read(end - start)
                for i, (_, payload) in enumerate(iter_records(data)):
                    out.append(
                        (segment.first_offset + index + i, trainer_pb2.RewardEvent.FromString(payload))
                    )
                offset = segment.first_offset + index + take
                if len(out) >= max_events:
                    break
            return out
