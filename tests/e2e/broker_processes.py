"""Helpers for the real-process tests on NATS JetStream: sidecars that talk only to the broker, trainer
replicas with failover, and the checks on what a trainer trained on (its log up to a published version's
``training.log_offset``) and on the policy pointer sidecars follow (KV ``latest``).

Owns the YAML these processes run with and the reads of a trainer's data directory; starting and killing
processes is ``learning_processes``'s, the broker itself ``tests.support.nats_server``'s.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc

from barp_sidecar.broker.settings import EventsSettings
from barp_sidecar.gen.barp.v1 import admin_pb2, admin_pb2_grpc
from barp_sidecar.policy.nats_policies import LATEST_KEY, parse_announcement
from tests.e2e.learning_processes import (
    SidecarProcess,
    TrainerProcess,
    free_port,
    report_outcomes,
    stored_event_ids,
)
from tests.e2e.test_learning_loop_processes import trainer_yaml as learning_trainer_yaml
from trainer.service.learner import is_holdout

T = TypeVar("T")
HOLDOUT_EVERY = 10  # the default learner.holdout_every
BATCH_SIZE = 16  # learner.batch_size in the trainers' YAML


def events_yaml(urls: list[str]) -> str:
    """The ``events`` section for the nats backend: one stream / bucket replica per broker node given."""
    return (
        f"events:\n  backend: nats\n  nats_urls: [{', '.join(urls)}]\n  stream_replicas: {len(urls)}\n"
        "  reconnect_initial_backoff_s: 0.05\n  reconnect_max_backoff_s: 0.5\n  connect_timeout_s: 1\n"
    )


def failover_trainer_yaml(
    data_dir: Path, urls: list[str], replica: str, metrics_port: int, lease_ttl_s: float
) -> str:
    """The learning-loop test's cold trainer, publishing often (gate always passes), as a failover replica."""
    base = learning_trainer_yaml(data_dir, metrics_port)
    return (
        base[: base.index("publish:")]
        + "publish:\n  every_events: 80\n  min_every_events: 0\n  every_s: 1\n"
        + "  gate_min_holdout_events: 3\n  gate_margin: 1.0\n"
        + events_yaml(urls)
        + f"failover:\n  enabled: true\n  replica_id: {replica}\n  lease_ttl_s: {lease_ttl_s}\n"
    )


def failover_replicas(
    tmp: Path, urls: list[str], lease_ttl_s: float
) -> tuple[dict[str, Path], dict[str, int], dict[str, TrainerProcess]]:
    """Trainer replicas "a" and "b" (not started): their data dirs, metrics ports and processes."""
    dirs = {r: tmp / f"trainer-{r}" for r in ("a", "b")}
    metrics = {r: free_port() for r in dirs}
    trainers = {}
    for replica, data_dir in dirs.items():
        config = tmp / f"trainer-{replica}.yaml"
        config.write_text(failover_trainer_yaml(data_dir, urls, replica, metrics[replica], lease_ttl_s))
        trainers[replica] = TrainerProcess(config, free_port(), tmp / f"trainer-{replica}.log")
    return dirs, metrics, trainers


async def start_active_then_the_rest(trainers: dict[str, TrainerProcess], sidecars: list[Sidecar]) -> None:
    """Replica a first, until it is active; then the standby b and the sidecars, side by side."""
    await asyncio.to_thread(trainers["a"].start)
    await wait_for(lambda: active_line(trainers["a"].log_path), 30)
    await asyncio.gather(
        asyncio.to_thread(trainers["b"].start), *(asyncio.to_thread(s.process.start) for s in sidecars)
    )


def flat(parts: list[list[str]]) -> list[str]:
    return [item for part in parts for item in part]


