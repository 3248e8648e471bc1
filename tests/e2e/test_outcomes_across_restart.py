"""Outcomes across a sidecar crash: a real ``barp-sidecar serve`` process, killed with SIGKILL, restarted.

Decisions made before the crash keep their answers: the 12 whose outcomes were recorded answer
``recorded=false`` to a retry (not NOT_FOUND), the 2 still pending can still be reported
(``recorded=true``), an id never issued is still NOT_FOUND, and the spool holds each outcome once.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from barp_sidecar.gen.barp.v1 import router_pb2, router_pb2_grpc
from barp_sidecar.rewards.records import scan_file
from tests.e2e.learning_processes import SidecarProcess, free_port
from tests.support.sidecar import make_tiny_checkpoint


def sidecar_yaml(tmp: Path, port: int) -> str:
    return (
        f"server:\n  host: 127.0.0.1\n  port: {port}\n  grace_s: 1\n"
        "metrics:\n  enabled: false\n"
        "admin:\n  enabled: false\n"
        f"policy:\n  checkpoint_dir: {tmp / 'policy'}\n  device: cpu\n"
        f"rewards:\n  spool_dir: {tmp / 'spool'}\n  spool_fsync_interval_ms: 2\n"
    )


async def report(stub: router_pb2_grpc.RouterStub, decision_id: str) -> router_pb2.OutcomeAck:
    return await stub.ReportOutcome(
        router_pb2.OutcomeRequest(decision_id=decision_id, quality=0.75), timeout=10
    )


def spooled_ids(spool: Path) -> list[str]:
    from barp_sidecar.gen.barp.v1 import trainer_pb2

    return [
        trainer_pb2.RewardEvent.FromString(payload).event_id
        for path in sorted(spool.glob("segment-*.spool"))
        for payload in scan_file(path).payloads
    ]


async def test_pending_decisions_and_recorded_ids_survive_kill_9(tmp_path: Path) -> None:
    make_tiny_checkpoint(tmp_path / "policy")
    port = free_port()
    (tmp_path / "sidecar.yaml").write_text(sidecar_yaml(tmp_path, port))
    sidecar = SidecarProcess(tmp_path / "sidecar.yaml", tmp_path / "sidecar.log").start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            ids = [
                (await stub.Route(router_pb2.RouteRequest(prompt=f"question {i}"), timeout=10)).decision_id
                for i in range(14)
            ]
            before = [(await report(stub, decision_id)).recorded for decision_id in ids[:12]]
        assert before == [True] * 12
        sidecar.kill()
        sidecar.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            retried = [(await report(stub, decision_id)).recorded for decision_id in ids[:12]]
            pending = [(await report(stub, decision_id)).recorded for decision_id in ids[12:]]
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await report(stub, "0" * 32)
    finally:
        sidecar.stop()
    assert retried == [False] * 12, "recorded before the crash: a retry is an idempotent repeat"
    assert pending == [True, True], "pending before the crash: still reportable"
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert sorted(spooled_ids(tmp_path / "spool")) == sorted(ids)
    assert "pending_journal_replayed" in (tmp_path / "sidecar.log").read_text()
