"""ReportOutcome with no trainer configured: said in the ack and the metrics, and bounded by a quota."""

from __future__ import annotations

import urllib.request

import grpc
import pytest

from barp_sidecar.gen.barp.v1 import router_pb2, router_pb2_grpc
from tests.support.sidecar import make_tiny_checkpoint, running_sidecar, sidecar_settings

QUOTA_BYTES = 1 << 16  # the smallest quota allowed; ~a few hundred hash:32 events
MAX_REPORTS = 2000  # bounded loop: the quota must be reached well before this


def metric(port: int, name: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return next(float(line.split()[1]) for line in body.splitlines() if line.startswith(name + " "))


async def test_outcomes_are_kept_for_a_missing_trainer_up_to_a_quota(tmp_path) -> None:
    checkpoint = make_tiny_checkpoint(tmp_path / "v1")
    settings = sidecar_settings(checkpoint, rewards={"spool_max_bytes_without_trainer": QUOTA_BYTES})
    assert settings.trainer.target is None
    async with running_sidecar(settings) as app:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            kept = 0
            refusal = None
            for index in range(MAX_REPORTS):
                decision = await stub.Route(router_pb2.RouteRequest(prompt=f"prompt number {index}"))
                try:
                    ack = await stub.ReportOutcome(
                        router_pb2.OutcomeRequest(decision_id=decision.decision_id, quality=0.5)
                    )
                except grpc.aio.AioRpcError as error:
                    refusal = error
                    break
                assert ack.recorded and ack.delivery == router_pb2.OUTCOME_DELIVERY_KEPT_WITHOUT_TRAINER
                kept += 1
            assert refusal is not None, f"{MAX_REPORTS} outcomes fit in {QUOTA_BYTES} bytes"
            assert refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "no trainer is configured" in refusal.details()
            assert "rewards.spool_max_bytes_without_trainer" in refusal.details()
            # The spool never grows past the quota.
            assert app.learning is not None and app.learning.spool is not None
            assert app.learning.spool.size_bytes <= QUOTA_BYTES
        assert metric(app.metrics_port, "barp_trainer_configured") == 0.0
        assert metric(app.metrics_port, "barp_outcomes_kept_without_trainer_total") == pytest.approx(kept)
        assert kept > 10
