"""A model-pool change through configuration, with a trainer and a sidecar running as real processes.

Neither process restarts. Traffic (Route + ReportOutcome) runs the whole time and no call fails:
1. ``fresh`` is added to the trainer's ``learner.arms``: the trainer publishes a version with it; the
   sidecar's catalog lacks it, so the sidecar keeps serving the old version and logs why.
2. ``fresh`` is added to the sidecar's catalog file: the sidecar re-reads it and swaps; decisions use it.
3. ``small-model`` leaves the trainer's pool: a version masks it (no decision picks it, whatever the
   exploration), a later one drops it; the sidecar swaps to both.
At the end every acknowledged outcome is in the trainer's event log exactly once.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import grpc
import pytest

from barp_sidecar.gen.barp.v1 import router_pb2, router_pb2_grpc
from tests.e2e.learning_processes import (
    SidecarProcess,
    TrainerProcess,
    free_port,
    scrape,
    stored_event_ids,
)
from tests.e2e.test_learning_loop_processes import sidecar_yaml as learning_sidecar_yaml
from tests.support.sidecar import ARMS, HASH_ENCODER, make_tiny_checkpoint

NEW = "fresh"
RETIRED = ARMS[0]


def trainer_yaml(data_dir: Path, arms: tuple[str, ...]) -> str:
    return (
        "server:\n  host: 127.0.0.1\n  port: 0\n  grace_s: 1\n"
        f"storage:\n  data_dir: {data_dir}\n"
        "metrics:\n  enabled: false\n"
        f"learner:\n  initial_policy: latest_or_cold\n  arms: [{', '.join(arms)}]\n"
        f"  encoder_id: {HASH_ENCODER.encoder_id}\n  encoder_dim: {HASH_ENCODER.dim}\n"
        f"  encoder_max_seq_length: {HASH_ENCODER.max_seq_length}\n  encoder_truncation: tail\n"
        "  tau_usd: 0.005\n  batch_size: 8\n"
        "  new_model_share: 0.3\n  new_model_min_events: 10000\n  retire_after_events: 40\n"
        "publish:\n  every_events: 100000\n  min_every_events: 0\n  every_s: 600\n"
    )


def catalog_yaml(models: tuple[str, ...]) -> str:
    return "providers:\n" + "".join(f"  - arm: {m}\n    enabled: false\n" for m in models)


def sidecar_yaml(tmp: Path, port: int, metrics_port: int, trainer_port: int) -> str:
    """The learning-loop test's sidecar, with a catalog file (re-read on change) and more exploration."""
    base = learning_sidecar_yaml(tmp, port, metrics_port, trainer_port)
    base = base.replace("  epsilon: 0.3\n", "  epsilon: 0.5\n")
    assert "epsilon: 0.5" in base
    return base + f"providers:\n  catalog_file: {tmp / 'catalog.yaml'}\n"


