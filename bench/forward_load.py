"""Forwarding overhead benchmark: Complete through the sidecar vs the provider called directly.

In ONE run, against the fake provider with zero latency (a separate process), at each concurrency:
  direct            the same chat request streamed straight to the fake provider with aiohttp
  sidecar_route     Route on the same prompt (the routing decision alone)
  sidecar_complete  Complete through the sidecar (route + forward + stream back)
``p50_added_ms = p50(sidecar_complete) - p50(sidecar_route) - p50(direct)`` is what forwarding adds
beyond the routing decision and the provider itself; ``p50_first_token_added_ms`` is the same for the time
to the first text. Rounds interleave the three modes so machine noise hits them alike. The sidecar runs as
a real ``barp-sidecar serve`` process; the load generator is this process (grpc.aio + aiohttp), sharing the
CPU with both servers; the CPU time each process spent per request is reported too.

Closed loop (default): ``concurrency`` workers each send the next request when the last one finished, so
at 100 the CPU saturates and latency is mostly queueing. Open loop (``--rate-rps R``): every mode starts R
calls per second whatever the completions, so all three are compared at the same load; with
``--tokens-per-s`` the fake streams its tokens over time, e.g. 8 tokens at 10/s last 0.7 s, and R = 140
keeps about 100 streams open at once.

    python -m bench.forward_load [--concurrency 1,100] [--requests 2400] [--rounds 3] [--tokens 8]
        [--tokens-per-s 0] [--rate-rps 0] [--policy hash|builtin] [--json PATH]

``--policy hash`` (default) serves a small randomly initialised 11-arm policy on the ``hash:384`` encoder,
so the numbers isolate forwarding; ``builtin`` serves the shipped RouterBench policy with the real encoder.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import yaml

from barp_sidecar.errors import CheckpointError
from barp_sidecar.gen.barp.v1 import router_pb2, router_pb2_grpc
from barp_sidecar.providers.openai_adapter import OpenAIStreamDecoder

MODES = ("direct", "sidecar_route", "sidecar_complete")
STARTUP_TIMEOUT_S = 120.0


def make_hash_checkpoint(directory: Path) -> tuple[str, ...]:
    """A small randomly initialised 11-arm policy on the hash:384 encoder (the MLP cost is negligible)."""
    import torch

    from barp_sidecar.policy.checkpoint import EncoderIdentity, PolicyManifest, save_checkpoint
    from barp_sidecar.policy.network import PolicyArchitecture, PolicyNetwork

    arms = tuple(f"model-{i:02d}" for i in range(11))
    torch.manual_seed(0)
    architecture = PolicyArchitecture(embedding_dim=384, num_arms=len(arms))
    manifest = PolicyManifest(
        version=1,
        arms=arms,
        encoder=EncoderIdentity("hash:384", 384, 256, "tail"),
        tau_usd=0.005,
        architecture=architecture,
    )
    save_checkpoint(directory, PolicyNetwork(architecture), manifest)
    return arms


def builtin_checkpoint() -> tuple[Path, tuple[str, ...]]:
    # Imported here: the shipped policy comes with another issue and may be absent.
    from barp_sidecar.policy.builtin import builtin_policy_dir
    from barp_sidecar.policy.checkpoint import read_manifest

    directory = builtin_policy_dir()
    return directory, read_manifest(directory).arms


async def wait_for_json_event(
    log_file: Path, event: str, what: str, child: asyncio.subprocess.Process
) -> dict[str, Any]:
    """Poll the child's stdout log file for a JSON line whose ``event`` is ``event``."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        for line in (await asyncio.to_thread(log_file.read_text, errors="replace")).splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                data = json.loads(line)
                if isinstance(data, dict) and data.get("event") == event:
                    return data
        if child.returncode is not None:
            raise RuntimeError(f"{what} exited ({child.returncode}) before logging {event}; see {log_file}")
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{what} did not log {event} within {STARTUP_TIMEOUT_S:.0f}s")