class Sidecar:
    """A sidecar process whose events and policies go only through the broker (no ``trainer.target``)."""

    def __init__(self, tmp: Path, name: str, urls: list[str]) -> None:
        # Port 0: every start binds free ports and logs them (a port picked ahead could be taken by another
        # process before a restart after kill -9 binds it again; seen once in a loaded suite loop).
        config = tmp / f"{name}.yaml"
        config.write_text(
            "server:\n  host: 127.0.0.1\n  port: 0\n  grace_s: 1\n"
            "metrics:\n  enabled: false\n"
            "admin:\n  enabled: true\n  port: 0\n"
            f"policy:\n  checkpoint_dir: {tmp / 'policy'}\n  device: cpu\n"
            "routing:\n  default_exploration: sample\n  seed: 1\n"
            f"rewards:\n  sidecar_id: {name}\n  spool_fsync_interval_ms: 2\n"
            f"state:\n  dir: {tmp / name}\n" + events_yaml(urls)
        )
        self.process = SidecarProcess(config, tmp / f"{name}.log")

    @property
    def port(self) -> int:
        """The gRPC port the latest start bound (from its ``server_started`` line)."""
        return int(self.process.ready_record["port"])

    @property
    def admin_port(self) -> int:
        return int(self.process.ready_record["admin_port"])

    async def report(self, count: int, prefix: str, until: asyncio.Event | None = None) -> list[str]:
        """Route + ReportOutcome (at most ``count``, fewer once ``until`` is set); the ids acknowledged as
        recorded. Any RPC failure fails the test."""
        return await report_outcomes(self.port, count, prefix, until)

    async def serving(self) -> tuple[int, str]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.admin_port}") as channel:
            info = await admin_pb2_grpc.AdminStub(channel).GetPolicy(admin_pb2.GetPolicyRequest(), timeout=5)
            return info.version, info.weights_sha256


def versions(data_dir: Path) -> list[int]:
    """The versions in a trainer's checkpoint store, ascending."""
    return sorted(int(p.name[1:]) for p in (data_dir / "checkpoints").glob("v[0-9]*"))


def manifest(data_dir: Path, version: int) -> dict[str, Any]:
    return json.loads((data_dir / "checkpoints" / f"v{version}" / "manifest.json").read_text())


def active_line(log_path: Path) -> dict[str, Any] | None:
    """The ``trainer_active`` log line of a failover replica (JSON), or None before it took over."""
    for line in log_path.read_text().splitlines():
        if '"trainer_active"' in line:
            return json.loads(line[line.index("{") :])
    return None


async def wait_for(condition: Callable[[], T], timeout_s: float, interval_s: float = 0.1) -> T:
    """Poll ``condition`` (in a thread) until it returns something truthy; AssertionError after
    ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await asyncio.to_thread(condition)
        if value:
            return value
        await asyncio.sleep(interval_s)
    raise AssertionError(f"not reached within {timeout_s} s")


def trained(event_ids: list[str]) -> list[str]:
    """The events of a log slice the learner trains on (the rest is the held-out slice)."""
    return [i for i in event_ids if not is_holdout(i, HOLDOUT_EVERY)]


async def covering_version(data_dir: Path, stored: list[str], after: int, timeout_s: float) -> int:
    """A version newer than ``after`` that leaves less than one batch of ``stored`` (the trainer's log)
    untrained: every full batch has been trained into a published version."""

    def newest_covering() -> int | None:
        version = versions(data_dir)[-1]
        offset = manifest(data_dir, version)["training"]["log_offset"]
        return version if version > after and len(trained(stored[offset:])) < BATCH_SIZE else None

    return await wait_for(newest_covering, timeout_s)


async def log_holding(data_dir: Path, ids: list[str], timeout_s: float) -> list[str]:
    """The trainer's log (event ids in log order) once it holds at least ``len(ids)`` events."""
    return await wait_for(
        lambda: (s := stored_event_ids(data_dir / "events")) and len(s) >= len(ids) and s, timeout_s
    )


async def latest_pointer(urls: list[str]) -> tuple[int, str]:
    """(version, weights sha256) of KV ``latest``, the pointer sidecars follow, read from the broker."""
    import nats

    client = await nats.connect(servers=urls, connect_timeout=2, max_reconnect_attempts=3)
    try:
        kv = await client.jetstream(timeout=5).key_value(EventsSettings().policy_kv_bucket)
        announced = parse_announcement((await kv.get(LATEST_KEY)).value or b"")
        return announced.version, announced.weights_sha256
    finally:
        await client.close()
