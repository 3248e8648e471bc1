"""Smaller edges of the contract, through a real sidecar and a real channel: unset quality, an empty
Preference, unguessable decision ids, a blank admin token, and two sidecars on one admin port."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from barp_sidecar.errors import ConfigError
from barp_sidecar.gen.barp.v1 import router_pb2, router_pb2_grpc
from barp_sidecar.routing.service import DecisionIds
from barp_sidecar.rpc.admin import admin_token
from barp_sidecar.settings import AdminSettings
from tests.e2e.learning_processes import free_port
from tests.support.sidecar import running_sidecar, sidecar_settings


async def test_unset_quality_is_invalid_and_an_empty_preference_means_the_default(
    checkpoint: Path, tmp_path: Path
) -> None:
    settings = sidecar_settings(
        checkpoint,
        routing={"default_quality_weight": 0.7},
        rewards={"spool_dir": str(tmp_path / "spool")},
    )
    async with running_sidecar(settings) as app:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            empty = await stub.Route(router_pb2.RouteRequest(prompt="a", preference=router_pb2.Preference()))
            zero = await stub.Route(
                router_pb2.RouteRequest(prompt="a", preference=router_pb2.Preference(quality_weight=0.0))
            )
            with pytest.raises(grpc.aio.AioRpcError) as unset:
                await stub.ReportOutcome(router_pb2.OutcomeRequest(decision_id=empty.decision_id))
            explicit_zero = await stub.ReportOutcome(
                router_pb2.OutcomeRequest(decision_id=empty.decision_id, quality=0.0)
            )
    assert empty.quality_weight == pytest.approx(0.7)
    assert zero.quality_weight == 0.0
    assert unset.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert unset.value.details().startswith("quality: is required")
    assert explicit_zero.recorded


def test_decision_ids_are_128_random_bits() -> None:
    ids = DecisionIds(ids_per_read=4)
    drawn = [ids.next() for _ in range(1000)]
    assert len(set(drawn)) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in drawn)
    # No shared prefix or counter: consecutive ids differ in their first half too (a counter would not).
    assert len({i[:16] for i in drawn}) == 1000
    # Every bit position takes both values (a fixed field would not).
    bits = [int(i, 16) for i in drawn]
    for position in range(128):
        assert 0 < sum((b >> position) & 1 for b in bits) < 1000, position


@pytest.mark.parametrize("token", ["   ", "\t", " s3cret", "s3cret\n"])
def test_blank_or_padded_admin_token_is_refused(token: str) -> None:
    with pytest.raises(ConfigError) as caught:
        admin_token(AdminSettings(host="0.0.0.0", port=0), {"BARP_ADMIN_TOKEN": token})
    assert caught.value.key == "admin.token_env"


async def test_a_second_sidecar_cannot_share_the_admin_port(checkpoint: Path, tmp_path: Path) -> None:
    port = free_port()

    def settings(name: str):  # type: ignore[no-untyped-def]
        return sidecar_settings(
            checkpoint,
            admin={"enabled": True, "port": port},
            rewards={"spool_dir": str(tmp_path / name)},
        )

    async with running_sidecar(settings("a")) as first:
        assert first.admin_port == port
        with pytest.raises(ConfigError) as caught:
            async with running_sidecar(settings("b")):
                pass
    assert caught.value.key == "admin.port"