class Traffic:
    """Route + ReportOutcome in a loop until stopped; any failed call fails the test."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.decisions: list[tuple[str, str, int]] = []  # (decision id, model, policy version)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            i = 0
            while not self._stop.is_set():
                decision = await stub.Route(
                    router_pb2.RouteRequest(prompt=f"prompt {i % 97} #{i}"), timeout=10
                )
                ack = await stub.ReportOutcome(
                    router_pb2.OutcomeRequest(decision_id=decision.decision_id, quality=(i % 3) / 2),
                    timeout=10,
                )
                assert ack.recorded
                self.decisions.append((decision.decision_id, decision.model, decision.policy_version))
                i += 1
                await asyncio.sleep(0.005)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task  # re-raises a failed call


def trainer_latest(data_dir: Path) -> tuple[int, dict]:
    text = (data_dir / "checkpoints" / "LATEST").read_text().strip()
    version = int(text[1:])
    return version, json.loads((data_dir / "checkpoints" / text / "manifest.json").read_text())


async def until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not reached in {timeout_s} s"
        await asyncio.sleep(0.1)


@pytest.fixture
def world(tmp_path):
    make_tiny_checkpoint(tmp_path / "policy")
    (tmp_path / "trainer.yaml").write_text(trainer_yaml(tmp_path / "trainer", ARMS))
    (tmp_path / "catalog.yaml").write_text(catalog_yaml(ARMS))
    trainer = TrainerProcess(tmp_path / "trainer.yaml", free_port(), tmp_path / "trainer.log")
    port, metrics = free_port(), free_port()
    (tmp_path / "sidecar.yaml").write_text(sidecar_yaml(tmp_path, port, metrics, trainer.port))
    sidecar = SidecarProcess(tmp_path / "sidecar.yaml", tmp_path / "sidecar.log")
    yield tmp_path, trainer, sidecar, port, metrics
    for process in (sidecar, trainer):
        if process.process is not None:
            process.stop()


async def test_pool_change_through_configuration_without_restart(world):
    tmp, trainer, sidecar, port, metrics = world
    data = tmp / "trainer"
    await asyncio.to_thread(trainer.start)
    await asyncio.to_thread(sidecar.start)
    first, _ = trainer_latest(data)
    await until(
        lambda: scrape(metrics, "barp_policy_version") == first, 30, "the sidecar on the trainer's v1"
    )
    traffic = Traffic(port)
    traffic.start()
    await until(lambda: len(traffic.decisions) >= 30, 30, "traffic")

    # 1. The trainer adds the model; the sidecar's catalog does not have it yet.
    (tmp / "trainer.yaml").write_text(trainer_yaml(data, (*ARMS, NEW)))
    await until(lambda: trainer_latest(data)[1]["arms"] == [*ARMS, NEW], 30, "the trainer's version with it")
    added, manifest = trainer_latest(data)
    assert manifest["architecture"]["exploration_share"] == [1.0, 1.0, 1.0, 1.0, 0.3]
    await until(lambda: b"catalog_missing_model" in (tmp / "sidecar.log").read_bytes(), 30, "the refusal")
    assert scrape(metrics, "barp_policy_version") == first  # still serving the old version
    assert scrape(metrics, 'barp_policy_rejected_total{reason="catalog_missing_model"}') == 1

    # 2. The catalog gains the model: the sidecar re-reads it and swaps without a restart.
    (tmp / "catalog.yaml").write_text(catalog_yaml((*ARMS, NEW)))
    await until(lambda: scrape(metrics, "barp_policy_version") == added, 30, "the swap after the catalog")
    await until(lambda: any(m == NEW for _, m, _ in traffic.decisions), 30, "a decision for the new model")

    # 3. Retire a model: masked first (same arm list), then dropped.
    (tmp / "trainer.yaml").write_text(trainer_yaml(data, (*ARMS[1:], NEW)))
    await until(lambda: trainer_latest(data)[0] > added, 30, "the masking version")
    masked, manifest = trainer_latest(data)
    assert manifest["arms"] == [*ARMS, NEW] and manifest["architecture"]["exploration_share"][0] == 0.0
    await until(lambda: trainer_latest(data)[1]["arms"] == [*ARMS[1:], NEW], 60, "the dropping version")
    dropped, _ = trainer_latest(data)
    await until(lambda: scrape(metrics, "barp_policy_version") == dropped, 30, "the swap to the dropped list")
    await asyncio.sleep(0.5)
    await traffic.stop()

    after_mask = [m for _, m, version in traffic.decisions if version >= masked]
    assert after_mask and RETIRED not in after_mask  # epsilon_greedy at 0.5 never picks a masked model
    assert {v for _, _, v in traffic.decisions} >= {first, added, dropped}
    await until(lambda: scrape(metrics, "barp_spool_unacked_events") == 0, 60, "every event delivered")
    await asyncio.to_thread(sidecar.stop)
    await asyncio.to_thread(trainer.stop)
    stored = stored_event_ids(data / "events")
    ids = [decision_id for decision_id, _, _ in traffic.decisions]
    assert len(stored) == len(set(stored)) == len(ids)  # every acknowledged outcome once
    assert sorted(stored) == sorted(ids)
