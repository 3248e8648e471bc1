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

from tests.e2e.broker_processes import Sidecar, events_yaml, flat, versions
from tests.e2e.learning_processes import TrainerProcess, free_port, stored_event_ids
from tests.support.nats_server import NatsCluster, require_nats_server
from tests.support.sidecar import ARMS, HASH_ENCODER, make_tiny_checkpoint


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
            return versions(tmp_path / "trainer")[-1]

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
