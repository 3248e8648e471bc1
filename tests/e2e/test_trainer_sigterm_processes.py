"""Graceful stop of the active trainer replica, all real processes on loopback: ``nats-server -js``, two
trainer replicas (``failover.enabled``, ``lease_ttl_s: 4``) and two sidecars that talk only to the broker.

During traffic the active trainer gets SIGTERM. It stops training and publishing, releases the lease (a
delete at its revision) and exits 0; the standby is active within 2 s of the signal (the lease would
otherwise expire only 3-4 s after the last renewal; the measured time is printed). Then, as after a
kill -9: every acknowledged ReportOutcome is in the new active replica's log exactly once, its latest
version has trained on exactly the non-held-out events before its log offset, and both sidecars serve it.
"""

from __future__ import annotations

import asyncio
import signal
import time

from tests.e2e.learning_processes import TrainerProcess, free_port, scrape, stored_event_ids
from tests.e2e.test_nats_cluster_processes import Sidecar, flat
from tests.e2e.test_trainer_failover_processes import (
    HOLDOUT_EVERY,
    LEASE_TTL_S,
    active_line,
    manifest,
    trainer_yaml,
    versions,
    wait_for,
)
from tests.support.nats_server import NatsServer, require_nats_server
from tests.support.sidecar import make_tiny_checkpoint
from trainer.service.learner import is_holdout

SIGTERM_TAKEOVER_S = 2.0


async def test_sigterm_of_the_active_trainer_releases_the_lease_and_the_standby_takes_over_within_2s(
    tmp_path,
):
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
        ids = flat(await asyncio.gather(*(s.report(80, f"warm {n}") for n, s in enumerate(sidecars))))
        await wait_for(lambda: len(versions(dirs["a"])) >= 2, 30)  # a published from traffic
        traffic = asyncio.gather(*(s.report(100, f"steady {n}") for n, s in enumerate(sidecars)))
        await asyncio.sleep(1.0)
        process_a = trainers["a"].process
        assert process_a is not None
        process_a.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        taken = await wait_for(lambda: active_line(trainers["b"].log_path), 20, interval_s=0.02)
        takeover_s = time.monotonic() - signalled
        exit_code = await asyncio.to_thread(process_a.wait, 30)
        print(
            f"takeover after SIGTERM: {takeover_s:.2f} s (lease_ttl_s {LEASE_TTL_S}, hand-over "
            f"{taken['takeover_s']} s, resumed v{taken['resumed_version']})"
        )
        assert exit_code == 0
        assert '"trainer_lease_released"' in trainers["a"].log_path.read_text()
        assert takeover_s < SIGTERM_TAKEOVER_S
        ids += flat(await traffic)
        ids += flat(await asyncio.gather(*(s.report(40, f"after {n}") for n, s in enumerate(sidecars))))
        assert scrape(metrics["b"], 'barp_trainer_lease_state{state="active"}') == 1.0

        # Every acknowledged outcome is in the new active replica's log exactly once.
        stored = await wait_for(
            lambda: (s := stored_event_ids(dirs["b"] / "events")) and len(s) >= len(ids) and s, 60
        )
        assert len(stored) == len(set(stored)), "an event is in the log twice"
        assert sorted(stored) == sorted(ids)

        # b resumed from a's latest version by stream position; its newest version trained on exactly the
        # non-held-out events before its log offset, each once.
        resumed = taken["resumed_version"]
        assert resumed is not None and resumed >= 2

        def untrained_after(version: int) -> int:
            offset = manifest(dirs["b"], version)["training"]["log_offset"]
            return len([i for i in stored[offset:] if not is_holdout(i, HOLDOUT_EVERY)])

        newest = await wait_for(
            lambda: (v := versions(dirs["b"])[-1]) > resumed and untrained_after(v) < 16 and v, 60
        )
        training = manifest(dirs["b"], newest)["training"]
        assert training["stream_sequence"] > 0 and training["stream"].startswith("BARP_EVENTS@")
        trained = [i for i in stored[: training["log_offset"]] if not is_holdout(i, HOLDOUT_EVERY)]
        assert training["events_trained"] == len(trained)

        deadline = time.monotonic() + 60
        while True:
            latest = versions(dirs["b"])[-1]
            serving = [await s.serving() for s in sidecars]
            if all(v == latest for v, _ in serving) or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.3)
        assert [v for v, _ in serving] == [latest] * 2
    finally:
        for sidecar in sidecars:
            if sidecar.process.process is not None:
                sidecar.process.stop()
        for trainer in trainers.values():
            if trainer.process is not None and trainer.process.poll() is None:
                trainer.stop()
        nats.stop()
