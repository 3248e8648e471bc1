"""Head-of-line blocking by huge prompts: p99 of 16-token Routes with 1% of 1 MiB prompts mixed in.

Three runs against the real ``barp-sidecar serve`` (shipped policy, real encoder, embedding cache off),
driven over gRPC by ``--concurrency`` closed-loop clients that send ``--requests`` Routes each run:

  short        only 16-token prompts (the reference);
  mixed-2kb    the same, with every 100th request a ~2 KB prompt (longer than the 256-token budget:
               what any long prompt costs, the floor for the next run);
  mixed        the same, with every 100th request a ~1 MiB prompt (1%);
  mixed-uncut  the 1 MiB mix against a server whose encoder tokenises whole prompts (the behaviour before
               ``policy/text_budget.py``; the bench patches the cut out in its own server process).

Only the short Routes' latencies are reported (p50/p95/p99), and each mix's p99 / p99(short): the target
is <= 1.5 for ``mixed``. Each run has its own server; runs are interleaved over ``--rounds`` rounds and
the summary is the median of the within-round ratios. Prints a Markdown table; ``--json PATH`` writes it.

    OMP_WAIT_POLICY=PASSIVE python -m bench.long_prompts --requests 1500 --concurrency 8 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from bench.load_client import percentile_ms, stop_process
from bench.route_load import synthetic_prompts

REPO = Path(__file__).resolve().parents[1]
LONG_PROMPT_BYTES = (1 << 20) - 4096  # just under the default server.max_prompt_bytes (1 MiB)
LONG_EVERY = 100  # 1% of requests
SERVER_START_TIMEOUT_S = 180.0
# (run name, cut on): the reference first.
RUNS = (("short", True), ("mixed-2kb", True), ("mixed", True), ("mixed-uncut", False))


@dataclass
class RunResult:
    name: str
    short_requests: int
    long_requests: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    seconds: float


class Server:
    """``python -m bench.long_prompts serve`` (the real sidecar, optionally without the cut)."""

    def __init__(self, scratch: Path, name: str, cut: bool, threads: int) -> None:
        config = {
            "logging": {"level": "warning"},
            "server": {"port": 0, "grace_s": 5.0},
            "metrics": {"enabled": False},
            "admin": {"enabled": False},
            "rewards": {"enabled": False},
            "policy": {"cpu_threads": threads},
            "batching": {"embedding_cache_entries": 0},
        }
        self.config_path = scratch / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.port_file = scratch / f"{name}.port"
        self.log_path = scratch / f"{name}.log"
        self._log = self.log_path.open("w")
        argv = [
            sys.executable,
            "-m",
            "bench.long_prompts",
            "serve",
            str(self.config_path),
            str(self.port_file),
        ]
        self.proc = subprocess.Popen(
            [*argv, *([] if cut else ["--no-cut"])],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while not self.port_file.exists() or not self.port_file.read_text().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server {name} did not start: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        self.port = int(self.port_file.read_text())

    def close(self) -> None:
        stop_process(self.proc)
        self._log.close()


def serve(config: str, port_file: str, cut: bool) -> int:
    """Server side: the real sidecar app; ``--no-cut`` restores whole-prompt tokenisation."""
    from barp_sidecar import app
    from barp_sidecar.policy import encoder

    if not cut:
        encoder.cut_text_for_token_budget = lambda text, max_tokens, side: text  # type: ignore[assignment]

    async def main() -> int:
        settings = app.settings_from_args(
            argparse.Namespace(config=config, port=None, metrics_port=None, admin_port=None), os.environ
        )
        sidecar = app.SidecarApp.build(settings)
        await sidecar.start()
        await asyncio.to_thread(Path(port_file).write_text, f"{sidecar.port}\n")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await sidecar.close()
        return 0

    return asyncio.run(main())


async def drive(port: int, short: list[str], long_prompt: str | None, requests: int, concurrency: int):
    import grpc

    from barp_sidecar.gen.barp.v1 import router_pb2, router_pb2_grpc

    latencies: list[float] = []
    long_sent = 0
    errors = 0
    next_index = 0
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 4 << 20)]
    ) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        # Warm-up (not measured).
        await asyncio.gather(*(stub.Route(router_pb2.RouteRequest(prompt=p)) for p in short[:16]))

        async def client() -> None:
            nonlocal next_index, long_sent, errors
            while next_index < requests:
                index = next_index
                next_index += 1
                is_long = long_prompt is not None and index % LONG_EVERY == LONG_EVERY // 2
                # A unique tail keeps the long prompts distinct; the 16-token prompts are distinct already.
                prompt = f"{long_prompt} {index}" if is_long else short[index % len(short)]
                started = time.perf_counter()
                try:
                    await stub.Route(router_pb2.RouteRequest(prompt=prompt), timeout=60)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                if is_long:
                    long_sent += 1
                else:
                    latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return latencies, long_sent, errors, seconds


def long_text(seed: int) -> str:
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "question", "answer", "context", "document", "the", "of"]
    parts: list[str] = []
    size = 0
    while size < LONG_PROMPT_BYTES - 64:
        word = rng.choice(words)
        parts.append(word)
        size += len(word) + 1
    return " ".join(parts)


def run(
    server: Server, name: str, short: list[str], long_prompt: str | None, args: argparse.Namespace
) -> RunResult:
    latencies, long_sent, errors, seconds = asyncio.run(
        drive(server.port, short, long_prompt, args.requests, args.concurrency)
    )
    return RunResult(
        name,
        len(latencies),
        long_sent,
        errors,
        percentile_ms(latencies, 0.50),
        percentile_ms(latencies, 0.95),
        percentile_ms(latencies, 0.99),
        seconds,
    )


def table(results: list[RunResult]) -> str:
    lines = [
        "| round | run | short Routes | long Routes | errors | p50 ms | p95 ms | p99 ms | seconds |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for round_index, result in results_with_rounds(results):
        lines.append(
            f"| {round_index} | {result.name} | {result.short_requests} | {result.long_requests} | "
            f"{result.errors} | {result.p50_ms:.1f} | {result.p95_ms:.1f} | {result.p99_ms:.1f} | "
            f"{result.seconds:.1f} |"
        )
    return "\n".join(lines)


def results_with_rounds(results: list[RunResult]) -> list[tuple[int, RunResult]]:
    return [(index // len(RUNS) + 1, result) for index, result in enumerate(results)]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":
        return serve(argv[1], argv[2], cut="--no-cut" not in argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--requests", type=int, default=1500, help="Routes per run (1%% are 1 MiB in mixed runs)"
    )
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="policy.cpu_threads of each server")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer

    from barp_sidecar.policy.encoder import builtin_model_path

    tokenizer = AutoTokenizer.from_pretrained(builtin_model_path())
    results: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="bench-long-prompts-") as scratch:
        for round_index in range(args.rounds):
            short = synthetic_prompts(tokenizer, 16, args.requests, seed=round_index)
            long_prompt = long_text(round_index)
            prompts = {"short": None, "mixed-2kb": long_prompt[:2048], "mixed": long_prompt}
            for name, cut in RUNS:
                server = Server(Path(scratch), f"{name}-{round_index}", cut, args.threads)
                try:
                    results.append(run(server, name, short, prompts.get(name, long_prompt), args))
                finally:
                    server.close()
                print(f"round {round_index + 1}: {results[-1]}", file=sys.stderr)
    ratios = {
        name: statistics.median(
            results[i + offset].p99_ms / results[i].p99_ms for i in range(0, len(results), len(RUNS))
        )
        for offset, (name, _) in enumerate(RUNS)
        if offset > 0
    }
    print(table(results))
    print()
    print(
        f"p99 of 16-token Routes with 1% long prompts / without (median over {args.rounds} rounds): "
        f"1 MiB {ratios['mixed']:.2f}x with the cut (target <= 1.5), "
        f"{ratios['mixed-uncut']:.2f}x without it; 2 KB (the floor: one full-budget encode) "
        f"{ratios['mixed-2kb']:.2f}x"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"runs": [asdict(r) for r in results], "p99_ratio": ratios, "args": vars(args)}, indent=2
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
