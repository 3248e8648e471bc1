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
        [--long-tokens 0] [--tokens-per-s 0] [--rate-rps 0] [--policy hash|builtin] [--json PATH]
        [--baseline-src DIR] [--profile-sidecar PATH]

CPU of forwarding (process CPU time from /proc, not wall time): ``forward_cpu_ms_per_request`` is the
sidecar's CPU per Complete minus its CPU per Route (the decision both pay for). ``--long-tokens N`` adds
the mode ``sidecar_complete_long`` (Complete with max_tokens N; every request names its token count, so
one fake serves both) and ``sidecar_cpu_ms_per_extra_token`` = its extra CPU over ``sidecar_complete``
per extra token. With ``--tokens-per-s`` high enough (e.g. 200) each token is its own read and its own gRPC
message: the per-chunk cost. ``--baseline-src DIR`` starts a second sidecar from another checkout (e.g.
``git archive main | tar -x -C DIR``) and runs the same modes against it as ``baseline_*``, interleaved in
the same rounds: before/after side by side in one run. ``--profile-sidecar PATH`` runs the sidecar under
cProfile and prints its costliest functions (own time) per Complete call.

``messages_per_stream`` (Complete modes): gRPC messages the client received per call. Tokens the sidecar
read from the provider together (a burst, or what arrived while its previous send was in flight) travel as
one message; a token that arrived alone is sent alone, never held back for later ones.

``--policy hash`` (default) serves a small randomly initialised 11-model policy on the ``hash:384`` encoder,
so the numbers isolate forwarding; ``builtin`` serves the shipped RouterBench policy with the real encoder.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import yaml

from barp_sidecar.errors import CheckpointError
from barp_sidecar.gen.barp.v1 import router_pb2, router_pb2_grpc
from barp_sidecar.providers.openai_adapter import OpenAIStreamDecoder
from bench.load_client import (
    Call,
    InterleavedRounds,
    add_load_arguments,
    concurrencies,
    fake_catalog,
    load_markdown,
    make_hash_checkpoint,
    percentile_ms,
    process,
    run_load,
    write_report,
)

BASE_MODES = ("direct", "sidecar_route", "sidecar_complete")
LONG_MODE = "sidecar_complete_long"
PROFILE_TOP_FUNCTIONS = 25
WARM_UP_REQUESTS = 200


# The table's columns after the load columns: (title, row key, format spec).
TABLE_COLUMNS = (
    ("added p50 (ms)", "p50_added_ms", "+.2f"),
    ("p50 first token (ms)", "p50_first_token_ms", ".2f"),
    ("added p50 first token (ms)", "p50_first_token_added_ms", "+.2f"),
    ("sidecar CPU/req (ms)", "sidecar_cpu_ms_per_request", ".3f"),
    ("forwarding CPU/req (ms)", "forward_cpu_ms_per_request", ".3f"),
    ("CPU/extra token (ms)", "sidecar_cpu_ms_per_extra_token", ".4f"),
    ("gRPC messages/stream", "messages_per_stream", ".2f"),
)


def builtin_checkpoint() -> tuple[Path, tuple[str, ...]]:
    # Imported here: the shipped policy comes with another issue and may be absent.
    from barp_sidecar.policy.builtin import builtin_policy_dir
    from barp_sidecar.policy.checkpoint import read_manifest

    directory = builtin_policy_dir()
    return directory, read_manifest(directory).models


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    load_start = os.getloadavg()[0]
    report = await _bench(args)
    # Other work on the machine moves these numbers: record how busy it was.
    report["config"]["load_average_1min"] = [round(load_start, 2), round(os.getloadavg()[0], 2)]
    return report


