"""Route load benchmark: in-process ceiling vs the real sidecar (batched) vs the same sidecar unbatched.

For each prompt length it measures, in ONE run on the same machine:
  ceiling    encoder + policy called in-process (PolicyInference.run_batch) at the best batch size;
  sidecar    the real ``barp-sidecar serve`` subprocess with micro-batching, driven over gRPC by N clients;
  unbatched  the same server with batching.max_batch_size = 1.
and, at 1 client, the sidecar's p50 against the single-prompt (batch 1) in-process latency.
With ``--encoder-backend`` other than torch (``auto``, the default, is openvino on CPU for the shipped policy)
the same rounds also measure today's fp32 torch encoder: ``torch_ceiling`` in-process and ``sidecar_torch``
(a third server), and the summary compares the sidecar with them (issue 16's targets).
``--client-processes N`` splits the callers over N load-generator processes (a GPU sidecar outruns one).
``--alt-backend NAME`` adds ``sidecar_alt``: the same sidecar on another ``encoder.backend``, same rounds.
``--baseline-src DIR`` adds a ``baseline`` server run from another checkout (e.g. main's batcher, exported
with ``git archive main | tar -x -C out/main-src``) with that checkout's own batching defaults, and
``--sweep-clients 1 16 64`` replaces the standard runs: ``sidecar`` and ``baseline`` at each client count; the
summary then compares them per client count (throughput ratio, p50 and p99 differences).

Prompts are unique (the embedding cache is disabled as well) and come from a file (one per line) or are
synthetic with an exact token count. The load generator is one grpc.aio process (it shares the CPU with
the server, which is the point: that is how a sidecar lives). Mean batch size comes from the server's
Prometheus histogram. Both servers stay up and the runs are interleaved in ``--rounds`` rounds, so each
comparison pairs runs taken seconds apart on a machine whose load drifts; the summary reports the median
over rounds of each within-round comparison. Prints a Markdown table; ``--json PATH`` writes the results.

    OMP_WAIT_POLICY=PASSIVE python -m bench.route_load --prompt-tokens 16 64 --concurrency 64 \
        --duration-s 6 --rounds 4 --json bench/results/route_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from barp_sidecar.settings import BatchingSettings, EncoderBackend
from bench.load_client import cpu_seconds, percentile_ms, remove_scratch, stop_process

REPO = Path(__file__).resolve().parents[1]
RUN_ORDER = ["torch_ceiling", "ceiling", "sidecar_torch", "sidecar_alt", "baseline", "sidecar", "unbatched"]
SWEEP_NOTE = "clients sweep"


@dataclass
class Result:
    name: str
    prompt_tokens: int
    concurrency: int
    throughput_rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_batch_size: float
    requests: int = 0
    errors: int = 0
    note: str = ""


# ---------------------------------------------------------------------------------------------- prompts


def synthetic_prompts(tokenizer, tokens: int, count: int, seed: int) -> list[str]:
    """``count`` distinct prompts of exactly ``tokens`` word-pieces (without [CLS]/[SEP]).

    Pieces are counted without the tokenizer's own truncation or padding: the fast tokenizer the ONNX
    and OpenVINO backends load truncates to 128 pieces (its tokenizer.json), under which no prompt longer
    than 128 pieces exists and this loop used to run forever (the sidecar itself tokenizes with
    truncation off and cuts to ``encoder.max_seq_length`` by its own rule)."""
    rng = random.Random(seed)
    # The plain-torch MiniLM's WordPieceTokenizer wraps a `tokenizers.Tokenizer` (batch-only __call__).
    raw = getattr(tokenizer, "_tokenizer", None)
    if raw is not None:
        raw = type(raw).from_str(raw.to_str())  # a copy: the encoder's own tokenizer stays as it is
        raw.no_truncation()
        raw.no_padding()

    def word_pieces(text: str) -> list[int]:
        if raw is not None:
            return list(raw.encode(text, add_special_tokens=False).ids)
        return list(tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"])

    vocabulary = (raw or tokenizer).get_vocab()
    # Sorted: get_vocab() is a hash map whose order differs between loads, so the seed alone did not fix
    # the prompts.
    words = sorted(w for w in vocabulary if w.isalpha() and w.isascii() and len(w) >= 3)
    if tokens > len(words):
        raise ValueError(f"{tokens} tokens: the vocabulary has only {len(words)} whole words to draw from")
    prompts: list[str] = []
    seen: set[str] = set()
    attempts = 0
    while len(prompts) < count:
        attempts += 1
        if attempts > 50 * count:
            raise RuntimeError(
                f"found {len(prompts)} of {count} prompts of exactly {tokens} word pieces"
                f" in {attempts - 1} tries"
            )
        chosen = rng.sample(words, tokens)
        ids = word_pieces(" ".join(chosen))
        while len(ids) > tokens:
            chosen.pop()
            ids = word_pieces(" ".join(chosen))
        text = " ".join(chosen)
        if len(ids) == tokens and text not in seen:
            seen.add(text)
            prompts.append(text)
    return prompts


def file_prompts(path: Path, count: int) -> list[str]:
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise SystemExit(f"{path}: no prompts")
    # Repeat with a unique suffix if the file is short, so the cache never answers.
    return [lines[i % len(lines)] + ("" if i < len(lines) else f" #{i}") for i in range(count)]


# ---------------------------------------------------------------------------------------------- checkpoint


def resolve_checkpoint(arg: str | None) -> Path:
    """The checkpoint to serve: ``--checkpoint-dir``, else the shipped RouterBench policy."""
    from barp_sidecar.policy.builtin import builtin_policy_dir

    return Path(arg) if arg else Path(builtin_policy_dir())


def int8_accepting_copy(checkpoint: Path, scratch: Path) -> Path:
    """A copy of the checkpoint whose manifest accepts this machine's int8 encoder file, for SPEED runs
    only: whether the policy decides the same on it is bench/encoder_backends.py's question."""
    import shutil

    from barp_sidecar.policy.backends import default_onnx_dir
    from barp_sidecar.policy.encoder import builtin_model_path
    from barp_sidecar.policy.onnx_export import ensure_onnx_model

    model = ensure_onnx_model(Path(builtin_model_path()), default_onnx_dir(), "onnx-int8")
    copy = scratch / "int8-accepting-policy"
    shutil.copytree(checkpoint, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["encoder"]["int8_validated_sha256"] = [model.sha256]
    (copy / "manifest.json").write_text(json.dumps(manifest, indent=2))
    print(f"speed only: {copy} accepts the int8 file {model.sha256[:12]}…", file=sys.stderr)
    return copy


# ---------------------------------------------------------------------------------------------- ceiling


def build_inference(
    checkpoint: Path, encoder_model: str, max_batch_tokens: int, backend: str = "auto", threads: int = 0
):
    """The in-process ceiling: the sidecar's encoder + policy on ``backend`` with ``threads`` intra-op threads
    (the sidecar's ``policy.cpu_threads``; 0 = the runtime's default)."""
    import torch

    from barp_sidecar.policy.backends import encoder_backend_identity
    from barp_sidecar.policy.checkpoint import load_checkpoint
    from barp_sidecar.policy.device import select_device
    from barp_sidecar.policy.embedding_cache import EmbeddingCache
    from barp_sidecar.policy.inference import PolicyInference
    from barp_sidecar.policy.loading import load_encoder
    from barp_sidecar.policy.registry import PolicyRegistry
    from barp_sidecar.settings import EncoderBackendSettings, PolicySettings

    policy = load_checkpoint(checkpoint)
    placement = select_device("auto", torch.cuda.is_available())
    encoder = load_encoder(
        policy.manifest.encoder,
        PolicySettings(encoder_model=encoder_model, cpu_threads=threads),
        placement,
        EncoderBackendSettings(backend=backend),
    )
    return PolicyInference(
        encoder,
        PolicyRegistry(policy, encoder_backend_identity(encoder)),
        placement,
        max_batch_tokens=max_batch_tokens,
        cache=EmbeddingCache(0),
    )


def measure_ceiling(
    inference, prompts: list[str], batch_size: int, duration_s: float
) -> tuple[float, list[float]]:
    """(prompts/s, per-batch latencies) running run_batch back to back on fresh prompts."""
    from barp_sidecar.policy.inference import InferenceRequest

    requests = [InferenceRequest(p, 0.5) for p in prompts]
    inference.run_batch(requests[:batch_size])  # warm-up for this shape
    done, latencies, index = 0, [], 0
    started = time.perf_counter()
    while time.perf_counter() - started < duration_s:
        batch = requests[index : index + batch_size]
        if len(batch) < batch_size:
            index, batch = 0, requests[:batch_size]
        t0 = time.perf_counter()
        inference.run_batch(batch)
        latencies.append(time.perf_counter() - t0)
        index += batch_size
        done += batch_size
    return done / (time.perf_counter() - started), latencies


# ---------------------------------------------------------------------------------------------- server


class Server:
    """A ``barp-sidecar serve`` subprocess; its JSON log goes to a file (a full pipe would stall it)."""

    def __init__(
        self,
        checkpoint: Path,
        scratch: Path,
        name: str,
        batching: dict,
        threads: int,
        log_level: str = "info",
        backend: str = "auto",
        source: Path = REPO,
    ) -> None:
        config = {
            "logging": {"level": log_level},
            "server": {"port": 0, "grace_s": 5.0},
            "metrics": {"port": 0},
            "admin": {"enabled": False},
            # Each server its own state (spool): two servers sharing one refuse to start.
            "state": {"dir": str(scratch / f"{name}-state")},
            "policy": {"checkpoint_dir": str(checkpoint), "cpu_threads": threads},
            "encoder": {"backend": backend},
            "batching": {"embedding_cache_entries": 0, **batching},
        }
        self.config_path = scratch / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = scratch / f"{name}.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "barp_sidecar.cli", "serve", "--config", str(self.config_path)],
            cwd=source,
            env={**os.environ, "PYTHONPATH": str(source), "HF_HUB_OFFLINE": "1"},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.port, self.metrics_port = self._wait_started(120)

    def _wait_started(self, timeout_s: float) -> tuple[int, int]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(
                    f"server exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}"
                )
            for line in self.log_path.read_text().splitlines():
                if '"server_started"' in line:
                    event = json.loads(line)
                    return int(event["port"]), int(event["metrics_port"])
            time.sleep(0.2)
        raise SystemExit(f"server did not start in {timeout_s}s")

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far."""
        return cpu_seconds(self.proc.pid)

    def batch_histogram(self) -> tuple[float, float]:
        body = (
            urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10)
            .read()
            .decode()
        )
        values = {}
        for line in body.splitlines():
            if line.startswith(("barp_batch_size_sum", "barp_batch_size_count")):
                name, value = line.split()
                values[name] = float(value)
        return values.get("barp_batch_size_sum", 0.0), values.get("barp_batch_size_count", 0.0)

    def close(self) -> None:
        stop_process(self.proc)
        self._log.close()


def peak_rss_mib(pid: int) -> float | None:
    """The process's peak resident set size (``VmHWM``) in MiB; None without a /proc entry for it."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


async def drive(
    port: int, prompts: list[str], concurrency: int, duration_s: float, warmup_s: float, max_requests: int
):
    """N closed-loop clients over one channel; returns (completed, errors, latencies_s, elapsed_s)."""
    import grpc

    from barp_sidecar.gen.barp.v1 import router_pb2, router_pb2_grpc

    requests = [
        router_pb2.RouteRequest(prompt=p, preference=router_pb2.Preference(quality_weight=0.5))
        for p in prompts
    ]
    latencies: list[float] = []
    errors = 0
    counter = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        route = stub.Route
        measuring = False
        stop_at = 0.0

        async def client() -> None:
            nonlocal errors, counter
            while True:
                now = time.perf_counter()
                if measuring and (now >= stop_at or len(latencies) >= max_requests):
                    return
                request = requests[counter % len(requests)]
                counter += 1
                t0 = time.perf_counter()
                try:
                    await route(request, timeout=30)
                except grpc.aio.AioRpcError:
                    errors += measuring
                    continue
                if measuring:
                    latencies.append(time.perf_counter() - t0)

        tasks = [asyncio.ensure_future(client()) for _ in range(concurrency)]
        await asyncio.sleep(warmup_s)
        measuring = True
        latencies.clear()
        started = time.perf_counter()
        stop_at = started + duration_s
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
    return len(latencies), errors, latencies, elapsed


def _drive_in_process(job: tuple) -> tuple[int, int, list[float], float]:
    port, prompts, concurrency, duration_s, max_requests = job
    return asyncio.run(drive(port, prompts, concurrency, duration_s, 1.0, max_requests))


def drive_processes(port, prompts, concurrency, duration_s, max_requests, processes: int):
    """``drive`` split over ``processes`` client processes (one Python client tops out at a few thousand
    calls per second: a GPU sidecar needs several). Latencies are merged; elapsed is the longest."""
    from concurrent.futures import ProcessPoolExecutor

    share = max(1, concurrency // processes)
    jobs = [
        (port, prompts[i::processes], share, duration_s, max_requests // processes) for i in range(processes)
    ]
    with ProcessPoolExecutor(processes) as pool:
        parts = list(pool.map(_drive_in_process, jobs))
    latencies = [latency for part in parts for latency in part[2]]
    return sum(p[0] for p in parts), sum(p[1] for p in parts), latencies, max(p[3] for p in parts)


def run_load(
    server: Server, name, prompts, tokens, concurrency, duration_s, max_requests, processes: int = 1
) -> Result:
    before = server.batch_histogram()
    if processes > 1 and concurrency > 1:
        done, errors, latencies, elapsed = drive_processes(
            server.port, prompts, concurrency, duration_s, max_requests, processes
        )
    else:
        done, errors, latencies, elapsed = asyncio.run(
            drive(server.port, prompts, concurrency, duration_s, warmup_s=1.0, max_requests=max_requests)
        )
    after = server.batch_histogram()
    batches = after[1] - before[1]
    mean_batch = (after[0] - before[0]) / batches if batches else float("nan")
    return Result(
        name,
        tokens,
        concurrency,
        done / elapsed,
        percentile_ms(latencies, 0.50),
        percentile_ms(latencies, 0.95),
        percentile_ms(latencies, 0.99),
        mean_batch,
        done,
        errors,
    )


# ---------------------------------------------------------------------------------------------- main


def ceiling_result(
    inference, prompts: list[str], tokens: int, args: argparse.Namespace, name: str = "ceiling"
) -> Result:
    """The best in-process throughput over the candidate batch sizes (noise favours the ceiling)."""
    best: tuple[float, int, list[float]] | None = None
    for batch_size in args.ceiling_batch_sizes:
        rps, latencies = measure_ceiling(inference, prompts, batch_size, args.duration_s / 2)
        if best is None or rps > best[0]:
            best = (rps, batch_size, latencies)
    assert best is not None
    rps, batch_size, latencies = best
    return Result(
        name,
        tokens,
        args.concurrency,
        rps,
        percentile_ms(latencies, 0.50),
        percentile_ms(latencies, 0.95),
        percentile_ms(latencies, 0.99),
        batch_size,
        len(latencies) * batch_size,
        note=f"in-process, best batch {batch_size} of {args.ceiling_batch_sizes}; latency per batch",
    )


def latency_result(name: str, tokens: int, latencies: list[float], note: str) -> Result:
    return Result(
        name,
        tokens,
        1,
        len(latencies) / sum(latencies),
        percentile_ms(latencies, 0.50),
        percentile_ms(latencies, 0.95),
        percentile_ms(latencies, 0.99),
        1.0,
        len(latencies),
        note=note,
    )


def median_rounds(rounds: list[list[Result]]) -> list[Result]:
    """Per (run, tokens, clients): the round with the median throughput (rows may come from different
    rounds: compare with ``ratio_summary``, which pairs runs within a round)."""
    keyed: dict[tuple[str, int, int], list[Result]] = {}
    for one_round in rounds:
        for result in one_round:
            keyed.setdefault((result.name, result.prompt_tokens, result.concurrency), []).append(result)
    chosen = []
    for key in sorted(keyed, key=lambda k: (k[1], RUN_ORDER.index(k[0]), -k[2])):
        ordered = sorted(keyed[key], key=lambda r: r.throughput_rps)
        chosen.append(ordered[(len(ordered) - 1) // 2])
    return chosen


def table(results: list[Result]) -> str:
    lines = [
        "| run | tokens | clients | throughput (req/s) | p50 ms | p95 ms | p99 ms | mean batch | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.prompt_tokens} | {r.concurrency} | {r.throughput_rps:.1f} | {r.p50_ms:.1f} | "
            f"{r.p95_ms:.1f} | {r.p99_ms:.1f} | {r.mean_batch_size:.1f} | {r.note} |"
        )
    return "\n".join(lines)


def ratio_values(results: list[Result]) -> dict[str, float]:
    """The target comparisons within ONE round (runs minutes apart at most)."""
    out: dict[str, float] = {}
    for tokens in sorted({r.prompt_tokens for r in results}):
        sweep = {
            (r.name, r.concurrency): r for r in results if r.prompt_tokens == tokens and r.note == SWEEP_NOTE
        }
        for clients in sorted({c for _, c in sweep}):
            after, before = sweep.get(("sidecar", clients)), sweep.get(("baseline", clients))
            if after and before:
                label = f"{tokens} tokens, {clients} clients: sidecar vs baseline"
                out[f"{label} throughput ratio"] = after.throughput_rps / before.throughput_rps
                out[f"{label} p50 difference (ms)"] = after.p50_ms - before.p50_ms
                out[f"{label} p99 difference (ms)"] = after.p99_ms - before.p99_ms
        by = {
            (r.name, r.concurrency > 1): r
            for r in results
            if r.prompt_tokens == tokens and r.note != SWEEP_NOTE
        }
        ceiling, sidecar, unbatched = (
            by.get(("ceiling", True)),
            by.get(("sidecar", True)),
            by.get(("unbatched", True)),
        )
        if ceiling and sidecar:
            out[f"{tokens} tokens: sidecar / ceiling throughput"] = (
                sidecar.throughput_rps / ceiling.throughput_rps
            )
        if sidecar and unbatched:
            out[f"{tokens} tokens: sidecar / unbatched throughput"] = (
                sidecar.throughput_rps / unbatched.throughput_rps
            )
        one_ceiling, one_sidecar = by.get(("ceiling", False)), by.get(("sidecar", False))
        if one_ceiling and one_sidecar:
            out[f"{tokens} tokens: 1-client p50 minus single-prompt p50 (ms)"] = (
                one_sidecar.p50_ms - one_ceiling.p50_ms
            )
        # With a non-torch backend: against today's fp32 torch encoder, measured in the same round.
        torch_ceiling, torch_one = by.get(("torch_ceiling", True)), by.get(("torch_ceiling", False))
        sidecar_torch = by.get(("sidecar_torch", True))
        if sidecar_torch and sidecar:
            out[f"{tokens} tokens: sidecar / torch sidecar throughput"] = (
                sidecar.throughput_rps / sidecar_torch.throughput_rps
            )
        if torch_ceiling and sidecar:
            out[f"{tokens} tokens: sidecar / torch ceiling throughput"] = (
                sidecar.throughput_rps / torch_ceiling.throughput_rps
            )
        if torch_one and one_sidecar:
            out[f"{tokens} tokens: 1-client p50 / torch single-prompt p50"] = (
                one_sidecar.p50_ms / torch_one.p50_ms
            )
        sidecar_alt = by.get(("sidecar_alt", True))
        if sidecar_alt and sidecar:
            out[f"{tokens} tokens: sidecar / sidecar_alt throughput"] = (
                sidecar.throughput_rps / sidecar_alt.throughput_rps
            )
    return out


def ratio_summary(rounds: list[list[Result]]) -> dict[str, dict[str, float | list[float]]]:
    """Median over rounds of each within-round comparison, with the per-round values."""
    per_round = [ratio_values(one_round) for one_round in rounds]
    return {
        key: {
            "median": statistics.median(values[key] for values in per_round),
            "rounds": [v[key] for v in per_round],
        }
        for key in per_round[0]
    }


def sweep_runs(
    servers: dict[str, Server], prompts: list[str], tokens: int, args, round_index: int
) -> list[Result]:
    """``baseline`` and ``sidecar`` at each ``--sweep-clients`` count (one load generator process); which
    of the two runs first alternates by round, so a drifting machine load does not favour one side."""
    order = ("baseline", "sidecar") if round_index % 2 == 0 else ("sidecar", "baseline")
    out = []
    for clients in args.sweep_clients:
        for name in order:
            if name in servers:
                result = run_load(
                    servers[name], name, prompts, tokens, clients, args.duration_s, args.requests
                )
                result.note = SWEEP_NOTE
                out.append(result)
    return out


def standard_runs(
    servers: dict[str, Server], inference, torch_inference, prompts, tokens, args
) -> list[Result]:
    """Ceiling(s), every server at ``--concurrency``, then the 1-client latency pair."""
    current: list[Result] = []
    current.append(ceiling_result(inference, prompts, tokens, args))
    if torch_inference is not None:
        current.append(ceiling_result(torch_inference, prompts, tokens, args, "torch_ceiling"))
    for name, server in servers.items():
        result = run_load(
            server,
            name,
            prompts,
            tokens,
            args.concurrency,
            args.duration_s,
            args.requests,
            args.client_processes,
        )
        current.append(result)
    if not args.skip_latency:
        _, single = measure_ceiling(inference, prompts, 1, args.duration_s / 2)
        current.append(latency_result("ceiling", tokens, single, "in-process single-prompt encode + policy"))
        if torch_inference is not None:
            _, single = measure_ceiling(torch_inference, prompts, 1, args.duration_s / 2)
            current.append(
                latency_result("torch_ceiling", tokens, single, "torch single-prompt encode + policy")
            )
        one = run_load(servers["sidecar"], "sidecar", prompts, tokens, 1, args.duration_s / 2, args.requests)
        one.note = "1 client"
        current.append(one)
    return current


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt-tokens", type=int, nargs="+", default=[16, 64])
    parser.add_argument(
        "--prompts-file", type=Path, help="one prompt per line (instead of synthetic prompts)"
    )
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration-s", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--requests", type=int, default=10**9, help="stop a run after this many requests")
    parser.add_argument("--ceiling-batch-sizes", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=BatchingSettings().max_wait_ms)
    parser.add_argument(
        "--max-batch-tokens",
        type=int,
        default=BatchingSettings().max_batch_tokens,
        help="token budget of one forward pass, for the server and the ceiling alike",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (server and ceiling)")
    parser.add_argument(
        "--checkpoint-dir", help="policy to serve (default: the shipped policy, else a random one)"
    )
    parser.add_argument("--encoder-model", default="builtin:all-MiniLM-L6-v2")
    parser.add_argument(
        "--encoder-backend",
        default="auto",
        choices=[backend.value for backend in EncoderBackend],
        help="encoder.backend of the servers and the ceiling; unless torch, a torch ceiling runs too",
    )
    parser.add_argument(
        "--client-processes", type=int, default=1, help="load generator processes (GPU: several)"
    )
    parser.add_argument(
        "--allow-unvalidated-int8",
        action="store_true",
        help="serve a copy of the policy that accepts the int8 encoder file (speed runs only)",
    )
    parser.add_argument("--skip-unbatched", action="store_true", help="no batch-size-1 server")
    parser.add_argument(
        "--alt-backend",
        choices=[backend.value for backend in EncoderBackend],
        help="also serve a `sidecar_alt` on this encoder.backend in the same rounds (backend vs backend)",
    )
    parser.add_argument("--skip-latency", action="store_true", help="skip the 1-client latency runs")
    parser.add_argument(
        "--baseline-src",
        type=Path,
        help="also serve a `baseline` sidecar from this checkout (its own batching defaults), same rounds",
    )
    parser.add_argument(
        "--sweep-clients",
        type=int,
        nargs="+",
        default=[],
        help="instead of the standard runs: sidecar (and baseline) at each client count, e.g. 1 16 64",
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds; the table shows the median"
    )
    args = parser.parse_args(argv)
    if args.baseline_src is not None and not args.sweep_clients:
        parser.error("--baseline-src needs --sweep-clients (the baseline is compared per client count)")
    if args.baseline_src is not None and not (args.baseline_src / "barp_sidecar" / "cli.py").is_file():
        parser.error(f"--baseline-src {args.baseline_src}: no barp_sidecar/cli.py there")

    import torch

    torch.set_num_threads(args.threads)
    scratch = Path(tempfile.mkdtemp(prefix="route-load-"))
    checkpoint = resolve_checkpoint(args.checkpoint_dir)
    if args.allow_unvalidated_int8:
        checkpoint = int8_accepting_copy(checkpoint, scratch)
    inference = build_inference(
        checkpoint, args.encoder_model, args.max_batch_tokens, args.encoder_backend, args.threads
    )
    backend = getattr(inference.encoder, "backend", "torch")
    torch_inference = (
        None
        if backend == "torch"
        else build_inference(checkpoint, args.encoder_model, args.max_batch_tokens, "torch", args.threads)
    )
    print(f"encoder backend: {backend}", file=sys.stderr)
    tokenizer = inference.encoder._tokenizer
    prompt_sets = {
        tokens: (
            file_prompts(args.prompts_file, 20000)
            if args.prompts_file
            else synthetic_prompts(tokenizer, tokens, 6000, args.seed + tokens)
        )
        for tokens in args.prompt_tokens
    }
    # Both servers run for the whole benchmark and the runs are interleaved round by round, so that the
    # ratios compare measurements taken minutes apart at most on a machine whose load drifts.
    servers = {
        name: Server(
            checkpoint,
            scratch,
            name,
            {
                "max_batch_size": size,
                "max_wait_ms": args.max_wait_ms,
                "max_batch_tokens": args.max_batch_tokens,
            },
            args.threads,
            backend=args.encoder_backend,
        )
        for name, size in (("sidecar", args.max_batch_size), ("unbatched", 1))
        if name == "sidecar" or not (args.skip_unbatched or args.sweep_clients)
    }
    if args.baseline_src is not None:  # another checkout's sidecar, with its own batching defaults
        servers["baseline"] = Server(
            checkpoint,
            scratch,
            "baseline",
            {"max_batch_size": args.max_batch_size, "max_batch_tokens": args.max_batch_tokens},
            args.threads,
            backend=args.encoder_backend,
            source=args.baseline_src.resolve(),
        )
    same_batching = {
        "max_batch_size": args.max_batch_size,
        "max_wait_ms": args.max_wait_ms,
        "max_batch_tokens": args.max_batch_tokens,
    }
    if torch_inference is not None and not args.sweep_clients:  # today's fp32 torch sidecar, same rounds
        servers["sidecar_torch"] = Server(
            checkpoint, scratch, "sidecar_torch", same_batching, args.threads, backend="torch"
        )
    if args.alt_backend is not None and not args.sweep_clients:
        servers["sidecar_alt"] = Server(
            checkpoint, scratch, "sidecar_alt", same_batching, args.threads, backend=args.alt_backend
        )
    all_rounds: list[list[Result]] = []
    peaks: dict[str, float | None] = {}
    completed = False
    try:
        for round_index in range(args.rounds):
            current: list[Result] = []
            for tokens, prompts in prompt_sets.items():
                if args.sweep_clients:
                    current += sweep_runs(servers, prompts, tokens, args, round_index)
                else:
                    current += standard_runs(servers, inference, torch_inference, prompts, tokens, args)
            for result in current:
                print(
                    f"round {round_index}: {result.name} {result.prompt_tokens} tok x{result.concurrency}: "
                    f"{result.throughput_rps:.1f}/s p50 {result.p50_ms:.1f} ms",
                    file=sys.stderr,
                )
            all_rounds.append(current)
        peaks = {name: peak_rss_mib(server.proc.pid) for name, server in servers.items()}
        completed = True
    finally:
        for server in servers.values():
            server.close()
        remove_scratch(scratch, completed)
    results = median_rounds(all_rounds)

    print(table(results))
    print()
    summary = ratio_summary(all_rounds)
    print("Within-round comparisons (median over rounds; per round in brackets):")
    for key, value in summary.items():
        rounds_text = ", ".join(f"{v:.2f}" for v in value["rounds"])  # type: ignore[union-attr]
        print(f"- {key}: {value['median']:.2f} [{rounds_text}]")
    print(
        "Peak RSS per server (MiB, VmHWM over the whole run): "
        + ", ".join(f"{name} {mib:.0f}" if mib is not None else f"{name} n/a" for name, mib in peaks.items())
    )
    if args.json:
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "json"}
        config.update(
            encoder_backend_resolved=backend,
            checkpoint=str(checkpoint),
            cpu_count=os.cpu_count(),
            torch=torch.__version__,
            python=sys.version.split()[0],
            load_average=os.getloadavg(),
        )
        args.json.write_text(
            json.dumps(
                {
                    "config": config,
                    "results": [asdict(r) for r in results],
                    "comparisons": summary,
                    "peak_rss_mib": peaks,
                    "rounds": [[asdict(r) for r in one_round] for one_round in all_rounds],
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
