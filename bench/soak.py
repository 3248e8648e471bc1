"""A bounded soak of the whole loop: real processes, bad inputs, provider faults, two kill -9s.

Starts the fake provider (``--error-rate`` of its answers are HTTP 500), a ``barp-trainer serve`` and a
``barp-sidecar serve`` (hash encoder, a small 4-model policy, so the run is about robustness rather than
encoder speed) and sends ``--requests`` calls from ``--concurrency`` clients:

- Route then ReportOutcome (most), Complete then ReportOutcome (``--complete-share``), and 5% bad inputs
  (invalid UTF-8, 20,000 unknown models, a 100 KB decision id, NaN quality, unset quality);
- at a third of the run the sidecar is killed with SIGKILL and restarted on the same port, at two thirds
  the trainer; clients retry a ReportOutcome that failed with UNAVAILABLE (as a client would) until it
  is answered.

It then stops everything gracefully and checks, from the trainer's own event log, that every outcome
acknowledged ``recorded=true`` is stored exactly once (0 lost, 0 doubled); that no call answered UNKNOWN
or INTERNAL; and that the sidecar's RSS at the end is within 10% of its RSS after warm-up (taken once
the restarted sidecar has served ``--warmup`` calls). Prints a table; ``--json PATH`` writes it.

    python -m bench.soak --requests 20000 --concurrency 16 --json out/soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from bench.load_client import fake_catalog, make_hash_checkpoint, stop_process

REPO = Path(__file__).resolve().parents[1]
ARMS = ("small-model", "medium-model", "large-model", "huge-model")
START_TIMEOUT_S = 120.0
BAD_SHARE = 0.05
# A retried ReportOutcome gives up after this long (the sidecar restarts in a few seconds).
RETRY_FOR_S = 60.0


@dataclass
class SoakResult:
    requests: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    bad_inputs: int = 0
    completes: int = 0
    recorded_acks: int = 0
    repeat_acks: int = 0
    outcome_retries: int = 0
    transport_retries: int = 0
    stored_events: int = 0
    spool_unacked_at_stop: int = 0
    lost: int = 0
    doubled: int = 0
    rss_after_warmup_mib: float = 0.0
    rss_end_mib: float = 0.0
    seconds: float = 0.0


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Process:
    """A subprocess logging to a file; ``start`` waits for ``marker`` in this start's part of the log."""

    def __init__(self, name: str, argv: list[str], log_path: Path, marker: str) -> None:
        self.name, self.argv, self.log_path, self.marker = name, argv, log_path, marker.encode()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.marker not in self.log_path.read_bytes()[offset:]:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{self.name} did not start: {self.log_path.read_text()[-3000:]}")
            time.sleep(0.05)
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        return stop_process(self.proc)

    def rss_mib(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")


def write_policy(directory: Path) -> None:
    make_hash_checkpoint(
        directory, ARMS, dim=32, max_seq_length=64, preference_hidden=8, preference_dim=4, head_hidden=16
    )


def write_configs(
    scratch: Path, provider_url: str, sidecar_port: int, trainer_port: int, metrics_port: int
) -> None:
    catalog = fake_catalog(
        ARMS, provider_url, upstream_model=lambda model: f"fake-{model}", max_concurrency=32, timeout_s=10.0
    )
    (scratch / "catalog.yaml").write_text(yaml.safe_dump(catalog))
    sidecar = {
        "server": {"host": "127.0.0.1", "port": sidecar_port, "grace_s": 2.0},
        "metrics": {"enabled": True, "port": metrics_port},
        "admin": {"enabled": False},
        "logging": {"level": "info"},
        "policy": {"checkpoint_dir": str(scratch / "policy"), "device": "cpu"},
        "routing": {"default_exploration": "epsilon_greedy", "epsilon": 0.2},
        "providers": {"catalog_file": str(scratch / "catalog.yaml"), "max_fallbacks": 1},
        "rewards": {"spool_dir": str(scratch / "spool"), "spool_fsync_interval_ms": 5.0},
        "trainer": {
            "target": f"127.0.0.1:{trainer_port}",
            "watch_policies": False,
            "checkpoint_cache_dir": str(scratch / "cache"),
            "reconnect_initial_backoff_s": 0.1,
            "reconnect_max_backoff_s": 1.0,
        },
    }
    (scratch / "sidecar.yaml").write_text(yaml.safe_dump(sidecar))
    trainer = {
        "server": {"host": "127.0.0.1", "port": trainer_port, "grace_s": 2.0},
        "storage": {"data_dir": str(scratch / "trainer")},
        "metrics": {"enabled": False},
        "logging": {"level": "info"},
        "learner": {
            "initial_policy": "latest_or_cold",
            "arms": list(ARMS),
            "encoder_id": "hash:32",
            "encoder_dim": 32,
            "encoder_max_seq_length": 64,
            "encoder_truncation": "tail",
            "tau_usd": 0.005,
        },
        "publish": {"every_events": 1_000_000, "every_s": 3600},
    }
    (scratch / "trainer.yaml").write_text(yaml.safe_dump(trainer))


def raw_route(prompt: bytes) -> bytes:
    return bytes([0x0A, len(prompt)]) + prompt


async def drive(args: argparse.Namespace, port: int, events: dict, result: SoakResult) -> set[str]:
    """The clients; ``events`` are asyncio.Events the controller sets (kill points) / waits on."""
    import grpc

    from barp_sidecar.gen.barp.v1 import router_pb2, router_pb2_grpc

    rng = random.Random(args.seed)
    recorded: set[str] = set()
    next_index = 0
    options = [("grpc.max_send_message_length", 8 << 20), ("grpc.max_receive_message_length", 8 << 20)]
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options)
    stub = router_pb2_grpc.RouterStub(channel)
    raw = channel.unary_unary("/barp.v1.Router/Route")

    def count(code: str) -> None:
        result.codes[code] += 1

    def sidecar_down(error: grpc.aio.AioRpcError) -> bool:
        """UNAVAILABLE from the transport (the sidecar is restarting), not an answer of the sidecar's
        (those carry google.rpc.Status details, e.g. ALL_PROVIDERS_FAILED)."""
        metadata = dict(error.trailing_metadata() or ())
        return error.code() == grpc.StatusCode.UNAVAILABLE and "grpc-status-details-bin" not in metadata

    async def report(decision_id: str, quality: float) -> None:
        deadline = time.monotonic() + RETRY_FOR_S
        while True:
            try:
                ack = await stub.ReportOutcome(
                    router_pb2.OutcomeRequest(decision_id=decision_id, quality=quality), timeout=10
                )
            except grpc.aio.AioRpcError as error:
                if sidecar_down(error) and time.monotonic() < deadline:
                    result.outcome_retries += 1
                    result.transport_retries += 1
                    await asyncio.sleep(0.2)
                    continue
                count(error.code().name)
                return
            count("OK")
            if ack.recorded:
                recorded.add(decision_id)
                result.recorded_acks += 1
            else:
                result.repeat_acks += 1
            return

    async def bad_input(kind: int) -> None:
        result.bad_inputs += 1
        try:
            if kind == 0:
                await raw(raw_route(b"caf\xc3"), timeout=10)
            elif kind == 1:
                names = [f"no-such-model-{i}" for i in range(20_000)]
                await stub.Route(router_pb2.RouteRequest(prompt="x", allowed_models=names), timeout=10)
            elif kind == 2:
                await stub.ReportOutcome(router_pb2.OutcomeRequest(decision_id="d" * 100_000, quality=1))
            elif kind == 3:
                await stub.ReportOutcome(router_pb2.OutcomeRequest(decision_id="x", quality=float("nan")))
            else:
                await stub.ReportOutcome(router_pb2.OutcomeRequest(decision_id="x"))
            count("OK")
        except grpc.aio.AioRpcError as error:
            count(error.code().name)

    async def one(index: int) -> None:
        draw = rng.random()
        if draw < BAD_SHARE:
            await bad_input(index % 5)
            return
        prompt = f"request {index}: what is {index % 97} times {index % 13}?"
        deadline = time.monotonic() + RETRY_FOR_S
        while True:
            try:
                decision_id = await decide(prompt, draw < BAD_SHARE + args.complete_share)
            except grpc.aio.AioRpcError as error:
                if sidecar_down(error) and time.monotonic() < deadline:
                    result.transport_retries += 1
                    await asyncio.sleep(0.2)
                    continue
                count(error.code().name)
                return
            count("OK")
            break
        await report(decision_id, (index % 5) / 4)
        if index % 10 == 0:  # a client retrying an outcome it already reported
            await report(decision_id, 0.5)

    async def decide(prompt: str, complete: bool) -> str:
        if complete:
            result.completes += 1
            decision_id = ""
            call = stub.Complete(
                router_pb2.CompleteRequest(messages=[router_pb2.ChatMessage(role="user", content=prompt)]),
                timeout=15,
            )
            async for chunk in call:
                if chunk.HasField("decision"):
                    decision_id = chunk.decision.decision_id
            return decision_id
        return str((await stub.Route(router_pb2.RouteRequest(prompt=prompt), timeout=10)).decision_id)

    async def client() -> None:
        nonlocal next_index
        while next_index < args.requests:
            index = next_index
            next_index += 1
            result.requests += 1
            for fraction, name in ((1 / 3, "kill_sidecar"), (2 / 3, "kill_trainer")):
                if index == int(args.requests * fraction):
                    events[name].set()
            if index == int(args.requests / 2):
                events["warm"].set()
            await one(index)

    await asyncio.gather(*(client() for _ in range(args.concurrency)))
    await channel.close()
    return recorded


