"""NATS scale-out benchmark: Route p99 while the sidecar publishes reward events to JetStream (vs idle),
and the time from a policy publication to every sidecar serving it.

All real processes on 127.0.0.1: one ``nats-server -js`` and ``--sidecars`` ``barp-sidecar serve``
processes (hash:32 encoder, a tiny 4-model policy, ``events.backend: nats``, no trainer target: events go
to the stream, policies come from the Object Store + KV). The trainer side is played by this process with
the trainer's own code (``CheckpointStore`` + ``PolicyAnnouncer`` + ``NatsPolicyMirror``).

- Route latency: sidecar 0 takes ``--routes`` Route calls at 16 in flight, idle, then again while this
  process reports an outcome for every decision (each one appended to the spool with fsync and published
  to JetStream with its ack awaited); ``--rounds`` interleaved rounds of each phase (drift on a shared
  machine hits both alike), p50/p99 of Route only over the pooled rounds, side by side in one run. A third
  phase sends the same Route + ReportOutcome calls to a reference sidecar with no broker and no trainer
  (outcomes only spooled), so "publishing / reporting without a broker" is the publisher's own share of
  the latency and "reporting without a broker / idle" the outcome path's.
- Propagation: ``--versions`` times, publish a new version (store + announce; the mirror uploads it and
  moves KV ``latest``) and poll every sidecar's Admin GetPolicy every 10 ms until all serve it; p50/p95
  of the time until the last sidecar serves it.

    python -m bench.nats_policies --sidecars 8 --routes 2000 --versions 20 --json out/bench/nats_policies.json
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from barp_sidecar.broker.nats_connection import NatsConnector
from barp_sidecar.broker.settings import EventsBackend, EventsSettings
from barp_sidecar.gen.barp.v1 import admin_pb2, admin_pb2_grpc, router_pb2, router_pb2_grpc
from barp_sidecar.policy.checkpoint import CheckpointStore, load_checkpoint
from bench.nats_transport import write_results
from tests.e2e.learning_processes import SidecarProcess, free_port
from tests.support.nats_server import NatsServer
from tests.support.sidecar import make_tiny_checkpoint
from trainer.service.nats_policy_mirror import NatsPolicyMirror
from trainer.service.policy_source import PolicyAnnouncer, announcement_for


def sidecar_yaml(work: Path, name: str, port: int, admin_port: int, url: str | None) -> str:
    """A bench sidecar; ``url`` None: the reference one (no broker, no trainer: outcomes only spooled)."""
    text = (
        f"server:\n  host: 127.0.0.1\n  port: {port}\n  grace_s: 1\n"
        "metrics:\n  enabled: false\n"
        f"admin:\n  enabled: true\n  port: {admin_port}\n"
        f"policy:\n  checkpoint_dir: {work / 'store' / 'v1'}\n  device: cpu\n  cpu_threads: 1\n"
        "routing:\n  default_exploration: sample\n  seed: 1\n"
        f"rewards:\n  sidecar_id: {name}\n"
        f"state:\n  dir: {work / name}\n"
    )
    if url is None:
        return text
    return text + (
        f"events:\n  backend: nats\n  nats_urls: [{url}]\n"
        "  reconnect_initial_backoff_s: 0.05\n  reconnect_max_backoff_s: 0.5\n"
    )


async def route_phase(port: int, calls: int, report: bool) -> dict[str, Any]:
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(calls):
        queue.put_nowait(i)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = router_pb2_grpc.RouterStub(channel)

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                start = time.perf_counter()
                decision = await stub.Route(
                    router_pb2.RouteRequest(prompt=f"prompt {i % 97} {i}"), timeout=10
                )
                latencies.append(time.perf_counter() - start)
                if report:
                    ack = await stub.ReportOutcome(
                        router_pb2.OutcomeRequest(decision_id=decision.decision_id, quality=0.5), timeout=10
                    )
                    assert ack.recorded

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(16)))
        elapsed = time.perf_counter() - start
    return {"calls": calls, "seconds": elapsed, "latencies_s": latencies}


def pooled(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """p50/p99 over the latencies of every round of one phase, and each round's p99."""
    ms = np.array([x for r in rounds for x in r["latencies_s"]]) * 1000
    calls = sum(int(r["calls"]) for r in rounds)
    return {
        "calls": calls,
        "rounds": len(rounds),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "round_p99_ms": [float(np.percentile(np.array(r["latencies_s"]) * 1000, 99)) for r in rounds],
        "routes_per_s": calls / sum(float(r["seconds"]) for r in rounds),
    }