async def _bench(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="barp-forward-bench-") as tmp:
        root = Path(tmp)
        logs = Path(args.log_dir) if args.log_dir else root
        logs.mkdir(parents=True, exist_ok=True)
        if args.policy == "hash":
            checkpoint = root / "policy"
            models = make_hash_checkpoint(checkpoint)
        else:
            checkpoint, models = builtin_checkpoint()
        fake_cmd = [sys.executable, "-m", "barp_sidecar.providers.fake_server", "--port", "0"]
        # Every request names its token count (max_tokens), so one fake serves both stream lengths.
        fake_tokens = max(args.tokens, args.long_tokens)
        fake_cmd += ["--tokens", str(fake_tokens), "--tokens-per-s", str(args.tokens_per_s)]
        async with process(fake_cmd, "fake_provider_started", "fake provider", logs / "fake.log") as fake:
            base_url = fake["base_url"]
            catalog = fake_catalog(models, base_url)
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
                # Its own spool and state: another sidecar on the machine holds the default one.
                "state": {"dir": str(root / "state")},
            }
            (root / "sidecar.yaml").write_text(yaml.safe_dump(config))
            profile = ["-m", "cProfile", "-o", args.profile_sidecar] if args.profile_sidecar else []
            serve = [sys.executable, "-m", "barp_sidecar.cli", "serve", "--config"]
            async with contextlib.AsyncExitStack() as stack:
                sidecar = await stack.enter_async_context(
                    process(
                        [*serve[:1], *profile, *serve[1:], str(root / "sidecar.yaml")],
                        "server_started",
                        "sidecar",
                        logs / "sidecar.log",
                    )
                )
                pids = {"sidecar": int(sidecar["_pid"]), "fake": int(fake["_pid"])}
                ports = {"sidecar": int(sidecar["port"])}
                if args.baseline_src:
                    config["state"] = {"dir": str(root / "baseline-state")}
                    (root / "baseline.yaml").write_text(yaml.safe_dump(config))
                    baseline = await stack.enter_async_context(
                        process(
                            [*serve, str(root / "baseline.yaml")],
                            "server_started",
                            "baseline sidecar",
                            logs / "baseline.log",
                            source=args.baseline_src,
                        )
                    )
                    pids["baseline"] = int(baseline["_pid"])
                    ports["baseline"] = int(baseline["port"])
                return await measure(args, concurrencies(args), base_url, ports, pids)