def unacked_events(metrics_port: int) -> float:
    import urllib.request

    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith("barp_spool_unacked_events "):
            return float(line.split()[1])
    return float("nan")


async def drained(metrics_port: int, timeout_s: float) -> int:
    """Wait until the sidecar's spool has no unacknowledged event (or ``timeout_s``); returns what is left."""
    deadline = time.monotonic() + timeout_s
    left = await asyncio.to_thread(unacked_events, metrics_port)
    while left > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        left = await asyncio.to_thread(unacked_events, metrics_port)
    return int(left)


async def run(args: argparse.Namespace, scratch: Path) -> SoakResult:
    result = SoakResult()
    provider_port, sidecar_port, trainer_port, metrics_port = (free_port() for _ in range(4))
    write_policy(scratch / "policy")
    write_configs(scratch, f"http://127.0.0.1:{provider_port}/v1", sidecar_port, trainer_port, metrics_port)
    py = sys.executable
    provider = Process(
        "fake provider",
        [
            py,
            "-m",
            "barp_sidecar.providers.fake_server",
            "--port",
            str(provider_port),
            "--error-rate",
            str(args.provider_error_rate),
            "--seed",
            str(args.seed),
        ],
        scratch / "provider.log",
        "fake_provider_started",
    ).start()
    trainer = Process(
        "trainer",
        [py, "-m", "trainer.service.main", "--config", str(scratch / "trainer.yaml")],
        scratch / "trainer.log",
        "trainer_started",
    ).start()
    sidecar = Process(
        "sidecar",
        [py, "-m", "barp_sidecar.cli", "serve", "--config", str(scratch / "sidecar.yaml")],
        scratch / "sidecar.log",
        "server_started",
    ).start()
    events = {name: asyncio.Event() for name in ("kill_sidecar", "kill_trainer", "warm")}

    async def controller() -> None:
        await events["kill_sidecar"].wait()
        await asyncio.to_thread(sidecar.kill9)
        await asyncio.to_thread(sidecar.start)
        print("soak: sidecar killed (SIGKILL) and restarted", file=sys.stderr)
        await events["warm"].wait()
        result.rss_after_warmup_mib = sidecar.rss_mib()
        await events["kill_trainer"].wait()
        await asyncio.to_thread(trainer.kill9)
        await asyncio.to_thread(trainer.start)
        print("soak: trainer killed (SIGKILL) and restarted", file=sys.stderr)

    started = time.perf_counter()
    try:
        control = asyncio.ensure_future(controller())
        recorded = await drive(args, sidecar_port, events, result)
        await control
        result.seconds = time.perf_counter() - started
        result.rss_end_mib = sidecar.rss_mib()
        # Let the publisher deliver the spool (bounded), then stop both (graceful: final fsyncs).
        result.spool_unacked_at_stop = await drained(metrics_port, args.drain_s)
        sidecar.stop()
        trainer.stop()
    finally:
        for process in (sidecar, trainer, provider):
            if process.proc is not None and process.proc.poll() is None:
                process.stop()
    from trainer.service.eventlog import SegmentedEventLog

    log = SegmentedEventLog(scratch / "trainer" / "events").open()
    stored = [event.event_id for _, event in log.read_from(0, 10_000_000)]
    log.close()
    result.stored_events = len(stored)
    counts = Counter(stored)
    result.doubled = sum(n - 1 for n in counts.values() if n > 1)
    result.lost = len(recorded - set(counts))
    return result


