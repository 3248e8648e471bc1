"""Learning-loop benchmark: trainer ingestion with durable acks, and Route p99 during hot swaps.

Ingestion: a real ``barp-trainer serve`` subprocess (cold start, 11 models, 384-d events like all-MiniLM)
on 127.0.0.1; this process streams N reward events and measures until the ack covering the last one
arrives (every ack means fsync'd). Two clients: the raw PublishRewards stream, and the sidecar's own path
(RewardSpool append with group fsync -> RewardPublisher -> trainer ack -> spool trim).

Swap latency: a real ``barp-sidecar serve`` subprocess (hash:384 encoder, a full-size 11-model policy) takes
Route calls at 32 in flight; p50/p99 are measured without swaps and then while Admin.PinPolicy alternates
between two versions every ``--swap-interval-ms`` (each pin = validate a checkpoint off the event loop +
swap between batches). Both phases run in the same process, one after the other.

Prints tables; ``--json PATH`` writes the numbers.

    python -m bench.trainer_ingest --events 20000 --routes 2000 --json out/trainer_ingest.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from barp_sidecar.gen.barp.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)
from barp_sidecar.policy.checkpoint import CheckpointStore, EncoderIdentity, PolicyManifest
from barp_sidecar.policy.network import PolicyArchitecture, PolicyNetwork
from barp_sidecar.rewards.publisher import RewardPublisher
from barp_sidecar.rewards.spool import RewardSpool
from tests.e2e.learning_processes import SidecarProcess, TrainerProcess, free_port

ARMS = tuple(f"model-{i}" for i in range(11))
DIM = 384


def trainer_config(data_dir: Path) -> str:
    return (
        "server:\n  host: 127.0.0.1\n  port: 0\n  grace_s: 1\n"
        f"storage:\n  data_dir: {data_dir}\n"
        "metrics:\n  enabled: false\n"
        "learner:\n  initial_policy: cold\n"
        f"  arms: [{', '.join(ARMS)}]\n  encoder_dim: {DIM}\n  tau_usd: 0.005\n"
        # Training competes for the same 2 cores; the bench measures ingestion as deployed (training on).
        "publish:\n  every_events: 100000\n  every_s: 3600\n"
    )


def make_events(n: int, seed: int, prefix: str) -> list[trainer_pb2.RewardEvent]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    pick = random.Random(seed)
    return [
        trainer_pb2.RewardEvent(
            event_id=f"{prefix}-{i}",
            sequence=i + 1,
            sidecar_id=prefix,
            embedding=vectors[i].tolist(),
            quality_weight=0.8,
            model=pick.choice(ARMS),
            propensity=1 / len(ARMS),
            policy_version=1,
            quality=pick.random(),
            cost_usd=pick.random() * 0.005,
            decided_at_unix_s=time.time(),
        )
        for i in range(n)
    ]


async def raw_stream(port: int, events: list[trainer_pb2.RewardEvent]) -> dict[str, float]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = trainer_pb2_grpc.TrainerStub(channel)
        call = stub.PublishRewards()
        acks = 0
        start = time.perf_counter()

        async def send() -> None:
            for event in events:
                await call.write(event)
            await call.done_writing()

        sender = asyncio.create_task(send())
        last = 0
        async for ack in call:
            acks += 1
            last = ack.durable_sequence
            if last >= events[-1].sequence:
                break
        elapsed = time.perf_counter() - start
        await sender
    assert last == events[-1].sequence
    return {"events": len(events), "seconds": elapsed, "events_per_s": len(events) / elapsed, "acks": acks}


async def spool_path(port: int, events: list[trainer_pb2.RewardEvent], spool_dir: Path) -> dict[str, float]:
    spool = RewardSpool(spool_dir, 1 << 32, 10.0)
    await spool.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        publisher = RewardPublisher(spool, channel, initial_backoff_s=0.05, max_backoff_s=0.5, seed=0)
        await publisher.start()
        start = time.perf_counter()
        for i in range(0, len(events), 512):  # 512 concurrent ReportOutcome calls at a time
            await asyncio.gather(*(spool.append(e) for e in events[i : i + 512]))
        appended = time.perf_counter() - start
        assert await publisher.drain(timeout_s=300)
        elapsed = time.perf_counter() - start
        await publisher.close()
    await spool.close()
    return {
        "events": len(events),
        "seconds": elapsed,
        "events_per_s": len(events) / elapsed,
        "spool_append_events_per_s": len(events) / appended,
    }


async def ingest(n: int) -> dict[str, dict[str, float]]:
    work = Path(tempfile.mkdtemp(prefix="barp-bench-"))
    try:
        config = work / "trainer.yaml"
        config.write_text(trainer_config(work / "data"))
        trainer = TrainerProcess(config, free_port(), work / "trainer.log")
        await asyncio.to_thread(trainer.start)
        try:
            raw_events = make_events(n, 1, "raw")
            spool_events = make_events(n, 2, "spool")
            for event in spool_events:
                event.sequence = 0
            raw = await raw_stream(trainer.port, raw_events)
            spooled = await spool_path(trainer.port, spool_events, work / "spool")
        finally:
            await asyncio.to_thread(trainer.stop)
        return {"raw_stream": raw, "spool_publisher": spooled}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def sidecar_config(work: Path, port: int, admin_port: int) -> str:
    return (
        f"server:\n  host: 127.0.0.1\n  port: {port}\n  grace_s: 1\n"
        "metrics:\n  enabled: false\n"
        f"admin:\n  enabled: true\n  port: {admin_port}\n"
        f"policy:\n  checkpoint_dir: {work / 'store'}\n  device: cpu\n  cpu_threads: 1\n"
        f"rewards:\n  spool_dir: {work / 'spool'}\n"
        f"trainer:\n  checkpoint_store_dir: {work / 'store'}\n  checkpoint_poll_interval_s: 1\n"
    )


def publish_policies(store: CheckpointStore, versions: int) -> None:
    import torch

    encoder = EncoderIdentity(f"hash:{DIM}", DIM, 256, "tail")
    for version in range(1, versions + 1):
        torch.manual_seed(version)
        network = PolicyNetwork(PolicyArchitecture(embedding_dim=DIM, num_models=len(ARMS)))
        store.publish(
            network,
            PolicyManifest(
                version=version,
                models=ARMS,
                encoder=encoder,
                tau_usd=0.005,
                architecture=network.architecture,
            ),
        )
    store.set_latest(1)


async def route_phase(
    port: int, admin_port: int, calls: int, swap_interval_ms: float | None, pin_from: int = 0
) -> dict[str, object]:
    latencies: list[float] = []
    failures = 0
    swaps = 0
    done = asyncio.Event()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(calls):
            queue.put_nowait(i)

        async def worker() -> None:
            nonlocal failures
            while not queue.empty():
                i = queue.get_nowait()
                start = time.perf_counter()
                try:
                    await stub.Route(
                        router_pb2.RouteRequest(prompt=f"benchmark prompt number {i % 500}"), timeout=30
                    )
                    latencies.append(time.perf_counter() - start)
                except grpc.aio.AioRpcError:
                    failures += 1

        async def swapper() -> None:
            nonlocal swaps
            assert swap_interval_ms is not None
            async with grpc.aio.insecure_channel(f"127.0.0.1:{admin_port}") as admin_channel:
                admin = admin_pb2_grpc.AdminStub(admin_channel)
                while not done.is_set():
                    await asyncio.sleep(swap_interval_ms / 1000)
                    await admin.PinPolicy(
                        admin_pb2.PinPolicyRequest(version=2 if (pin_from + swaps) % 2 == 0 else 1)
                    )
                    swaps += 1

        swap_task = asyncio.create_task(swapper()) if swap_interval_ms else None
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(32)))
        elapsed = time.perf_counter() - started
        done.set()
        if swap_task is not None:
            await swap_task
    return {
        "calls": calls,
        "failures": failures,
        "swaps": swaps,
        "seconds": elapsed,
        "latencies_s": latencies,
    }


def summarize(phases: list[dict[str, object]]) -> dict[str, float]:
    """Pool the latencies of several rounds of one phase type."""
    ms = np.array([x for p in phases for x in p["latencies_s"]]) * 1000  # type: ignore[attr-defined]
    calls = sum(int(p["calls"]) for p in phases)  # type: ignore[call-overload]
    return {
        "rounds": len(phases),
        "calls": calls,
        "failures": sum(int(p["failures"]) for p in phases),  # type: ignore[call-overload]
        "swaps": sum(int(p["swaps"]) for p in phases),  # type: ignore[call-overload]
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "routes_per_s": calls / sum(float(p["seconds"]) for p in phases),  # type: ignore[arg-type]
    }


async def swap_latency(calls: int, swap_interval_ms: float, rounds: int) -> dict[str, dict[str, float]]:
    work = Path(tempfile.mkdtemp(prefix="barp-bench-swap-"))
    try:
        publish_policies(CheckpointStore(work / "store"), 2)
        port, admin_port = free_port(), free_port()
        (work / "sidecar.yaml").write_text(sidecar_config(work, port, admin_port))
        sidecar = SidecarProcess(work / "sidecar.yaml", work / "sidecar.log")
        await asyncio.to_thread(sidecar.start)
        try:
            await route_phase(port, admin_port, 300, None)  # warm-up
            baseline, swapping = [], []
            for _ in range(rounds):  # interleaved, so drift on this shared machine hits both alike
                baseline.append(await route_phase(port, admin_port, calls, None))
                swapping.append(await route_phase(port, admin_port, calls, swap_interval_ms, len(swapping)))
        finally:
            await asyncio.to_thread(sidecar.stop)
        return {"no_swap": summarize(baseline), "swapping": summarize(swapping)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=20000, help="events per client (default 20000)")
    parser.add_argument("--routes", type=int, default=2000, help="Route calls per phase round (0 = skip)")
    parser.add_argument("--swap-interval-ms", type=float, default=200.0, help="~5 swaps per 2,000 calls")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of each phase")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.events < 1:
        parser.error("--events must be >= 1")
    results: dict[str, object] = {"cpus": os.cpu_count(), "events": args.events}
    results["ingest"] = asyncio.run(ingest(args.events))
    target = 5000.0
    print(
        f"\nTrainer ingestion, durable acks ({args.events} events of {DIM} floats, target >= {target:.0f}/s)"
    )
    print("| client | events/s | seconds | vs target |\n|---|---:|---:|---:|")
    for name, row in results["ingest"].items():  # type: ignore[union-attr]
        rate = row["events_per_s"]
        print(f"| {name} | {rate:,.0f} | {row['seconds']:.2f} | {rate / target:.2f}× |")
    if args.routes > 0:
        swap = asyncio.run(swap_latency(args.routes, args.swap_interval_ms, args.rounds))
        results["swap"] = swap
        ratio = swap["swapping"]["p99_ms"] / swap["no_swap"]["p99_ms"]
        results["p99_ratio"] = ratio
        print(f"\nRoute latency at 32 in flight, hash:{DIM} encoder (target p99 ratio <= 1.5x)")
        print("| phase | calls | swaps | failures | p50 ms | p99 ms | routes/s |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, row in swap.items():
            print(
                f"| {name} | {row['calls']:.0f} | {row['swaps']:.0f} | {row['failures']:.0f} | "
                f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['routes_per_s']:,.0f} |"
            )
        print(f"p99 during swaps / without: {ratio:.2f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
