"""Where the cost and latency of every completed Complete call go: the ``CompletionRecorder`` interface.

The reward path (``barp_sidecar.rewards``) needs each decision's cost without the caller reporting it. The
forwarder calls ``record_completion`` once per completed call, after the last token and before the last
chunk is sent. In the sidecar the recorder is the pending-decision store's ``rewards.recorder.
OutcomeRecorder`` (so ReportOutcome after Complete needs no cost from the caller); with ``rewards.enabled``
false there is none. Anything else implementing the protocol can take its place.
"""

from __future__ import annotations

from typing import Protocol

from barp_sidecar.providers.chat import TokenUsage


class CompletionRecorder(Protocol):
    """Receives one record per completed Complete call. Must not block (it runs on the event loop)."""

    def record_completion(
        self, decision_id: str, model: str, cost_usd: float, latency_ms: float, usage: TokenUsage
    ) -> None: ...
