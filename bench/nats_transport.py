"""Event-transport benchmark: durable events/s from N sidecar processes into the trainer, gRPC vs NATS
JetStream, measured side by side in one run; plus the read side of the "stream feeds the log" decision.

Ingestion: a real ``barp-trainer serve`` subprocess (cold start, 11 models, 384-d events like all-MiniLM)
and, for NATS, a real ``nats-server -js`` on 127.0.0.1. ``--sidecars`` worker processes each run the
sidecar's own event path (RewardSpool append with group fsync -> publisher -> durable ack -> spool trim),
``--events`` events each, started together; the clock stops when the trainer has every event in its
fsync'd log (its metrics). The same trainer configuration serves both transports.

Read side: the trainer's local log (``SegmentedEventLog.read_from``) vs the JetStream stream read back
from sequence 1 by a pull consumer, same events: how fast a restart or a second learner can replay.

NATS runs once per ``--events-per-message`` value (``events.max_events_per_message``: 1 = one event per
message, the format before batch messages); ``--rounds`` repeats gRPC and every NATS variant in turn
(interleaved, so a busy machine's load falls on all of them alike) and the table shows medians.

    python -m bench.nats_transport --sidecars 8 --events 2500 --events-per-message 1,64 --rounds 3 \
        --json out/bench/nats_transport.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from barp_sidecar.broker.nats_connection import NatsConnector
from barp_sidecar.broker.settings import EventsBackend, EventsSettings
from barp_sidecar.rewards.event_messages import unpack_message
from barp_sidecar.rewards.nats_publisher import NatsRewardPublisher
from barp_sidecar.rewards.publisher import RewardPublisher
from barp_sidecar.rewards.spool import RewardSpool
from bench.trainer_ingest import make_events, trainer_config
from tests.e2e.learning_processes import TrainerProcess, free_port, scrape
from tests.support.nats_server import NatsServer
from trainer.service.eventlog import SegmentedEventLog
from trainer.service.nats_pull import PullBatches


def _worker(
    index: int,
    transport: str,
    target: str,
    events: int,
    work: str,
    ready: Any,
    go: Any,
    out: Any,
    per_message: int,
) -> None:
    async def main() -> tuple[float, float]:
        spool = RewardSpool(Path(work) / f"spool-{transport}-{index}", 1 << 32, 10.0)
        await spool.start()
        batch = make_events(events, 100 + index, f"{transport}-{index}")
        for event in batch:
            event.sequence = 0
        channel = None
        if transport == "grpc":
            channel = grpc.aio.insecure_channel(target)
            publisher: Any = RewardPublisher(
                spool, channel, initial_backoff_s=0.05, max_backoff_s=0.5, seed=index
            )
        else:
            settings = EventsSettings(
                backend=EventsBackend.NATS, nats_urls=(target,), max_events_per_message=per_message
            )
            publisher = NatsRewardPublisher(spool, NatsConnector(settings, {}, f"bench-{index}"), seed=index)
        await publisher.start()
        ready.set()
        await asyncio.to_thread(go.wait)
        start, cpu_start = time.perf_counter(), time.process_time()
        for i in range(0, len(batch), 256):  # 256 concurrent ReportOutcome calls at a time
            await asyncio.gather(*(spool.append(e) for e in batch[i : i + 256]))
        assert await publisher.drain(timeout_s=600)
        elapsed, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
        await publisher.close()
        await spool.close()
        if channel is not None:
            await channel.close()
        return elapsed, cpu_s

    out.put((index, *asyncio.run(main())))


def cpu_seconds(process: Any) -> float:
    """User + system CPU seconds of a running process (a Popen, or a NatsServer; None: 0)."""
    popen = getattr(process, "process", process)
    if popen is None:
        return 0.0
    fields = Path(f"/proc/{popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def trainer_yaml(data_dir: Path, metrics_port: int, nats_url: str | None) -> str:
    text = trainer_config(data_dir).replace(
        "metrics:\n  enabled: false\n", f"metrics:\n  enabled: true\n  port: {metrics_port}\n"
    )
    if nats_url is not None:
        text += f"events:\n  backend: nats\n  nats_urls: [{nats_url}]\n"
    return text


def ingest(transport: str, sidecars: int, events: int, work: Path, per_message: int = 1) -> dict[str, float]:
    """One run into a fresh trainer (and, for NATS, a fresh server) in ``work``."""
    nats = NatsServer(work / f"nats-{transport}") if transport == "nats" else None
    metrics_port = free_port()
    config = work / f"trainer-{transport}.yaml"
    config.write_text(trainer_yaml(work / f"data-{transport}", metrics_port, nats.url if nats else None))
    trainer = TrainerProcess(config, free_port(), work / f"trainer-{transport}.log")
    metric = "barp_trainer_nats_events_stored_total" if nats else "barp_trainer_events_stored_total"
    total = sidecars * events
    context = mp.get_context("spawn")
    go = context.Event()
    out = context.Queue()
    try:
        if nats is not None:
            nats.start()
        trainer.start()
        target = nats.url if nats is not None else f"127.0.0.1:{trainer.port}"
        readies = [context.Event() for _ in range(sidecars)]
        workers = [
            context.Process(
                target=_worker,
                args=(i, transport, target, events, str(work), readies[i], go, out, per_message),
            )
            for i in range(sidecars)
        ]
        for worker in workers:
            worker.start()
        for ready in readies:
            assert ready.wait(300), "a worker did not start"
        cpu_before = {name: cpu_seconds(p) for name, p in (("trainer", trainer.process), ("nats", nats))}
        start = time.perf_counter()
        go.set()
        deadline = start + 900
        while (scrape(metrics_port, metric) or 0) < total:
            assert time.perf_counter() < deadline, "trainer did not store every event"
            time.sleep(0.02)
        elapsed = time.perf_counter() - start
        cpu_after = {name: cpu_seconds(p) for name, p in (("trainer", trainer.process), ("nats", nats))}
        reports = [out.get(timeout=600) for _ in workers]
        worker_s = [report[1] for report in reports]
        for worker in workers:
            worker.join(60)
        stored = SegmentedEventLog(work / f"data-{transport}" / "events").open()
        trainer.stop()
        stored_total = stored.end_offset
        stored.close()
        assert stored_total == total, (stored_total, total)
        return {
            "events": total,
            "seconds": elapsed,
            "events_per_s": total / elapsed,
            "slowest_sidecar_drained_s": max(worker_s),
            # CPU per event (µs) by side: sidecar processes (spool + publisher, until drained), the
            # trainer, the NATS server (until the trainer held every event).
            "sidecar_cpu_us_per_event": sum(report[2] for report in reports) / total * 1e6,
            "trainer_cpu_us_per_event": (cpu_after["trainer"] - cpu_before["trainer"]) / total * 1e6,
            "nats_server_cpu_us_per_event": (cpu_after["nats"] - cpu_before["nats"]) / total * 1e6,
        }
    finally:
        if trainer.process is not None:
            trainer.stop()
        if nats is not None:
            nats.stop()


async def read_side(work: Path, events: int) -> dict[str, float]:
    """Read the same events back from the local log and from the stream (a NATS run's leftovers in
    ``work``), both decoded."""
    import nats
    from nats.js.api import ConsumerConfig

    log = SegmentedEventLog(work / "data-nats" / "events").open()
    start = time.perf_counter()
    offset, count = 0, 0
    while batch := log.read_from(offset, 1024):
        count += len(batch)
        offset = batch[-1][0] + 1
    log_s = time.perf_counter() - start
    log.close()
    server = NatsServer(work / "nats-nats").start()  # the NATS run's store: the stream is still there
    try:
        client = await nats.connect(server.url)
        js = client.jetstream()
        await js.pull_subscribe(  # creates the durable consumer; the trainer's PullBatches reads it
            "barp.events.reward",
            durable="bench-replay",
            stream="BARP_EVENTS",
            config=ConsumerConfig(max_ack_pending=8192),
        )
        batches = PullBatches(client, "BARP_EVENTS", "bench-replay", 1024, 5.0)
        await batches.start()
        start = time.perf_counter()
        read = 0
        while read < count:
            messages = await batches.next_batch(5.0)
            assert messages, "the stream ran dry before every event was read back"
            for msg in messages:
                read += len(unpack_message(msg.data, msg.headers))  # decoded, as read_from decodes
                await msg.ack()
        stream_s = time.perf_counter() - start
        await client.close()
    finally:
        server.stop()
    return {
        "events": count,
        "log_events_per_s": count / log_s,
        "stream_events_per_s": read / stream_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sidecars", type=int, default=8)
    parser.add_argument("--events", type=int, default=2500, help="events per sidecar")
    parser.add_argument(
        "--events-per-message", default="1,64", help="NATS variants: events.max_events_per_message values"
    )
    parser.add_argument("--rounds", type=int, default=1, help="gRPC and every NATS variant, interleaved")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.sidecars < 1 or args.events < 1 or args.rounds < 1:
        parser.error("--sidecars, --events and --rounds must be >= 1")
    try:
        variants = [int(value) for value in args.events_per_message.split(",")]
    except ValueError:
        parser.error(
            f"--events-per-message must be comma-separated integers, not {args.events_per_message!r}"
        )
    if not variants or not all(1 <= v <= 4096 for v in variants):
        parser.error("--events-per-message values must be in [1, 4096]")
    names = ["grpc"] + [f"nats/{v}" for v in variants]
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    results: dict[str, Any] = {"runs": runs}
    for _ in range(args.rounds):
        for name in names:
            work = Path(tempfile.mkdtemp(prefix="barp-bench-nats-"))
            try:
                transport, _, per_message = name.partition("/")
                runs[name].append(ingest(transport, args.sidecars, args.events, work, int(per_message or 1)))
                if name == names[-1] and "read_side" not in results:
                    results["read_side"] = asyncio.run(read_side(work, args.sidecars * args.events))
            finally:
                shutil.rmtree(work, ignore_errors=True)
    rates = {name: statistics.median(r["events_per_s"] for r in runs[name]) for name in names}
    results["median_events_per_s"] = rates
    print(
        f"{args.sidecars} sidecar processes x {args.events} events (384-d), durable in the trainer's log; "
        f"median of {args.rounds} interleaved round(s)"
    )
    print(
        f"{'transport':<10} {'events/s':>10} {'vs grpc':>8}  {'CPU µs/event: sidecars trainer nats':>36}"
        "  every round (events/s)"
    )
    for name in names:
        every = " ".join(f"{r['events_per_s']:.0f}" for r in runs[name])
        cpu = " ".join(
            f"{statistics.median(r[key] for r in runs[name]):>7.0f}"
            for key in (
                "sidecar_cpu_us_per_event",
                "trainer_cpu_us_per_event",
                "nats_server_cpu_us_per_event",
            )
        )
        print(f"{name:<10} {rates[name]:>10.0f} {rates[name] / rates['grpc']:>8.2f}  {cpu:>36}  {every}")
    r = results["read_side"]
    log_rate, stream_rate = r["log_events_per_s"], r["stream_events_per_s"]
    print(
        f"replay read ({names[-1]}): local log {log_rate:.0f} events/s, JetStream {stream_rate:.0f} events/s"
    )
    write_results(args.json, results)
    return 0


def write_results(path: Path | None, results: dict[str, Any]) -> None:
    """``--json PATH``: the numbers behind the printed table."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
