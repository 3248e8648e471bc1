"""Trainer failover, all real processes on loopback: ``nats-server -js``, two trainer replicas
(``failover.enabled``, one lease in JetStream KV) and two sidecars that talk only to the broker.

During traffic the active trainer is killed with SIGKILL. Then: the standby is active within 15 s of the
kill (the measured time is printed), every acknowledged ReportOutcome is in its log exactly once, its
latest published version has trained on exactly the non-held-out events before its log offset (none lost,
none twice, across the hand-over), it published only versions after the one it resumed from, no Route or
ReportOutcome failed, and both sidecars serve its latest version. About 30 s on a busy 2-core machine.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

from tests.e2e.learning_processes import TrainerProcess, free_port, scrape, stored_event_ids
from tests.e2e.test_learning_loop_processes import trainer_yaml as learning_trainer_yaml
from tests.e2e.test_nats_cluster_processes import Sidecar, flat
from tests.support.nats_server import NatsServer, require_nats_server
from tests.support.sidecar import make_tiny_checkpoint
from trainer.service.learner import is_holdout

LEASE_TTL_S = 4.0
HOLDOUT_EVERY = 10  # the default learner.holdout_every


def trainer_yaml(data_dir: Path, url: str, replica: str, metrics_port: int) -> str:
    """The learning-loop test's cold trainer, publishing often (gate always passes), as a failover replica."""
    base = learning_trainer_yaml(data_dir, metrics_port)
    return (
        base[: base.index("publish:")]
        + "publish:\n  every_events: 80\n  min_every_events: 0\n  every_s: 1\n"
        + "  gate_min_holdout_events: 3\n  gate_margin: 1.0\n"
        + f"events:\n  backend: nats\n  nats_urls: [{url}]\n"
        + "  reconnect_initial_backoff_s: 0.05\n  reconnect_max_backoff_s: 0.5\n  connect_timeout_s: 1\n"
        + f"failover:\n  enabled: true\n  replica_id: {replica}\n  lease_ttl_s: {LEASE_TTL_S}\n"
    )


def versions(data_dir: Path) -> list[int]:
    return sorted(int(p.name[1:]) for p in (data_dir / "checkpoints").glob("v[0-9]*"))


def manifest(data_dir: Path, version: int) -> dict:
    return json.loads((data_dir / "checkpoints" / f"v{version}" / "manifest.json").read_text())


def active_line(log_path: Path) -> dict | None:
    for line in log_path.read_text().splitlines():
        if '"trainer_active"' in line:
            return json.loads(line[line.index("{") :])
    return None


async def wait_for(condition, timeout_s: float, interval_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await asyncio.to_thread(condition)
        if value:
            return value
        await asyncio.sleep(interval_s)
    raise AssertionError(f"not reached within {timeout_s} s")


async def test_kill9_of_the_active_trainer_hands_over_within_15s_losing_and_repeating_nothing(tmp_path):
    require_nats_server()
    make_tiny_checkpoint(tmp_path / "policy")
    nats = NatsServer(tmp_path / "nats-store")
    await asyncio.to_thread(nats.start)
    dirs = {r: tmp_path / f"trainer-{r}" for r in ("a", "b")}
    metrics = {r: free_port() for r in dirs}
    trainers = {}
    for replica, data_dir in dirs.items():
        config = tmp_path / f"trainer-{replica}.yaml"
        config.write_text(trainer_yaml(data_dir, nats.url, replica, metrics[replica]))
        trainers[replica] = TrainerProcess(config, free_port(), tmp_path / f"trainer-{replica}.log")
    sidecars = [Sidecar(tmp_path, f"sidecar-{i}", [nats.url]) for i in range(2)]
    try:
        await asyncio.to_thread(trainers["a"].start)
        await wait_for(lambda: active_line(trainers["a"].log_path), 30)
        await asyncio.to_thread(trainers["b"].start)  # the standby
        for sidecar in sidecars:
            await asyncio.to_thread(sidecar.process.start)
        assert scrape(metrics["b"], 'barp_trainer_lease_state{state="standby"}') == 1.0
        ids = flat(await asyncio.gather(*(s.report(80, f"warm {n}") for n, s in enumerate(sidecars))))
        await wait_for(lambda: len(versions(dirs["a"])) >= 2, 30)  # a published from traffic
        traffic = asyncio.gather(*(s.report(100, f"steady {n}") for n, s in enumerate(sidecars)))
        await asyncio.sleep(1.0)
        await asyncio.to_thread(trainers["a"].kill)
        killed = time.monotonic()
        taken = await wait_for(lambda: active_line(trainers["b"].log_path), 20, interval_s=0.05)
        takeover_s = time.monotonic() - killed
        print(
            f"takeover after kill -9: {takeover_s:.2f} s (lease_ttl_s {LEASE_TTL_S}, hand-over "
            f"{taken['takeover_s']} s, resumed v{taken['resumed_version']})"
        )
        assert takeover_s <= 15.0
        ids += flat(await traffic)
        ids += flat(await asyncio.gather(*(s.report(40, f"after {n}") for n, s in enumerate(sidecars))))
        assert scrape(metrics["b"], 'barp_trainer_lease_state{state="active"}') == 1.0

        # Every acknowledged outcome is in the new active replica's log exactly once.
        stored = await wait_for(
            lambda: (s := stored_event_ids(dirs["b"] / "events")) and len(s) >= len(ids) and s, 60
        )
        assert len(stored) == len(set(stored)), "an event is in the log twice"
        assert sorted(stored) == sorted(ids)

        # b resumed from a's latest published version and published only newer ones; its latest version
        # has trained on exactly the non-held-out events before its log offset, each once.
        resumed = taken["resumed_version"]
        assert resumed is not None and resumed >= 2

        def untrained_after(version: int) -> int:
            offset = manifest(dirs["b"], version)["training"]["log_offset"]
            return len([i for i in stored[offset:] if not is_holdout(i, HOLDOUT_EVERY)])

        # A version after the hand-over that includes every full batch (< one batch of 16 left pending).
        newest = await wait_for(
            lambda: (v := versions(dirs["b"])[-1]) > resumed and untrained_after(v) < 16 and v, 60
        )
        training = manifest(dirs["b"], newest)["training"]
        trained = [i for i in stored[: training["log_offset"]] if not is_holdout(i, HOLDOUT_EVERY)]
        assert training["events_trained"] == len(trained)
        assert (
            manifest(dirs["a"], resumed)["weights_sha256"] == manifest(dirs["b"], resumed)["weights_sha256"]
        )

        # Both sidecars converge on b's latest version (read again: b may publish once more meanwhile).
        deadline = time.monotonic() + 60
        while True:
            latest = versions(dirs["b"])[-1]
            serving = [await s.serving() for s in sidecars]
            if all(v == latest for v, _ in serving) or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.3)
        assert [v for v, _ in serving] == [latest] * 2
        assert {sha for _, sha in serving} == {manifest(dirs["b"], latest)["weights_sha256"]}
        assert re.search(r"trainer_lease_acquired", trainers["b"].log_path.read_text())
    finally:
        for sidecar in sidecars:
            if sidecar.process.process is not None:
                sidecar.process.stop()
        for trainer in trainers.values():
            if trainer.process is not None and trainer.process.poll() is None:
                trainer.stop()
        nats.stop()
