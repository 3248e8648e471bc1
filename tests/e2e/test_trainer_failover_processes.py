"""Trainer failover, all real processes on loopback: ``nats-server -js``, two trainer replicas
(``failover.enabled``, one lease in JetStream KV, ``lease_ttl_s: 4``) and two sidecars that talk only to
the broker.

During traffic the active trainer is stopped, by kill -9 or by SIGTERM. After a kill the standby is
active within 15 s (when the lease expires); after SIGTERM the active replica stops training and
publishing, releases the lease (a delete at its revision) and exits 0, and the standby is active within
2 s (the measured times are printed). Then, either way: every acknowledged ReportOutcome is in the new
active replica's log exactly once, its latest published version has trained on exactly the non-held-out
events before its log offset (none lost, none twice, across the hand-over) and records its stream
position, it published only versions after the one it resumed from, no Route or ReportOutcome failed,
and both sidecars serve its latest version. About 15-30 s each on a busy 2-core machine.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time

import pytest

from tests.e2e.broker_processes import (
    Sidecar,
    active_line,
    covering_version,
    failover_replicas,
    flat,
    log_holding,
    manifest,
    start_active_then_the_rest,
    trained,
    versions,
    wait_for,
)
from tests.e2e.learning_processes import scrape
from tests.support.nats_server import NatsServer, require_nats_server
from tests.support.sidecar import make_tiny_checkpoint

LEASE_TTL_S = 4.0
# How the active replica is stopped -> (signal, its exit code, the most seconds until the standby is active).
STOPS = {
    "kill -9": (signal.SIGKILL, -signal.SIGKILL, 15.0),
    "SIGTERM": (signal.SIGTERM, 0, 2.0),
}


@pytest.mark.parametrize("stop", list(STOPS))
async def test_the_standby_takes_over_from_a_stopped_active_trainer_losing_and_repeating_nothing(
    tmp_path, stop
):
    stop_signal, exit_code, takeover_limit_s = STOPS[stop]
    require_nats_server()
    make_tiny_checkpoint(tmp_path / "policy")
    nats = NatsServer(tmp_path / "nats-store")
    await asyncio.to_thread(nats.start)
    dirs, metrics, trainers = failover_replicas(tmp_path, [nats.url], LEASE_TTL_S)
    sidecars = [Sidecar(tmp_path, f"sidecar-{i}", [nats.url]) for i in range(2)]
    try:
        await start_active_then_the_rest(trainers, sidecars)
        assert scrape(metrics["b"], 'barp_trainer_lease_state{state="standby"}') == 1.0
        ids = flat(await asyncio.gather(*(s.report(80, f"warm {n}") for n, s in enumerate(sidecars))))
        await wait_for(lambda: len(versions(dirs["a"])) >= 2, 30)  # a published from traffic
        traffic = asyncio.gather(*(s.report(100, f"steady {n}") for n, s in enumerate(sidecars)))
        await asyncio.sleep(1.0)
        process_a = trainers["a"].process
        assert process_a is not None
        process_a.send_signal(stop_signal)
        stopped = time.monotonic()
        taken = await wait_for(lambda: active_line(trainers["b"].log_path), 20, interval_s=0.02)
        takeover_s = time.monotonic() - stopped
        print(
            f"takeover after {stop}: {takeover_s:.2f} s (lease_ttl_s {LEASE_TTL_S}, hand-over "
            f"{taken['takeover_s']} s, resumed v{taken['resumed_version']})"
        )
        assert await asyncio.to_thread(process_a.wait, 30) == exit_code
        assert ('"trainer_lease_released"' in trainers["a"].log_path.read_text()) == (stop == "SIGTERM")
        assert takeover_s <= takeover_limit_s
        ids += flat(await traffic)
        ids += flat(await asyncio.gather(*(s.report(40, f"after {n}") for n, s in enumerate(sidecars))))
        assert scrape(metrics["b"], 'barp_trainer_lease_state{state="active"}') == 1.0

        # Every acknowledged outcome is in the new active replica's log exactly once.
        stored = await log_holding(dirs["b"], ids, 60)
        assert len(stored) == len(set(stored)), "an event is in the log twice"
        assert sorted(stored) == sorted(ids)

        # b resumed from a's latest published version and published only newer ones; its latest version
        # has trained on exactly the non-held-out events before its log offset, each once.
        resumed = taken["resumed_version"]
        assert resumed is not None and resumed >= 2

        # A version after the hand-over that includes every full batch (< one batch of 16 left pending).
        newest = await covering_version(dirs["b"], stored, resumed, 60)
        training = manifest(dirs["b"], newest)["training"]
        assert training["events_trained"] == len(trained(stored[: training["log_offset"]]))
        assert training["stream_sequence"] > 0 and training["stream"].startswith("BARP_EVENTS@")
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
