"""Real processes, killed for real: a sidecar (hash encoder, tiny policy) and a trainer.

- kill -9 the sidecar with unacknowledged events in its spool, restart it: they are delivered.
- kill -9 the trainer while the sidecar publishes, restart it: every reported outcome is in the event log
  exactly once (count and ids equal).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.e2e.learning_processes import (
    SidecarProcess,
    TrainerProcess,
    free_port,
    report_outcomes,
    scrape,
    stored_event_ids,
)
from tests.support.sidecar import ARMS, HASH_ENCODER, make_tiny_checkpoint


def trainer_yaml(data_dir: Path, metrics_port: int) -> str:
    return (
        "server:\n  host: 127.0.0.1\n  port: 0\n  grace_s: 1\n"
        f"storage:\n  data_dir: {data_dir}\n"
        f"metrics:\n  enabled: true\n  port: {metrics_port}\n"
        f"learner:\n  initial_policy: latest_or_cold\n  arms: [{', '.join(ARMS)}]\n"
        f"  encoder_id: {HASH_ENCODER.encoder_id}\n  encoder_dim: {HASH_ENCODER.dim}\n"
        f"  encoder_max_seq_length: {HASH_ENCODER.max_seq_length}\n  encoder_truncation: tail\n"
        "  tau_usd: 0.005\n  batch_size: 16\n"
        "publish:\n  every_events: 100000\n  min_every_events: 0\n  every_s: 600\n"
    )


def sidecar_yaml(tmp: Path, port: int, metrics_port: int, trainer_port: int) -> str:
    return (
        f"server:\n  host: 127.0.0.1\n  port: {port}\n  grace_s: 1\n"
        f"metrics:\n  enabled: true\n  port: {metrics_port}\n"
        "admin:\n  enabled: false\n"
        f"policy:\n  checkpoint_dir: {tmp / 'policy'}\n  device: cpu\n"
        "routing:\n  default_exploration: epsilon_greedy\n  epsilon: 0.3\n  seed: 1\n"
        f"rewards:\n  spool_dir: {tmp / 'spool'}\n  spool_fsync_interval_ms: 2\n"
        f"trainer:\n  target: 127.0.0.1:{trainer_port}\n  checkpoint_cache_dir: {tmp / 'cache'}\n"
        "  reconnect_initial_backoff_s: 0.05\n  reconnect_max_backoff_s: 0.3\n"
    )


class World:
    def __init__(self, tmp: Path) -> None:
        make_tiny_checkpoint(tmp / "policy")
        self.tmp = tmp
        self.trainer_metrics = free_port()
        self.sidecar_port = free_port()
        self.sidecar_metrics = free_port()
        (tmp / "trainer.yaml").write_text(trainer_yaml(tmp / "trainer", self.trainer_metrics))
        self.trainer = TrainerProcess(tmp / "trainer.yaml", free_port(), tmp / "trainer.log")
        (tmp / "sidecar.yaml").write_text(
            sidecar_yaml(tmp, self.sidecar_port, self.sidecar_metrics, self.trainer.port)
        )
        self.sidecar = SidecarProcess(tmp / "sidecar.yaml", tmp / "sidecar.log")

    async def report(self, count: int, prefix: str) -> list[str]:
        """Route + ReportOutcome ``count`` prompts; returns the decision ids (each recorded durably)."""
        return await report_outcomes(self.sidecar_port, count, prefix)

    async def wait_delivered(self, timeout_s: float = 60.0) -> None:
        """Until the sidecar's spool has nothing unacknowledged (every event durable in the trainer)."""
        deadline = time.monotonic() + timeout_s
        unacked = None
        while time.monotonic() < deadline:
            unacked = scrape(self.sidecar_metrics, "barp_spool_unacked_events")
            if unacked == 0:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"not delivered: unacked={unacked}")

    def stored_ids(self) -> list[str]:
        return stored_event_ids(self.tmp / "trainer" / "events")


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    for process in (w.sidecar, w.trainer):
        if process.process is not None:
            process.stop()


async def test_sidecar_kill9_with_unacknowledged_spool_is_delivered_after_restart(world):
    await asyncio.to_thread(world.sidecar.start)  # the trainer is not running: nothing can be acknowledged
    ids = await world.report(60, "before crash")
    assert scrape(world.sidecar_metrics, "barp_spool_unacked_events") == 60
    await asyncio.to_thread(world.sidecar.kill)
    await asyncio.to_thread(world.trainer.start)
    await asyncio.to_thread(world.sidecar.start)
    await world.wait_delivered()
    await asyncio.to_thread(world.sidecar.stop)
    await asyncio.to_thread(world.trainer.stop)
    stored = world.stored_ids()
    assert sorted(stored) == sorted(ids)


async def test_trainer_kill9_while_the_sidecar_publishes_loses_and_duplicates_nothing(world):
    await asyncio.to_thread(world.trainer.start)
    await asyncio.to_thread(world.sidecar.start)
    reporting = asyncio.create_task(world.report(300, "steady"))
    await asyncio.sleep(0.5)
    await asyncio.to_thread(world.trainer.kill)
    ids = await reporting  # routing and recording continue while the trainer is down
    ids += await world.report(50, "trainer down")
    await asyncio.to_thread(world.trainer.start)
    await world.wait_delivered()
    await asyncio.to_thread(world.sidecar.stop)
    await asyncio.to_thread(world.trainer.stop)
    stored = world.stored_ids()
    assert len(stored) == len(ids) == len(set(stored))
    assert sorted(stored) == sorted(ids)
