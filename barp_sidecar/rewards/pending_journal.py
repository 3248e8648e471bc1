"""The pending-decision journal: pending decisions and recently recorded ids survive a sidecar restart.

Owns ``pending-<n>.journal`` segment files in the spool directory (``rewards.spool_dir``), their replay at
start and their trimming. Knows nothing about gRPC or the spool; ``OutcomeRecorder`` calls it on every
change of the ``PendingDecisionStore``. Without it a kill -9 lost every pending decision (their outcomes
could never be reported) and the ids recorded before the crash (a retried ReportOutcome got NOT_FOUND).

Records use the spool's crash-safe framing (``records.py``); the first payload byte says what happened:

- ``A`` + ``barp.v1.RewardEvent`` (without quality): the decision is pending (again written when Complete
  attaches its cost or a fallback model answered; the last one wins).
- ``R`` + JSON ``{"id", "at"}``: its outcome is recorded (``at``: wall-clock seconds); remembered for the TTL.
- ``F`` + id: it left the store unrecorded (expired, evicted); a retry gets NOT_FOUND as before.

Writes are plain ``write`` calls, not fsync'd: they survive a process crash (kill -9, OOM) because the
kernel holds them, not a machine crash (the reward spool, which fsyncs, is what guarantees no outcome is
lost; this journal only keeps the pending state). A crash between an outcome's spool fsync and its ``R``
record leaves the decision pending after the restart; recording it again yields an event with the same
id, which the trainer de-duplicates.

Size: segments rotate at ``segment_max_bytes``; the oldest is deleted once nothing in it is live, and when
the journal exceeds twice its live size (plus ``min_segments``), the oldest segment's live records are
copied forward and it is deleted. Replay at start drops what expired while the sidecar was down and
rewrites the journal as one compact segment.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

from barp_sidecar.gen.barp.v1 import trainer_pb2
from barp_sidecar.rewards.pending import PendingDecision
from barp_sidecar.rewards.records import encode_record, scan_file, truncate_to_valid
from barp_sidecar.rewards.varint import varint_bytes

log = structlog.get_logger("barp_sidecar.rewards.pending_journal")

_SEGMENT = re.compile(r"^pending-(\d{12})\.journal$")
ADDED, RECORDED, FORGOTTEN = b"A", b"R", b"F"


def segment_name(index: int) -> str:
    return f"pending-{index:012d}.journal"


@dataclass
class JournalState:
    """What replay found: decisions still pending (with their age) and recorded ids (with their age)."""

    pending: list[tuple[PendingDecision, float]]
    recorded: dict[str, float]


# RewardEvent.embedding (field 4, packed repeated float): its key byte (field 4, wire type 2).
EMBEDDING_FIELD_KEY = bytes([4 << 3 | 2])


def packed_embedding(embedding: np.ndarray) -> bytes:
    """The embedding as RewardEvent's packed field 4, straight from the array's float32 bytes.

    What protobuf writes for ``embedding=list(...)``, without a Python float per element (a list of 384
    floats cost ~0.1 ms per record, written once per Route and again per Complete). Fields may appear in
    any order on the wire, so appending it to the rest of the serialized message parses the same.
    """
    data = np.ascontiguousarray(embedding, dtype="<f4").tobytes()
    if not data:
        return b""
    return EMBEDDING_FIELD_KEY + varint_bytes(len(data)) + data


def encode_added(decision: PendingDecision) -> bytes:
    event = trainer_pb2.RewardEvent(
        event_id=decision.decision_id,
        quality_weight=decision.quality_weight,
        allowed=list(decision.allowed),
        model=decision.model,
        propensity=decision.propensity,
        policy_version=decision.policy_version,
        decided_at_unix_s=decision.decided_at_unix_s,
        # The answering fallback model, when there was one (the field is otherwise unused here).
        sidecar_id=decision.answered_by or "",
    )
    if decision.cost_usd is not None:
        event.cost_usd = decision.cost_usd
    return ADDED + event.SerializeToString() + packed_embedding(decision.embedding)


def decode_added(payload: bytes, models: tuple[str, ...]) -> PendingDecision:
    event = trainer_pb2.RewardEvent.FromString(payload)
    return PendingDecision(
        decision_id=event.event_id,
        embedding=np.asarray(event.embedding, dtype=np.float32),
        quality_weight=event.quality_weight,
        models=models,
        allowed=tuple(event.allowed),
        model=event.model,
        propensity=event.propensity,
        policy_version=event.policy_version,
        decided_at_unix_s=event.decided_at_unix_s,
        cost_usd=event.cost_usd if event.HasField("cost_usd") else None,
        answered_by=event.sidecar_id or None,
    )


class PendingJournal:
    """Append-only journal of the pending-decision store. ``open()`` replays; ``close()`` last."""

    def __init__(
        self,
        directory: Path,
        ttl_s: float,
        models: tuple[str, ...],
        *,
        segment_max_bytes: int = 8 << 20,
        min_segments: int = 4,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = Path(directory)
        self.ttl_s = ttl_s
        self.models = models
        self.segment_max_bytes = segment_max_bytes
        self.min_segments = min_segments
        self._clock = wall_clock
        self._fd: int | None = None
        self._next_segment = 1
        # Segment index -> bytes; the last one is the active segment.
        self._segments: dict[int, int] = {}
        # Live id -> the segment holding its latest record; live ids per segment.
        self._where: dict[str, int] = {}
        self._live: dict[int, int] = {}
        # Recorded ids still remembered (TTL) -> wall-clock time of recording, in recording order.
        self._recorded_at: dict[str, float] = {}
        self._live_bytes: dict[str, int] = {}
        self._live_total_bytes = 0

    # -- replay ----------------------------------------------------------------------------------------

    def open(self) -> JournalState:
        """Replay every segment, drop what expired, rewrite one compact segment; returns the live state."""
        self.directory.mkdir(parents=True, exist_ok=True)
        found = sorted(
            (int(m.group(1)), entry)
            for entry in self.directory.iterdir()
            if (m := _SEGMENT.match(entry.name)) and entry.is_file()
        )
        pending: dict[str, bytes] = {}
        recorded: dict[str, float] = {}
        for _, path in found:
            result = scan_file(path)
            if result.torn:
                log.warning("pending_journal_torn_record_dropped", path=str(path), problem=result.problem)
                truncate_to_valid(path, result)
            for payload in result.payloads:
                kind, body = payload[:1], payload[1:]
                if kind == ADDED:
                    decision_id = trainer_pb2.RewardEvent.FromString(body).event_id
                    pending[decision_id] = body
                    recorded.pop(decision_id, None)
                elif kind == RECORDED:
                    entry = json.loads(body)
                    pending.pop(entry["id"], None)
                    recorded[entry["id"]] = float(entry["at"])
                elif kind == FORGOTTEN:
                    pending.pop(body.decode(), None)
        now = self._clock()
        state = JournalState(pending=[], recorded={})
        for body in pending.values():
            decision = decode_added(body, self.models)
            age_s = max(0.0, now - decision.decided_at_unix_s)
            if age_s <= self.ttl_s:
                state.pending.append((decision, age_s))
        for decision_id, at in recorded.items():
            if now - at <= self.ttl_s:
                state.recorded[decision_id] = max(0.0, now - at)
        # The first segment is created by the first write: an idle sidecar leaves no file behind.
        self._next_segment = (found[-1][0] + 1) if found else 1
        for decision, _ in state.pending:
            self.added(decision)
        for decision_id, age_s in state.recorded.items():
            self._append(decision_id, RECORDED + self._recorded_body(decision_id, now - age_s))
            self._recorded_at[decision_id] = now - age_s
        if self._fd is not None:
            os.fsync(self._fd)
        for _, path in found:
            path.unlink()
        if found:
            log.info(
                "pending_journal_replayed",
                pending=len(state.pending),
                recorded=len(state.recorded),
                expired_while_down=len(pending) - len(state.pending),
            )
        return state

    # -- changes ---------------------------------------------------------------------------------------

    def added(self, decision: PendingDecision) -> None:
        """The decision is pending (new, or its cost/answering model changed)."""
        self._append(decision.decision_id, encode_added(decision))

    def recorded(self, decision_id: str) -> None:
        at = self._clock()
        self._recorded_at.pop(decision_id, None)
        self._recorded_at[decision_id] = at
        self._append(decision_id, RECORDED + self._recorded_body(decision_id, at))

    def forgotten(self, decision_id: str) -> None:
        """The decision left the store unrecorded (expired or evicted)."""
        self._unlink_live(decision_id)
        self._write(FORGOTTEN + decision_id.encode())

    def maintain(self, lookup: Callable[[str], PendingDecision | None]) -> None:
        """Forget recorded ids past the TTL, delete dead segments, compact when the journal is large.
        ``lookup`` returns the store's pending decision for an id (for copying it forward)."""
        now = self._clock()
        while self._recorded_at:
            decision_id, at = next(iter(self._recorded_at.items()))
            if now - at <= self.ttl_s:
                break
            del self._recorded_at[decision_id]
            if lookup(decision_id) is None:
                self._unlink_live(decision_id)
        self._delete_dead_segments()
        total = sum(self._segments.values())
        live = self._live_total_bytes
        if len(self._segments) > self.min_segments and total > 2 * live + self.segment_max_bytes:
            self._copy_forward_oldest(lookup)
            self._delete_dead_segments()

    def close(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None

    @property
    def size_bytes(self) -> int:
        return sum(self._segments.values())

    # -- internals -------------------------------------------------------------------------------------

    def _recorded_body(self, decision_id: str, at: float) -> bytes:
        return json.dumps({"id": decision_id, "at": round(at, 3)}).encode()

    def _start_segment(self, index: int) -> None:
        if self._fd is not None:
            os.close(self._fd)
        path = self.directory / segment_name(index)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._segments[index] = 0
        self._live.setdefault(index, 0)
        self._next_segment = index + 1

    def _active(self) -> int:
        return next(reversed(self._segments))

    def _write(self, payload: bytes) -> int:
        record = encode_record(payload)
        if self._fd is None or self._segments[self._active()] + len(record) > self.segment_max_bytes:
            self._start_segment(self._next_segment)
        assert self._fd is not None
        os.write(self._fd, record)
        active = self._active()
        self._segments[active] += len(record)
        return len(record)

    def _append(self, decision_id: str, payload: bytes) -> None:
        size = self._write(payload)
        self._unlink_live(decision_id)
        active = self._active()
        self._where[decision_id] = active
        self._live[active] = self._live.get(active, 0) + 1
        self._live_bytes[decision_id] = size
        self._live_total_bytes += size

    def _unlink_live(self, decision_id: str) -> None:
        segment = self._where.pop(decision_id, None)
        self._live_total_bytes -= self._live_bytes.pop(decision_id, 0)
        if segment is not None:
            self._live[segment] -= 1

    def _delete_dead_segments(self) -> None:
        # Oldest first only: a later segment may hold the F/R records that end an older one's decisions.
        while len(self._segments) > 1:
            oldest = next(iter(self._segments))
            if self._live.get(oldest, 0) > 0:
                return
            (self.directory / segment_name(oldest)).unlink(missing_ok=True)
            del self._segments[oldest]
            self._live.pop(oldest, None)

    def _copy_forward_oldest(self, lookup: Callable[[str], PendingDecision | None]) -> None:
        if not self._segments:
            return
        oldest = next(iter(self._segments))
        if oldest == self._active():
            return
        for decision_id in [i for i, segment in self._where.items() if segment == oldest]:
            decision = lookup(decision_id)
            if decision is not None:
                self.added(decision)
            elif decision_id in self._recorded_at:
                at = self._recorded_at[decision_id]
                self._append(decision_id, RECORDED + self._recorded_body(decision_id, at))
            else:
                self._unlink_live(decision_id)
