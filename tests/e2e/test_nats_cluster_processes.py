"""The scale-out path under faults, all real processes on loopback: a 3-node JetStream cluster
(stream and policy buckets with 3 replicas), one trainer, 3 sidecars that talk only to the broker (events
through the stream, policies through the Object Store + KV). During traffic: kill -9 of one NATS node,
of the trainer and of one sidecar (each restarted). Then: every acknowledged ReportOutcome is in the
trainer's log exactly once, no Route or ReportOutcome failed on a live sidecar, and every sidecar serves
the trainer's latest version. About 30 s on a busy 2-core machine.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc

from barp_sidecar.gen.barp.v1 import admin_pb2, admin_pb2_grpc
from tests.e2e.learning_processes import (
    SidecarProcess,
    TrainerProcess,
    free_port,
    report_outcomes,
    stored_event_ids,
)
from tests.support.nats_server import NatsCluster, require_nats_server
from tests.support.sidecar import ARMS, HASH_ENCODER, make_tiny_checkpoint


def events_yaml(urls: list[str]) -> str:
    return (
        f"events:\n  backend: nats\n  nats_urls: [{', '.join(urls)}]\n  stream_replicas: 3\n"
        "  reconnect_initial_backoff_s: 0.05\n  reconnect_max_backoff_s: 0.5\n  connect_timeout_s: 1\n"
    )


def trainer_yaml(data_dir: Path, urls: list[str]) -> str:
    return (
        "server:\n  host: 127.0.0.1\n  port: 0\n  grace_s: 1\n"
        f"storage:\n  data_dir: {data_dir}\n"
        "metrics:\n  enabled: false\n"
        f"learner:\n  initial_policy: latest_or_cold\n  arms: [{', '.join(ARMS)}]\n"
        f"  encoder_id: {HASH_ENCODER.encoder_id}\n  encoder_dim: {HASH_ENCODER.dim}\n"
        f"  encoder_max_seq_length: {HASH_ENCODER.max_seq_length}\n  encoder_truncation: tail\n"
        "  tau_usd: 0.005\n  batch_size: 16\n"
        "publish:\n  every_events: 150\n  every_s: 600\n  gate_min_holdout_events: 3\n  gate_margin: 1.0\n"
        + events_yaml(urls)
    )


def flat(parts: list[list[str]]) -> list[str]:
    return [item for part in parts for item in part]


class Sidecar:
    def __init__(self, tmp: Path, name: str, urls: list[str]) -> None:
        self.port, self.admin_port = free_port(), free_port()
        config = tmp / f"{name}.yaml"
        config.write_text(
            f"server:\n  host: 127.0.0.1\n  port: {self.port}\n  grace_s: 1\n"
            "metrics:\n  enabled: false\n"
            f"admin:\n  enabled: true\n  port: {self.admin_port}\n"
            f"policy:\n  checkpoint_dir: {tmp / 'policy'}\n  device: cpu\n"
            "routing:\n  default_exploration: sample\n  seed: 1\n"
            f"rewards:\n  sidecar_id: {name}\n  spool_fsync_interval_ms: 2\n"
            f"state:\n  dir: {tmp / name}\n" + events_yaml(urls)
        )
        self.process = SidecarProcess(config, tmp / f"{name}.log")

    async def report(self, count: int, prefix: str) -> list[str]:
        """Route + ReportOutcome; the ids acknowledged as recorded. Any RPC failure fails the test."""
        return await report_outcomes(self.port, count, prefix)

    async def serving(self) -> tuple[int, str]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.admin_port}") as channel:
            info = await admin_pb2_grpc.AdminStub(channel).GetPolicy(admin_pb2.GetPolicyRequest(), timeout=5)
            return info.version, info.weights_sha256


async def test_cluster_node_trainer_and_sidecar_kill9_lose_nothing_and_converge(tmp_path):
    require_nats_server()
    make_tiny_checkpoint(tmp_path / "policy")
    cluster = NatsCluster(tmp_path / "nats")
    await asyncio.to_thread(cluster.start)
    (tmp_path / "trainer.yaml").write_text(trainer_yaml(tmp_path / "trainer", cluster.urls))
    trainer = TrainerProcess(tmp_path / "trainer.yaml", free_port(), tmp_path / "trainer.log")
    sidecars = [Sidecar(tmp_path, f"sidecar-{i}", cluster.urls) for i in range(3)]
    try:
        await asyncio.to_thread(trainer.start)
        for sidecar in sidecars:
            await asyncio.to_thread(sidecar.process.start)
        ids: list[str] = []
        ids += flat(await asyncio.gather(*(s.report(60, f"warm {n}") for n, s in enumerate(sidecars))))
        # Faults during traffic on the two sidecars that stay up.
        traffic = asyncio.gather(*(s.report(150, f"steady {n}") for n, s in enumerate(sidecars[:2])))
        await asyncio.sleep(0.5)
        await asyncio.to_thread(cluster.nodes[0].kill)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(trainer.kill)
        await asyncio.to_thread(sidecars[2].process.kill)  # its spool may hold unpublished events
        ids += flat(await traffic)
        await asyncio.to_thread(cluster.nodes[0].start)
        await asyncio.to_thread(trainer.start)
        await asyncio.to_thread(sidecars[2].process.start)
        ids += flat(await asyncio.gather(*(s.report(60, f"after {n}") for n, s in enumerate(sidecars))))
        deadline = time.monotonic() + 120
        stored: list[str] = []
        while time.monotonic() < deadline:
            stored = stored_event_ids(tmp_path / "trainer" / "events")
            if len(stored) >= len(ids):
                break
            await asyncio.sleep(0.5)
        assert len(stored) == len(set(stored)), "an event is in the trainer's log twice"
        assert sorted(stored) == sorted(ids)

        # Every sidecar converges on the trainer's latest published version (read again each time: the
        # trainer may publish once more while the sidecars catch up).
        def latest_published() -> int:
            return max(int(p.name[1:]) for p in (tmp_path / "trainer" / "checkpoints").glob("v*"))

        while True:
            latest = latest_published()
            serving = [await s.serving() for s in sidecars]
            converged = all(version == latest for version, _ in serving) and latest == latest_published()
            if converged or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.5)
        assert latest >= 2
        assert [version for version, _ in serving] == [latest] * 3
        assert len({sha for _, sha in serving}) == 1
    finally:
        for sidecar in sidecars:
            if sidecar.process.process is not None:
                sidecar.process.stop()
        if trainer.process is not None:
            trainer.stop()
        cluster.stop()
