"""Where the cost and latency of every completed Complete call go: the ``CompletionRecorder`` interface.

The reward path (``barp_sidecar.rewards``) needs each decision's cost without the caller reporting it. The
forwarder calls ``record_completion`` once per completed call, after the last token and before the last
chunk is sent. ``InMemoryCompletionRecorder`` is the default: a bounded map from decision_id to the record
(``get``), which also forwards every record to another recorder when given one: the pending-decision
store (``rewards.recorder.OutcomeRecorder`` implements this protocol), so ReportOutcome after Complete
needs no cost from the caller. Anything else implementing the protocol can replace it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from barp_sidecar.providers.chat import TokenUsage


@dataclass(frozen=True)
class CompletionRecord:
    decision_id: str
    # The model that answered (after fallback).
    model: str
    cost_usd: float
    # Wall-clock time of the answering provider's call, from the first attempt to the last byte.
    latency_ms: float
    usage: TokenUsage
    recorded_at_unix_s: float


class CompletionRecorder(Protocol):
    """Receives one record per completed Complete call. Must not block (it runs on the event loop)."""

    def record_completion(
        self, decision_id: str, model: str, cost_usd: float, latency_ms: float, usage: TokenUsage
    ) -> None: ...


class InMemoryCompletionRecorder:
    """Bounded, insertion-ordered records; the oldest is evicted beyond ``max_entries`` (and counted)."""

    def __init__(
        self,
        max_entries: int,
        wall_clock: Callable[[], float] = time.time,
        forward_to: CompletionRecorder | None = None,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self._max_entries = max_entries
        self._wall_clock = wall_clock
        self._forward_to = forward_to
        self._records: OrderedDict[str, CompletionRecord] = OrderedDict()
        self.evicted = 0

    def record_completion(
        self, decision_id: str, model: str, cost_usd: float, latency_ms: float, usage: TokenUsage
    ) -> None:
        self._records[decision_id] = CompletionRecord(
            decision_id, model, cost_usd, latency_ms, usage, self._wall_clock()
        )
        self._records.move_to_end(decision_id)
        while len(self._records) > self._max_entries:
            self._records.popitem(last=False)
            self.evicted += 1
        if self._forward_to is not None:
            self._forward_to.record_completion(decision_id, model, cost_usd, latency_ms, usage)

    def get(self, decision_id: str) -> CompletionRecord | None:
        return self._records.get(decision_id)

    def __len__(self) -> int:
        return len(self._records)