async def measure(
    args: argparse.Namespace,
    concurrency_levels: list[int],
    base_url: str,
    ports: dict[str, int],
    pids: dict[str, int],
) -> dict[str, Any]:
    prompts = [f"Question {i}: what is {i} times {(i * 7) % 13}, in base {2 + i % 9}?" for i in range(4096)]
    messages = [[{"role": "user", "content": p}] for p in prompts]
    body_template = {
        "model": "fake",
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": args.tokens,
    }
    sidecar_modes = BASE_MODES[1:] + ((LONG_MODE,) if args.long_tokens > args.tokens else ())
    # The baseline sidecar's modes: the same calls, named "baseline_…" (e.g. baseline_complete).
    baseline_modes = tuple(m.replace("sidecar_", "baseline_") for m in sidecar_modes)
    modes = ("direct", *sidecar_modes, *(baseline_modes if "baseline" in ports else ()))
    connector = aiohttp.TCPConnector(limit=0)
    options = [("grpc.max_concurrent_streams", 1000)]
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession(connector=connector))
        stubs = {
            who: router_pb2_grpc.RouterStub(
                await stack.enter_async_context(
                    grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options)
                )
            )
            for who, port in ports.items()
        }
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

        async def route(i: int, who: str = "sidecar") -> float | None:
            await stubs[who].Route(router_pb2.RouteRequest(prompt=prompts[i % len(prompts)]), timeout=60)
            return None

        # gRPC messages received per Complete, by mode: tokens that arrived together travel as one.
        messages_received: dict[str, list[int]] = {}

        async def complete(
            i: int, mode: str, tokens: int = args.tokens, who: str = "sidecar"
        ) -> float | None:
            started = time.perf_counter()
            first = None
            request = router_pb2.CompleteRequest(
                messages=[router_pb2.ChatMessage(role="user", content=prompts[i % len(prompts)])],
                parameters=router_pb2.GenerationParameters(max_tokens=tokens),
            )
            last = None
            received = 0
            async for chunk in stubs[who].Complete(request, timeout=60):
                if chunk.delta and first is None:
                    first = time.perf_counter() - started
                last = chunk
                received += 1
            assert last is not None and last.HasField("usage")
            messages_received.setdefault(mode, []).append(received)
            return first

        calls: dict[str, Call] = {"direct": direct}
        for who in ports:
            prefix = "sidecar" if who == "sidecar" else "baseline"
            calls[f"{prefix}_route"] = functools.partial(route, who=who)
            for mode, tokens in (
                (f"{prefix}_complete", args.tokens),
                (f"{prefix}_complete_long", args.long_tokens),
            ):
                calls[mode] = functools.partial(complete, mode=mode, tokens=tokens, who=who)
        # Warm-up: connections, code paths, the sidecar's first batches.
        for name in modes:
            await run_load(calls[name], WARM_UP_REQUESTS, 20)
        results = []
        for concurrency in concurrency_levels:
            messages_received.clear()
            measured = InterleavedRounds(modes, pids)
            per_round = max(concurrency, args.requests // args.rounds)
            await measured.run(calls, args.rounds, per_round, concurrency, args.rate_rps)
            latencies, firsts = measured.latencies, measured.firsts
            rows: dict[str, dict[str, Any]] = {}
            for name in modes:
                rows[name] = measured.row(name, concurrency, args.rate_rps)
                # CPU time the servers spent per request: robust where wall-clock latency is noisy.
                # A baseline_* mode's sidecar is the baseline process.
                server = "baseline" if name.startswith("baseline") else "sidecar"
                rows[name]["sidecar_cpu_ms_per_request"] = measured.cpu_ms_per_request(name, server)
                rows[name]["fake_cpu_ms_per_request"] = measured.cpu_ms_per_request(name, "fake")
                rows[name]["client_cpu_ms_per_request"] = measured.cpu_ms_per_request(name, "client")
                if name in messages_received:
                    per_stream = statistics.fmean(messages_received[name])
                    rows[name]["messages_per_stream"] = round(per_stream, 2)
            p50 = {name: percentile_ms(latencies[name], 0.50) for name in modes}
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
            for prefix in ("sidecar", "baseline"):
                if f"{prefix}_complete" in rows:
                    add_cpu_summary(rows, args, prefix)
            results += [rows[name] for name in modes]
            print_rows([rows[name] for name in modes])
    return {
        "config": {
            "policy": args.policy,
            "tokens_per_completion": args.tokens,
            "long_tokens_per_completion": args.long_tokens if args.long_tokens > args.tokens else None,
            "rounds": args.rounds,
            "requests_per_mode": args.requests,
            "concurrency": concurrency_levels,
            "fake_provider_latency_ms": 0,
            "fake_tokens_per_s": args.tokens_per_s,
            "rate_rps": args.rate_rps,
            "modes": list(modes),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "results": results,
    }


def add_cpu_summary(rows: dict[str, dict[str, Any]], args: argparse.Namespace, prefix: str) -> None:
    """Sidecar CPU of forwarding itself: Complete minus Route, and per extra token (from the long mode).

    ``forward_cpu_ms_per_request`` = CPU/Complete − CPU/Route (the routing decision both pay for);
    ``sidecar_cpu_ms_per_extra_token`` = (CPU/long Complete − CPU/Complete) / (extra tokens).
    """
    complete = rows[f"{prefix}_complete"]
    complete["forward_cpu_ms_per_request"] = round(
        complete["sidecar_cpu_ms_per_request"] - rows[f"{prefix}_route"]["sidecar_cpu_ms_per_request"], 3
    )
    if f"{prefix}_complete_long" in rows:
        long = rows[f"{prefix}_complete_long"]
        extra_tokens = args.long_tokens - args.tokens
        extra_ms = long["sidecar_cpu_ms_per_request"] - complete["sidecar_cpu_ms_per_request"]
        per_token = extra_ms / extra_tokens
        long["sidecar_cpu_ms_per_extra_token"] = round(per_token, 4)


def print_profile(path: str, complete_calls: int, top: int = PROFILE_TOP_FUNCTIONS) -> None:
    """The sidecar's costliest functions (own time), in microseconds per streamed Complete.

    cProfile's clock is wall time: ``select.epoll.poll`` is mostly the loop waiting (idle, not CPU), and
    grpc.aio's Cython callbacks are not profiled on their own: their time shows under ``Context.run``.
    """
    import pstats

    stats = pstats.Stats(path)
    entries = sorted(stats.stats.items(), key=lambda item: -item[1][2])  # type: ignore[attr-defined]
    total_s = sum(value[2] for _, value in entries)
    print(f"\nsidecar profile ({path}): own time per Complete call ({complete_calls} calls), top {top}")
    print(f"{'us/call':>9} {'share':>6} {'calls/call':>10}  function")
    for (filename, line, name), (_, ncalls, tottime, _, _) in entries[:top]:
        where = f"{Path(filename).name}:{line}" if line else filename
        print(
            f"{tottime * 1e6 / complete_calls:9.1f} {tottime / total_s:6.1%} "
            f"{ncalls / complete_calls:10.1f}  {name} ({where})"
        )


def print_rows(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        added = row.get("p50_added_ms")
        print(
            f"{row['name']:<17} c={row['concurrency']:<4} {row['load']:<6} "
            f"{row['throughput_rps']:>8.1f} rps  "
            f"p50 {row['p50_ms']:>8.2f} ms  p95 {row['p95_ms']:>8.2f}  p99 {row['p99_ms']:>8.2f}  "
            f"cpu/req sidecar {row['sidecar_cpu_ms_per_request']:.3f} ms "
            f"fake {row['fake_cpu_ms_per_request']:.3f} ms client {row['client_cpu_ms_per_request']:.3f} ms"
            + (f"  added p50 {added:+.2f} ms" if added is not None else "")
            + (
                f"  forwarding cpu {row['forward_cpu_ms_per_request']:.3f} ms"
                if "forward_cpu_ms_per_request" in row
                else ""
            )
            + (
                f"  cpu/extra token {row['sidecar_cpu_ms_per_extra_token']:.4f} ms"
                if "sidecar_cpu_ms_per_extra_token" in row
                else ""
            )
            + (f"  messages/stream {row['messages_per_stream']:.2f}" if "messages_per_stream" in row else ""),
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_load_arguments(parser, requests=1500)
    parser.add_argument(
        "--long-tokens",
        type=int,
        default=0,
        help="add a Complete mode with this many tokens; the CPU difference gives the cost per extra token",
    )
    parser.add_argument("--policy", choices=("hash", "builtin"), default="hash")
    parser.add_argument(
        "--profile-sidecar",
        metavar="PATH",
        help="run the sidecar under cProfile into PATH and print its costliest functions per Complete",
    )
    parser.add_argument(
        "--baseline-src",
        metavar="DIR",
        help="also run a sidecar from this checkout (e.g. an export of main): baseline_* modes, same rounds",
    )
    args = parser.parse_args(argv)
    if args.baseline_src:
        args.baseline_src = Path(args.baseline_src).resolve()
        if not (args.baseline_src / "barp_sidecar").is_dir():
            print(
                f"forward_load: --baseline-src {args.baseline_src}: no barp_sidecar package there",
                file=sys.stderr,
            )
            return 2
    try:
        report = asyncio.run(bench(args))
    except CheckpointError as error:
        print(f"forward_load: --policy {args.policy}: {error}", file=sys.stderr)
        return 2
    print()
    print(load_markdown(report["results"], TABLE_COLUMNS))
    if args.profile_sidecar:
        # Warm-up calls are in the profile too; Route calls (sidecar_route mode) share the gRPC functions.
        complete_calls = sum(
            r["requests"] for r in report["results"] if r["name"].startswith("sidecar_complete")
        )
        modes = report["config"]["modes"]
        warm_ups = WARM_UP_REQUESTS * sum(1 for mode in modes if mode.startswith("sidecar_complete"))
        print_profile(args.profile_sidecar, complete_calls + warm_ups)
    write_report(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
