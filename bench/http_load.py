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
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import yaml

from barp_sidecar.gen.barp.v1 import router_pb2, router_pb2_grpc
from bench import load_client

MODES = ("grpc_complete", "http_stream", "http_json")
TARGET_ADDED_P50_MS = 1.0
TARGET_THROUGHPUT_RATIO = 0.9


async def _bench(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="barp-http-bench-") as tmp:
        root = Path(tmp)
        logs = Path(args.log_dir) if args.log_dir else root
        logs.mkdir(parents=True, exist_ok=True)
        models = load_client.make_hash_checkpoint(root / "policy")
        fake_cmd = [sys.executable, "-m", "barp_sidecar.providers.fake_server", "--port", "0"]
        fake_cmd += ["--tokens", str(args.tokens), "--tokens-per-s", str(args.tokens_per_s)]
        async with load_client.process(
            fake_cmd, "fake_provider_started", "fake provider", logs / "fake.log"
        ) as fake:
            catalog = load_client.fake_catalog(models, fake["base_url"])
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
            async with load_client.process(
                serve_cmd, "server_started", "sidecar", logs / "sidecar.log"
            ) as sidecar:
                return await measure(
                    args,
                    load_client.concurrencies(args),
                    int(sidecar["port"]),
                    int(sidecar["http_port"]),
                    int(sidecar["_pid"]),
                )


async def measure(
    args: argparse.Namespace, concurrency_levels: list[int], grpc_port: int, http_port: int, sidecar_pid: int
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
            await load_client.run_load(calls[name], 200, 20)
        results = []
        for concurrency in concurrency_levels:
            measured = load_client.InterleavedRounds(MODES, {"sidecar": sidecar_pid})
            per_round = max(concurrency, args.requests // args.rounds)
            await measured.run(calls, args.rounds, per_round, concurrency, args.rate_rps)
            rows: dict[str, dict[str, Any]] = {}
            for name in MODES:
                rows[name] = measured.row(name, concurrency, args.rate_rps)
                rows[name]["sidecar_cpu_ms_per_request"] = measured.cpu_ms_per_request(name, "sidecar")
                # The load generator shares the CPU: its own cost per request bounds the throughput.
                rows[name]["client_cpu_ms_per_request"] = measured.cpu_ms_per_request(name, "client")
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
            "concurrency": concurrency_levels,
            "rate_rps": args.rate_rps,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "targets": {"p50_added_ms_max": TARGET_ADDED_P50_MS, "throughput_ratio_min": TARGET_THROUGHPUT_RATIO},
        "results": results,
    }


# The table's columns after the load columns: (title, row key, format spec).
TABLE_COLUMNS = (
    ("added p50 vs gRPC (ms)", "p50_added_ms", "+.2f"),
    ("streams vs gRPC", "throughput_ratio", ".2f×"),
    ("sidecar CPU/req (ms)", "sidecar_cpu_ms_per_request", ".3f"),
    ("client CPU/req (ms)", "client_cpu_ms_per_request", ".3f"),
)


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    load_client.add_load_arguments(parser, requests=1500)
    args = parser.parse_args(argv)
    load_start = os.getloadavg()[0]
    report = asyncio.run(_bench(args))
    report["config"]["load_average_1min"] = [round(load_start, 2), round(os.getloadavg()[0], 2)]
    print()
    print(load_client.load_markdown(report["results"], TABLE_COLUMNS))
    load_client.write_report(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