async def serving_version(admin_port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{admin_port}") as channel:
        info = await admin_pb2_grpc.AdminStub(channel).GetPolicy(admin_pb2.GetPolicyRequest(), timeout=5)
        return int(info.version)


async def run(sidecars: int, routes: int, versions: int, rounds: int, work: Path) -> dict[str, Any]:
    store = CheckpointStore(work / "store")
    make_tiny_checkpoint(store.path(1), version=1, seed=1)
    store.set_latest(1)
    broker = NatsServer(work / "nats").start()
    processes: list[tuple[SidecarProcess, int, int]] = []
    announcer = PolicyAnnouncer()
    settings = EventsSettings(backend=EventsBackend.NATS, nats_urls=(broker.url,))
    mirror = NatsPolicyMirror(NatsConnector(settings, {}, "bench-trainer"), store, announcer)
    try:
        await announcer.publish(announcement_for(store, load_checkpoint(store.path(1)).manifest))
        await mirror.start()
        for i in range(sidecars):
            port, admin_port = free_port(), free_port()
            config = work / f"sidecar-{i}.yaml"
            config.write_text(sidecar_yaml(work, f"sidecar-{i}", port, admin_port, broker.url))
            process = SidecarProcess(config, work / f"sidecar-{i}.log")
            processes.append((process, port, admin_port))
        reference_port = free_port()
        config = work / "reference.yaml"
        config.write_text(sidecar_yaml(work, "reference", reference_port, free_port(), None))
        # Stopped with the others (also when a start fails); admin port 0 keeps it out of propagation.
        processes.append((SidecarProcess(config, work / "reference.log"), reference_port, 0))
        await asyncio.gather(*(asyncio.to_thread(p.start, 180.0) for p, _, _ in processes))
        port0 = processes[0][1]
        await route_phase(port0, 200, report=False)  # warm-up
        await route_phase(reference_port, 200, report=False)
        idle_rounds, publishing_rounds, reporting_rounds = [], [], []
        for _ in range(rounds):  # interleaved, so drift on a shared machine hits every phase alike
            idle_rounds.append(await route_phase(port0, routes, report=False))
            publishing_rounds.append(await route_phase(port0, routes, report=True))
            reporting_rounds.append(await route_phase(reference_port, routes, report=True))
        idle, publishing = pooled(idle_rounds), pooled(publishing_rounds)
        reporting = pooled(reporting_rounds)
        propagation: list[float] = []
        for version in range(2, versions + 2):
            make_tiny_checkpoint(store.path(version), version=version, seed=version)
            store.set_latest(version)
            start = time.perf_counter()
            await announcer.publish(announcement_for(store, load_checkpoint(store.path(version)).manifest))
            deadline = start + 30
            while True:
                served = await asyncio.gather(*(serving_version(a) for _, _, a in processes if a))
                if all(v == version for v in served):
                    break
                assert time.perf_counter() < deadline, f"v{version} not served everywhere: {served}"
                await asyncio.sleep(0.01)
            propagation.append(time.perf_counter() - start)
    finally:
        await announcer.close()
        await mirror.close()
        for process, _, _ in processes:
            if process.process is not None:
                process.stop()
        broker.stop()
    seconds = np.array(propagation)
    return {
        "route_idle": idle,
        "route_publishing": publishing,
        "route_reporting_without_broker": reporting,
        "p99_ratio": publishing["p99_ms"] / idle["p99_ms"],
        "p99_ratio_publishing_vs_reporting_without_broker": publishing["p99_ms"] / reporting["p99_ms"],
        "propagation": {
            "sidecars": sidecars,
            "versions": len(propagation),
            "p50_s": float(np.percentile(seconds, 50)),
            "p95_s": float(np.percentile(seconds, 95)),
            "max_s": float(seconds.max()),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sidecars", type=int, default=8)
    parser.add_argument("--routes", type=int, default=2000)
    parser.add_argument("--versions", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved idle/publishing Route rounds")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.sidecars < 1 or args.routes < 100 or args.versions < 1 or args.rounds < 1:
        parser.error("--sidecars >= 1, --routes >= 100, --versions >= 1, --rounds >= 1")
    work = Path(tempfile.mkdtemp(prefix="barp-bench-nats-policies-"))
    try:
        results = asyncio.run(run(args.sidecars, args.routes, args.versions, args.rounds, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"Route at 16 in flight on sidecar 0 of {args.sidecars} (hash:32, tiny policy), NATS backend, "
        f"{args.rounds} interleaved rounds per phase"
    )
    print("| phase | calls | p50 ms | p99 ms | p99 per round ms | routes/s |")
    print("|---|---:|---:|---:|---|---:|")
    for name in ("route_idle", "route_publishing", "route_reporting_without_broker"):
        r = results[name]
        per_round = ", ".join(f"{x:.1f}" for x in r["round_p99_ms"])
        print(
            f"| {name} | {r['calls']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {per_round} | "
            f"{r['routes_per_s']:.0f} |"
        )
    print(f"p99 publishing / idle = {results['p99_ratio']:.2f}")
    print(
        "p99 publishing / reporting without a broker (the publisher's own share) = "
        f"{results['p99_ratio_publishing_vs_reporting_without_broker']:.2f}"
    )
    p = results["propagation"]
    print(
        f"publish -> all {p['sidecars']} sidecars serving ({p['versions']} versions): "
        f"p50 {p['p50_s']:.3f} s, p95 {p['p95_s']:.3f} s, max {p['max_s']:.3f} s"
    )
    write_results(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
