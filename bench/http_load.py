"""HTTP API overhead benchmark (issue 15): OpenAI-compatible ``/v1/chat/completions`` vs gRPC ``Complete``.

In ONE run, against the fake provider with zero latency (a separate process) and ONE ``barp-sidecar
serve`` process with both the gRPC and the HTTP API on, at each concurrency:
  grpc_complete   Router.Complete over grpc.aio (route + forward + stream back)
  http_stream     POST /v1/chat/completions with ``stream: true`` (the same prompts, the same path)
  http_json       the same, not streamed (one JSON body)
``p50_added_ms = p50(http_*) - p50(grpc_complete)`` is what the HTTP transport adds over gRPC, and
``throughput_ratio = throughput(http_*) / throughput(grpc_complete)`` how many of gRPC's streams it
sustains at the same concurrency. Rounds interleave the modes so machine noise hits them alike. The load
generator is this process, sharing the CPU with both servers.

    python -m bench.http_load [--concurrency 1,100] [--requests 1500] [--rounds 3] [--tokens 8]
        [--tokens-per-s 0] [--rate-rps 0] [--json PATH]

Targets (issue 15): the HTTP path adds <= 1 ms p50 over gRPC Complete and sustains >= 0.9x its streams.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import yaml

from barp_sidecar.gen.barp.v1 import router_pb2, router_pb2_grpc
from bench.forward_load import (
    cpu_seconds,
    make_hash_checkpoint,
    percentile_ms,
    process,
    run_load,
    run_paced,
)

MODES = ("grpc_complete", "http_stream", "http_json")
TARGET_ADDED_P50_MS = 1.0
TARGET_THROUGHPUT_RATIO = 0.9


async def _bench(args: argparse.Namespace) -> dict[str, Any]:
    concurrencies = [int(c) for c in args.concurrency.split(",")] if args.rate_rps <= 0 else [1]
    with tempfile.TemporaryDirectory(prefix="barp-http-bench-") as tmp:
        root = Path(tmp)
        logs = Path(args.log_dir) if args.log_dir else root
        logs.mkdir(parents=True, exist_ok=True)
        models = make_hash_checkpoint(root / "policy")
        fake_cmd = [sys.executable, "-m", "barp_sidecar.providers.fake_server", "--port", "0"]
        fake_cmd += ["--tokens", str(args.tokens), "--tokens-per-s", str(args.tokens_per_s)]
        async with process(fake_cmd, "fake_provider_started", "fake provider", logs / "fake.log") as fake:
            catalog = {
                "providers": [
                    {
                        "arm": model,
                        "base_url": fake["base_url"],
                        "upstream_model": "fake",
                        "input_usd_per_1m_tokens": 1.0,
                        "output_usd_per_1m_tokens": 2.0,
                        "max_concurrency": 1024,
                        "timeout_s": 60,
                    }
                    for model in models
                ]
            }
            (root / "catalog.yaml").write_text(yaml.safe_dump(catalog))
            config = {
                "server": {"host": "127.0.0.1", "port": 0},
                "http": {"enabled": True, "port": 0},
                "metrics": {"enabled": False},
                "admin": {"enabled": False},
                "state": {"dir": str(root / "state")},  # its own spool: another sidecar may hold the default
                "logging": {"level": "info"},  # as deployed: one access event per request
                "policy": {"checkpoint_dir": str(root / "policy"), "device": "cpu", "cpu_threads": 1},
                "batching": {"embedding_cache_entries": 0},
                "providers": {"catalog_file": str(root / "catalog.yaml")},
            }
            (root / "sidecar.yaml").write_text(yaml.safe_dump(config))
            serve_cmd = [
                sys.executable,
                "-m",
                "barp_sidecar.cli",
                "serve",
                "--config",
                str(root / "sidecar.yaml"),
            ]
            async with process(serve_cmd, "server_started", "sidecar", logs / "sidecar.log") as sidecar:
                return await measure(
                    args, concurrencies, int(sidecar["port"]), int(sidecar["http_port"]), int(sidecar["_pid"])
                )


async def measure(
    args: argparse.Namespace, concurrencies: list[int], grpc_port: int, http_port: int, sidecar_pid: int
) -> dict[str, Any]:
    prompts = [f"Question {i}: what is {i} times {(i * 7) % 13}, in base {2 + i % 9}?" for i in range(4096)]
    url = f"http://127.0.0.1:{http_port}/v1/chat/completions"
    options = [("grpc.max_concurrent_streams", 1000)]
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session,
        grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}", options=options) as channel,
    ):
        stub = router_pb2_grpc.RouterStub(channel)

        async def grpc_complete(i: int) -> float | None:
            request = router_pb2.CompleteRequest(
                messages=[router_pb2.ChatMessage(role="user", content=prompts[i % len(prompts)])]
            )
            last = None
            async for chunk in stub.Complete(request, timeout=60):
                last = chunk
            assert last is not None and last.HasField("usage")
            return None

        async def http_stream(i: int) -> float | None:
            body = {
                "model": "barp-auto",
                "stream": True,
                "messages": [{"role": "user", "content": prompts[i % len(prompts)]}],
            }
            async with session.post(url, json=body) as response:
                assert response.status == 200, response.status
                tail = b""
                async for chunk in response.content.iter_any():
                    tail = (tail + chunk)[-32:]
                assert tail.endswith(b"data: [DONE]\n\n"), tail
            return None

        async def http_json(i: int) -> float | None:
            body = {
                "model": "barp-auto",
                "messages": [{"role": "user", "content": prompts[i % len(prompts)]}],
            }
            async with session.post(url, json=body) as response:
                assert response.status == 200, response.status
                payload = await response.json()
                assert payload["choices"][0]["finish_reason"], payload
            return None

        calls = {"grpc_complete": grpc_complete, "http_stream": http_stream, "http_json": http_json}
        for name in MODES:  # warm-up: connections, code paths, the sidecar's first batches
            await run_load(calls[name], 200, 20)
        results = []
        for concurrency in concurrencies:
            latencies: dict[str, list[float]] = {name: [] for name in MODES}
            wall = dict.fromkeys(MODES, 0.0)
            cpu = dict.fromkeys(MODES, 0.0)
            client_cpu = dict.fromkeys(MODES, 0.0)
            per_round = max(concurrency, args.requests // args.rounds)
            for _ in range(args.rounds):
                for name in MODES:
                    before = cpu_seconds(sidecar_pid)
                    client_before = cpu_seconds(os.getpid())
                    if args.rate_rps > 0:
                        values, _, seconds = await run_paced(calls[name], per_round, args.rate_rps)
                    else:
                        values, _, seconds = await run_load(calls[name], per_round, concurrency)
                    cpu[name] += cpu_seconds(sidecar_pid) - before
                    client_cpu[name] += cpu_seconds(os.getpid()) - client_before
                    latencies[name] += values
                    wall[name] += seconds
            rows = {
                name: {
                    "name": name,
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
                    "sidecar_cpu_ms_per_request": round(cpu[name] * 1000 / len(latencies[name]), 3),
                    # The load generator shares the CPU: its own cost per request bounds the throughput.
                    "client_cpu_ms_per_request": round(client_cpu[name] * 1000 / len(latencies[name]), 3),
                }
                for name in MODES
            }
            base = rows["grpc_complete"]
            for name in ("http_stream", "http_json"):
                rows[name]["p50_added_ms"] = round(rows[name]["p50_ms"] - base["p50_ms"], 3)
                rows[name]["throughput_ratio"] = round(
                    rows[name]["throughput_rps"] / base["throughput_rps"], 3
                )
            results += [rows[name] for name in MODES]
            print_rows([rows[name] for name in MODES])
    return {
        "config": {
            "tokens_per_completion": args.tokens,
            "fake_tokens_per_s": args.tokens_per_s,
            "rounds": args.rounds,
            "requests_per_mode": args.requests,
            "concurrency": concurrencies,
            "rate_rps": args.rate_rps,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "targets": {"p50_added_ms_max": TARGET_ADDED_P50_MS, "throughput_ratio_min": TARGET_THROUGHPUT_RATIO},
        "results": results,
    }


def print_rows(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        extra = ""
        if "p50_added_ms" in row:
            extra = f"  added p50 {row['p50_added_ms']:+.2f} ms  x{row['throughput_ratio']:.2f} streams"
        print(
            f"{row['name']:<14} c={row['concurrency']:<4} {row['throughput_rps']:>8.1f} rps  "
            f"p50 {row['p50_ms']:>8.2f} ms  p95 {row['p95_ms']:>8.2f}  p99 {row['p99_ms']:>8.2f}  "
            f"cpu/req sidecar {row['sidecar_cpu_ms_per_request']:.3f} ms "
            f"client {row['client_cpu_ms_per_request']:.3f} ms{extra}",
            flush=True,
        )


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "| mode | concurrency | load | throughput (req/s) | p50 (ms) | p95 (ms) | p99 (ms) "
        "| added p50 vs gRPC (ms) | streams vs gRPC | sidecar CPU/req (ms) | client CPU/req (ms) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        added = f"{r['p50_added_ms']:+.2f}" if "p50_added_ms" in r else ""
        ratio = f"{r['throughput_ratio']:.2f}×" if "throughput_ratio" in r else ""
        lines.append(
            f"| {r['name']} | {r['concurrency']} | {r['load']} | {r['throughput_rps']:.0f} | "
            f"{r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} | {added} | {ratio} | "
            f"{r['sidecar_cpu_ms_per_request']:.3f} | {r['client_cpu_ms_per_request']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,100", help="comma-separated concurrent streams")
    parser.add_argument("--requests", type=int, default=1500, help="requests per mode and concurrency")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the modes")
    parser.add_argument("--tokens", type=int, default=8, help="tokens per completion from the fake")
    parser.add_argument("--tokens-per-s", type=float, default=0.0, help="fake's streaming rate (0 = at once)")
    parser.add_argument(
        "--rate-rps", type=float, default=0.0, help="open loop rate per mode (0 = closed loop)"
    )
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--log-dir", metavar="DIR", help="keep the fake's and the sidecar's logs here")
    args = parser.parse_args(argv)
    load_start = os.getloadavg()[0]
    report = asyncio.run(_bench(args))
    report["config"]["load_average_1min"] = [round(load_start, 2), round(os.getloadavg()[0], 2)]
    print()
    print(markdown(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
