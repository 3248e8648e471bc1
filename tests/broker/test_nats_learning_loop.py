"""The whole learning loop through NATS JetStream, nothing else between sidecar and trainer: a real
in-process trainer and sidecar (127.0.0.1:0) and a real ``nats-server -js``. Events go through the stream
into the trainer's log; the trainer mirrors each published version into the Object Store and KV
``latest``; the sidecar (no ``trainer.target``) watches, downloads, validates and hot-swaps; Admin
PinPolicy rolls back to an older version fetched from the Object Store, and PinPolicy(0) catches up.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import nats
import pytest

from barp_sidecar.gen.barp.v1 import admin_pb2, admin_pb2_grpc, router_pb2, router_pb2_grpc
from barp_sidecar.policy.calibration import CALIBRATION_FILE
from barp_sidecar.policy.checkpoint import WEIGHTS_FILE
from barp_sidecar.policy.nats_policies import LATEST_KEY, parse_announcement
from tests.rewards.test_sidecar_learning import route_and_report, trainer_yaml
from tests.support.sidecar import make_tiny_checkpoint, running_sidecar, sidecar_settings
from tests.support.waiting import reached, wait_until
from trainer.service.app import TrainerApp
from trainer.service.settings import load_trainer_settings

FAST = "  reconnect_initial_backoff_s: 0.05\n  reconnect_max_backoff_s: 0.3\n  connect_timeout_s: 1\n"


def trainer_nats_yaml(data_dir: Path, url: str) -> str:
    """The gRPC learning-loop test's trainer (cold, v2 after 150 events), with the NATS backend."""
    events = f"events:\n  backend: nats\n  nats_urls: [{url}]\n"
    return trainer_yaml(data_dir, every_events=150) + events + FAST


async def test_events_and_policies_flow_through_jetstream_with_pin_and_rollback(tmp_path, broker):
    config = tmp_path / "trainer.yaml"
    config.write_text(trainer_nats_yaml(tmp_path / "trainer", broker.url))
    trainer = TrainerApp(load_trainer_settings(config, {}), env={})
    await trainer.start()
    settings = sidecar_settings(
        make_tiny_checkpoint(tmp_path / "policy" / "v1"),
        trainer={"checkpoint_cache_dir": str(tmp_path / "cache")},
        rewards={"spool_dir": str(tmp_path / "spool"), "spool_fsync_interval_ms": 1.0},
        admin={"enabled": True, "port": 0},
        routing={"default_exploration": "sample", "seed": 3},
        events={
            "backend": "nats",
            "nats_urls": [broker.url],
            "reconnect_initial_backoff_s": 0.05,
            "reconnect_max_backoff_s": 0.3,
        },
    )
    try:
        async with running_sidecar(settings) as app:
            # The trainer's cold v1 reaches the sidecar through KV "latest" + the Object Store.
            await wait_until(
                lambda: (
                    app.registry.current().manifest.weights_sha256 == trainer.loop.manifest.weights_sha256
                ),
                what="swap to the trainer's v1",
            )
            assert app.learning is not None and app.learning.channel is None  # no gRPC to the trainer
            async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
                stub = router_pb2_grpc.RouterStub(channel)
                ids = set()
                for i in range(200):
                    decision = await stub.Route(router_pb2.RouteRequest(prompt=f"prompt {i % 37} about {i}"))
                    ack = await stub.ReportOutcome(
                        router_pb2.OutcomeRequest(decision_id=decision.decision_id, quality=(i % 5) / 4)
                    )
                    assert ack.recorded
                    ids.add(decision.decision_id)
            stored = trainer.event_log.read_from
            await wait_until(lambda: len(stored(0, 1000)) == 200, what="events in the log")
            assert {e.event_id for _, e in trainer.event_log.read_from(0, 1000)} == ids
            # 200 events with every_events=150: the trainer publishes v2 (with its calibration set); it
            # arrives through JetStream. The gate skips an evaluation whose held-out slice is too small (ids
            # are random): then more traffic, bounded, until it evaluates again.
            for _ in range(10):
                if await reached(lambda: app.registry.current().version == 2, timeout_s=20):
                    break
                await route_and_report(app.port, 100)
            await wait_until(lambda: app.registry.current().version == 2, timeout_s=20, what="swap to v2")
            assert app.registry.current().manifest.calibration is not None
            assert (tmp_path / "cache" / "v2" / CALIBRATION_FILE).is_file()
            client = await nats.connect(broker.url)
            kv = await client.jetstream().key_value(settings.events.policy_kv_bucket)
            latest = parse_announcement((await kv.get(LATEST_KEY)).value)
            await client.close()
            assert (
                latest.version == 2
                and latest.weights_sha256 == app.registry.current().manifest.weights_sha256
            )
            # Rollback fetches v1 again from the Object Store (the local copy is gone).
            shutil.rmtree(tmp_path / "cache" / "v1")
            async with grpc.aio.insecure_channel(f"127.0.0.1:{app.admin_port}") as admin_channel:
                admin = admin_pb2_grpc.AdminStub(admin_channel)
                pinned = await admin.PinPolicy(admin_pb2.PinPolicyRequest(version=1))
                assert pinned.version == 1 and app.registry.current().version == 1
                assert (tmp_path / "cache" / "v1" / WEIGHTS_FILE).is_file()
                with pytest.raises(grpc.aio.AioRpcError) as missing:
                    await admin.PinPolicy(admin_pb2.PinPolicyRequest(version=99))
                assert missing.value.code() == grpc.StatusCode.NOT_FOUND
                unpinned = await admin.PinPolicy(admin_pb2.PinPolicyRequest(version=0))
                assert unpinned.version == 2 and app.registry.current().version == 2
    finally:
        await trainer.close()