@contextlib.asynccontextmanager
async def process(
    args: Sequence[str], event: str, what: str, log_file: Path
) -> AsyncIterator[dict[str, Any]]:
    """Start a child process (stdout to ``log_file``), yield its startup event, then SIGTERM it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with log_file.open("wb") as sink:
        child = await asyncio.create_subprocess_exec(
            *args, stdout=sink, stderr=asyncio.subprocess.STDOUT, env=env
        )
    try:
        started = await wait_for_json_event(log_file, event, what, child)
        yield {**started, "_pid": child.pid}
    finally:
        if child.returncode is None:
            child.terminate()
            try:
                await asyncio.wait_for(child.wait(), 10)
            except TimeoutError:
                child.kill()
                await child.wait()


Call = Callable[[int], Awaitable[float | None]]


async def run_load(call: Call, requests: int, concurrency: int) -> tuple[list[float], list[float], float]:
    """``requests`` calls by ``concurrency`` workers.

    Returns per-call latencies (s), per-call times to the first text (s; streaming calls only) and the wall
    time (s).
    """
    latencies: list[float] = []
    firsts: list[float] = []
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < requests:
            index = next_index
            next_index += 1
            started = time.perf_counter()
            first = await call(index)
            latencies.append(time.perf_counter() - started)
            if first is not None:
                firsts.append(first)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, firsts, time.perf_counter() - started


async def run_paced(call: Call, requests: int, rate_rps: float) -> tuple[list[float], list[float], float]:
    """Open loop: one call every 1/rate_rps seconds whatever the completions; returns as run_load."""
    latencies: list[float] = []
    firsts: list[float] = []

    async def timed(index: int) -> None:
        started = time.perf_counter()
        first = await call(index)
        latencies.append(time.perf_counter() - started)
        if first is not None:
            firsts.append(first)

    tasks = []
    started = time.perf_counter()
    for index in range(requests):
        delay = started + index / rate_rps - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(timed(index)))
    await asyncio.gather(*tasks)
    return latencies, firsts, time.perf_counter() - started


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile_ms(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index] * 1000.0


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    load_start = os.getloadavg()[0]
    report = await _bench(args)
    # Other work on the machine moves these numbers: record how busy it was.
    report["config"]["load_average_1min"] = [round(load_start, 2), round(os.getloadavg()[0], 2)]
    return report


async def _bench(args: argparse.Namespace) -> dict[str, Any]:
    # Open loop ignores --concurrency: one pass, concurrency is whatever the rate and latency make it.
    concurrencies = [int(c) for c in args.concurrency.split(",")] if args.rate_rps <= 0 else [1]
    with tempfile.TemporaryDirectory(prefix="barp-forward-bench-") as tmp:
        root = Path(tmp)
        logs = Path(args.log_dir) if args.log_dir else root
        logs.mkdir(parents=True, exist_ok=True)
        if args.policy == "hash":
            checkpoint = root / "policy"
            arms = make_hash_checkpoint(checkpoint)
        else:
            checkpoint, arms = builtin_checkpoint()
        fake_cmd = [sys.executable, "-m", "barp_sidecar.providers.fake_server", "--port", "0"]
        fake_cmd += ["--tokens", str(args.tokens), "--tokens-per-s", str(args.tokens_per_s)]
        async with process(fake_cmd, "fake_provider_started", "fake provider", logs / "fake.log") as fake:
            base_url = fake["base_url"]
            catalog = {
                "providers": [
                    {
                        "arm": arm,
                        "base_url": base_url,
                        "upstream_model": "fake",
                        "input_usd_per_1m_tokens": 1.0,
                        "output_usd_per_1m_tokens": 2.0,
                        # Above the largest concurrency: the benchmark measures overhead, not the limit.
                        "max_concurrency": 1024,
                        "timeout_s": 60,
                    }
                    for arm in arms
                ]
            }
            (root / "catalog.yaml").write_text(yaml.safe_dump(catalog))
            config = {
                "server": {"host": "127.0.0.1", "port": 0},
                "metrics": {"enabled": False},
                "admin": {"enabled": False},
                "logging": {"level": "info"},  # as deployed: one access event per RPC
                "policy": {"checkpoint_dir": str(checkpoint), "device": "cpu", "cpu_threads": 1},
                # Route and Complete see the same prompts: no cache, so both pay for the decision.
                "batching": {"embedding_cache_entries": 0},
                "providers": {"catalog_file": str(root / "catalog.yaml")},
            }
            (root / "sidecar.yaml").write_text(yaml.safe_dump(config))
            profile = ["-m", "cProfile", "-o", args.profile_sidecar] if args.profile_sidecar else []
            serve_cmd = [
                sys.executable,
                *profile,
                "-m",
                "barp_sidecar.cli",
                "serve",
                "--config",
                str(root / "sidecar.yaml"),
            ]
            async with process(serve_cmd, "server_started", "sidecar", logs / "sidecar.log") as sidecar:
                pids = {"sidecar": int(sidecar["_pid"]), "fake": int(fake["_pid"])}
                return await measure(args, concurrencies, base_url, int(sidecar["port"]), pids)


async def measure(
    args: argparse.Namespace,
    concurrencies: list[int],
    base_url: str,
    port: int,
    pids: dict[str, int],
) -> dict[str, Any]:
    prompts = [f"Question {i}: what is {i} times {(i * 7) % 13}, in base {2 + i % 9}?" for i in range(4096)]
    messages = [[{"role": "user", "content": p}] for p in prompts]
    body_template = {"model": "fake", "stream": True, "stream_options": {"include_usage": True}}
    connector = aiohttp.TCPConnector(limit=0)
    options = [("grpc.max_concurrent_streams", 1000)]
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel,
    ):
        stub = router_pb2_grpc.RouterStub(channel)
        url = f"{base_url}/chat/completions"

        async def direct(i: int) -> float | None:
            started = time.perf_counter()
            first = None
            decoder = OpenAIStreamDecoder()
            body = {**body_template, "messages": messages[i % len(messages)]}
            async with session.post(url, json=body) as response:
                assert response.status == 200, response.status
                async for chunk in response.content.iter_any():
                    if any(event.delta for event in decoder.feed(chunk)) and first is None:
                        first = time.perf_counter() - started
            decoder.finish()
            return first

        async def route(i: int) -> float | None:
            await stub.Route(router_pb2.RouteRequest(prompt=prompts[i % len(prompts)]), timeout=60)
            return None

        async def complete(i: int) -> float | None:
            started = time.perf_counter()
            first = None
            request = router_pb2.CompleteRequest(
                messages=[router_pb2.ChatMessage(role="user", content=prompts[i % len(prompts)])]
            )
            last = None
            async for chunk in stub.Complete(request, timeout=60):
                if chunk.delta and first is None:
                    first = time.perf_counter() - started
                last = chunk
            assert last is not None and last.HasField("usage")
            return first

        calls = {"direct": direct, "sidecar_route": route, "sidecar_complete": complete}
        # Warm-up: connections, code paths, the sidecar's first batches.
        for name in MODES:
            await run_load(calls[name], 200, 20)
        results = []
        for concurrency in concurrencies:
            latencies: dict[str, list[float]] = {name: [] for name in MODES}
            firsts: dict[str, list[float]] = {name: [] for name in MODES}
            wall: dict[str, float] = dict.fromkeys(MODES, 0.0)
            cpu: dict[str, dict[str, float]] = {name: dict.fromkeys([*pids, "client"], 0.0) for name in MODES}
            per_round = max(concurrency, args.requests // args.rounds)
            for _ in range(args.rounds):
                for name in MODES:
                    before = {who: cpu_seconds(pid) for who, pid in pids.items()}
                    client_before = cpu_seconds(os.getpid())
                    if args.rate_rps > 0:
                        values, first_values, seconds = await run_paced(calls[name], per_round, args.rate_rps)
                    else:
                        values, first_values, seconds = await run_load(calls[name], per_round, concurrency)
                    for who, pid in pids.items():
                        cpu[name][who] += cpu_seconds(pid) - before[who]
                    cpu[name]["client"] += cpu_seconds(os.getpid()) - client_before
                    latencies[name] += values
                    firsts[name] += first_values
                    wall[name] += seconds
            rows: dict[str, dict[str, Any]] = {
                name: {
                    "name": name,
                    # Closed loop: the workers; open loop: the mean number of calls in flight.
                    "concurrency": concurrency
                    if args.rate_rps <= 0
                    else round(sum(latencies[name]) / wall[name]),
                    "load": f"open {args.rate_rps:g} rps" if args.rate_rps > 0 else "closed",
                    "requests": len(latencies[name]),
                    "throughput_rps": round(len(latencies[name]) / wall[name], 1),
                    "p50_ms": round(percentile_ms(latencies[name], 0.50), 3),
                    "p95_ms": round(percentile_ms(latencies[name], 0.95), 3),
                    "p99_ms": round(percentile_ms(latencies[name], 0.99), 3),
                    "mean_ms": round(statistics.fmean(latencies[name]) * 1000, 3),
                    # CPU time the servers spent per request: robust where wall-clock latency is noisy.
                    "sidecar_cpu_ms_per_request": round(
                        cpu[name]["sidecar"] * 1000 / len(latencies[name]), 3
                    ),
                    "fake_cpu_ms_per_request": round(cpu[name]["fake"] * 1000 / len(latencies[name]), 3),
                    "client_cpu_ms_per_request": round(cpu[name]["client"] * 1000 / len(latencies[name]), 3),
                }
                for name in MODES
            }
            p50 = {name: percentile_ms(latencies[name], 0.50) for name in MODES}
            added_ms = p50["sidecar_complete"] - p50["sidecar_route"] - p50["direct"]
            rows["sidecar_complete"]["p50_added_ms"] = round(added_ms, 3)
            for name in ("direct", "sidecar_complete"):
                rows[name]["p50_first_token_ms"] = round(percentile_ms(firsts[name], 0.50), 3)
            first_added_ms = (
                percentile_ms(firsts["sidecar_complete"], 0.50)
                - p50["sidecar_route"]
                - percentile_ms(firsts["direct"], 0.50)
            )
            rows["sidecar_complete"]["p50_first_token_added_ms"] = round(first_added_ms, 3)
            results += [rows[name] for name in MODES]
            print_rows([rows[name] for name in MODES])
    return {
        "config": {
            "policy": args.policy,
            "tokens_per_completion": args.tokens,
            "rounds": args.rounds,
            "requests_per_mode": args.requests,
            "concurrency": concurrencies,
            "fake_provider_latency_ms": 0,
            "fake_tokens_per_s": args.tokens_per_s,
            "rate_rps": args.rate_rps,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "results": results,
    }


def print_rows(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        added = row.get("p50_added_ms")
        print(
            f"{row['name']:<17} c={row['concurrency']:<4} {row['load']:<6} "
            f"{row['throughput_rps']:>8.1f} rps  "
            f"p50 {row['p50_ms']:>8.2f} ms  p95 {row['p95_ms']:>8.2f}  p99 {row['p99_ms']:>8.2f}  "
            f"cpu/req sidecar {row['sidecar_cpu_ms_per_request']:.3f} ms "
            f"fake {row['fake_cpu_ms_per_request']:.3f} ms client {row['client_cpu_ms_per_request']:.3f} ms"
            + (f"  added p50 {added:+.2f} ms" if added is not None else ""),
            flush=True,
        )


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "| mode | concurrency | load | throughput (req/s) | p50 (ms) | p95 (ms) | p99 (ms) | added p50 (ms) "
        "| p50 first token (ms) | added p50 first token (ms) | sidecar CPU/req (ms) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        added = f"{r['p50_added_ms']:+.2f}" if "p50_added_ms" in r else ""
        first = f"{r['p50_first_token_ms']:.2f}" if "p50_first_token_ms" in r else ""
        first_added = f"{r['p50_first_token_added_ms']:+.2f}" if "p50_first_token_added_ms" in r else ""
        lines.append(
            f"| {r['name']} | {r['concurrency']} | {r['load']} | {r['throughput_rps']:.0f} | "
            f"{r['p50_ms']:.2f} | "
            f"{r['p95_ms']:.2f} | {r['p99_ms']:.2f} | {added} | {first} | {first_added} | "
            f"{r['sidecar_cpu_ms_per_request']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,100", help="comma-separated concurrent streams")
    parser.add_argument("--requests", type=int, default=1500, help="requests per mode and concurrency")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the three modes")
    parser.add_argument("--tokens", type=int, default=8, help="tokens per completion from the fake")
    parser.add_argument(
        "--tokens-per-s", type=float, default=0.0, help="fake provider's streaming rate (0 = all at once)"
    )
    parser.add_argument(
        "--rate-rps",
        type=float,
        default=0.0,
        help="open loop: start this many calls per second in every mode (0 = closed loop, --concurrency)",
    )
    parser.add_argument("--policy", choices=("hash", "builtin"), default="hash")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--log-dir", metavar="DIR", help="keep the fake's and the sidecar's logs here")
    parser.add_argument("--profile-sidecar", metavar="PATH", help="run the sidecar under cProfile into PATH")
    args = parser.parse_args(argv)
    try:
        report = asyncio.run(bench(args))
    except CheckpointError as error:
        print(f"forward_load: --policy {args.policy}: {error}", file=sys.stderr)
        return 2
    print()
    print(markdown(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
