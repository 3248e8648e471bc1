"""Learning-loop benchmark: trainer ingestion with durable acks, and Route p99 during hot swaps.

Ingestion: a real ``barp-trainer serve`` subprocess (cold start, 11 arms, 384-d events like all-MiniLM)
on 127.0.0.1; this process streams N reward events and measures until the ack covering the last one
arrives (every ack means fsync'd). Two clients: the raw PublishRewards stream, and the sidecar's own path
(RewardSpool append with group fsync -> RewardPublisher -> trainer ack -> spool trim).

Swap latency (``--sidecar``): needs the sidecar server (``barp_sidecar.app``); see ``bench/swap_latency``
in docs/benchmarks.md. Prints a table; ``--json PATH`` writes the numbers.

    python -m bench.trainer_ingest --events 20000 --json out/trainer_ingest.json
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

from barp_sidecar.gen.barp.v1 import trainer_pb2, trainer_pb2_grpc
from barp_sidecar.rewards.publisher import RewardPublisher
from barp_sidecar.rewards.spool import RewardSpool
from tests.e2e.learning_processes import TrainerProcess, free_port

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=20000, help="events per client (default 20000)")
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
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
