"""ReportOutcome is exactly idempotent under concurrency: a real sidecar, a real channel, one decision
reported by 8 concurrent calls -> one ``recorded=true``, seven ``recorded=false``, all OK, one event."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from barp_sidecar.gen.barp.v1 import router_pb2, router_pb2_grpc
from tests.support.sidecar import running_sidecar, sidecar_settings


async def test_eight_concurrent_reports_record_once_and_all_succeed(checkpoint: Path, tmp_path: Path) -> None:
    # A slow group fsync keeps the first recording in flight while the other seven arrive.
    settings = sidecar_settings(
        checkpoint, rewards={"spool_dir": str(tmp_path / "spool"), "spool_fsync_interval_ms": 50.0}
    )
    async with running_sidecar(settings) as app:
        assert app.learning is not None and app.learning.spool is not None
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            for round_number in range(3):
                decision = await stub.Route(router_pb2.RouteRequest(prompt=f"question {round_number}"))
                acks = await asyncio.gather(
                    *(
                        stub.ReportOutcome(
                            router_pb2.OutcomeRequest(decision_id=decision.decision_id, quality=0.5),
                            timeout=10,
                        )
                        for _ in range(8)
                    )
                )
                assert sorted(ack.recorded for ack in acks) == [False] * 7 + [True], round_number
                later = await stub.ReportOutcome(
                    router_pb2.OutcomeRequest(decision_id=decision.decision_id, quality=0.9), timeout=10
                )
                assert not later.recorded
            events = app.learning.spool.read_after(0, 100)
    assert len(events) == 3 and len({event.event_id for event in events}) == 3
    assert all(event.quality == 0.5 for event in events)