def table(result: SoakResult) -> str:
    rss_change = (result.rss_end_mib / result.rss_after_warmup_mib - 1) * 100
    rows = [
        ("requests", result.requests),
        ("bad inputs sent", result.bad_inputs),
        ("Complete calls", result.completes),
        ("outcomes acknowledged recorded=true", result.recorded_acks),
        ("repeats acknowledged recorded=false", result.repeat_acks),
        ("ReportOutcome retries while the sidecar restarted", result.outcome_retries),
        ("all retries while the sidecar restarted", result.transport_retries),
        ("events in the trainer's log", result.stored_events),
        ("events still in the sidecar spool at stop", result.spool_unacked_at_stop),
        ("lost outcomes", result.lost),
        ("doubled outcomes", result.doubled),
        ("UNKNOWN / INTERNAL answers", result.codes["UNKNOWN"] + result.codes["INTERNAL"]),
        ("status codes", ", ".join(f"{k} {v}" for k, v in result.codes.most_common())),
        (
            "sidecar RSS after warm-up / end (MiB)",
            f"{result.rss_after_warmup_mib:.0f} / {result.rss_end_mib:.0f}",
        ),
        ("RSS change", f"{rss_change:+.1f}% (limit ±10%)"),
        ("seconds", f"{result.seconds:.0f}"),
    ]
    return "\n".join(["| check | value |", "|---|---:|", *(f"| {name} | {value} |" for name, value in rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--complete-share", type=float, default=0.3, help="fraction of calls that Complete")
    parser.add_argument("--provider-error-rate", type=float, default=0.05, help="fake provider 500s")
    parser.add_argument("--drain-s", type=float, default=60.0, help="most to wait for the spool to drain")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="barp-soak-") as scratch:
        result = asyncio.run(run(args, Path(scratch)))
    print(table(result))
    ok = (
        result.lost == 0
        and result.doubled == 0
        and result.codes["UNKNOWN"] + result.codes["INTERNAL"] == 0
        and abs(result.rss_end_mib / result.rss_after_warmup_mib - 1) <= 0.10
    )
    print(f"\nsoak {'PASSED' if ok else 'FAILED'}")
    if args.json:
        # asdict() rebuilds a Counter from (key, value) pairs: pass the codes as a plain dict.
        data = {**asdict(result), "codes": dict(result.codes), "passed": ok, "args": vars(args)}
        Path(args.json).write_text(json.dumps(data, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
