from __future__ import annotations

from barp_sidecar.providers.chat import TokenUsage
from barp_sidecar.providers.recorder import CompletionRecorder, InMemoryCompletionRecorder


def test_records_are_kept_per_decision_and_bounded() -> None:
    recorder = InMemoryCompletionRecorder(2, wall_clock=lambda: 123.0)
    sink: CompletionRecorder = recorder  # satisfies the protocol
    sink.record_completion("d1", "m", 0.5, 12.0, TokenUsage(1, 2))
    sink.record_completion("d2", "m", 0.25, 10.0, TokenUsage(3, 4, estimated=True))
    record = recorder.get("d1")
    assert record is not None
    assert (record.model, record.cost_usd, record.latency_ms, record.recorded_at_unix_s) == (
        "m",
        0.5,
        12.0,
        123.0,
    )
    sink.record_completion("d3", "n", 1.0, 1.0, TokenUsage(0, 0))
    assert recorder.get("d1") is None and recorder.evicted == 1 and len(recorder) == 2
    rec2 = recorder.get("d2")
    assert rec2 is not None and rec2.usage.estimated


def test_records_are_forwarded_to_the_pending_decision_store() -> None:
    store = InMemoryCompletionRecorder(10)
    recorder = InMemoryCompletionRecorder(10, forward_to=store)
    recorder.record_completion("d1", "m", 0.125, 3.0, TokenUsage(1, 1))
    forwarded = store.get("d1")
    assert forwarded is not None and (forwarded.model, forwarded.cost_usd) == ("m", 0.125)
    assert recorder.get("d1") is not None
