"""An in-memory ``EventLog`` (trainer/service/eventlog.py's Protocol) for replays and tests.

Owns a list of stored events and the set of their ids (de-duplication, like the segmented log); nothing
is durable. Knows nothing about learning.
"""

from __future__ import annotations

from collections.abc import Sequence

from barp_sidecar.gen.barp.v1 import trainer_pb2


class MemoryEventLog:
    """Append-only, de-duplicating by ``event_id``; offsets are list indices."""

    def __init__(self) -> None:
        self._events: list[trainer_pb2.RewardEvent] = []
        self._ids: set[str] = set()

    def append(self, events: Sequence[trainer_pb2.RewardEvent]) -> list[bool]:
        stored = []
        for event in events:
            fresh = event.event_id not in self._ids
            if fresh:
                self._ids.add(event.event_id)
                self._events.append(event)
            stored.append(fresh)
        return stored

    def read_from(self, offset: int, max_events: int) -> list[tuple[int, trainer_pb2.RewardEvent]]:
        start = max(offset, 0)
        return [(start + i, e) for i, e in enumerate(self._events[start : start + max_events])]

    @property
    def end_offset(self) -> int:
        return len(self._events)

    def stream_identity_at(self, offset: int) -> str:
        return ""  # not fed from a broker

    def close(self) -> None:
        return None
