"""The transport floor under forwarding: CPU of a bare grpc.aio server-streaming RPC per stream and message.

A server process with one generic unary-stream method (no protobuf, no routing, no provider) sends N small
messages (the size of a one-token ``CompleteChunk``) ``--interval-ms`` apart, so each is its own send, as
when a provider streams tokens one by one; ``--concurrency`` client streams run at once. The server's CPU
time per stream comes from /proc (not wall time); the slope between message counts is what one more
message costs grpc.aio itself: the part of ``bench.forward_load``'s CPU per extra token that no change in
the sidecar's own per-chunk code can remove.

    python -m bench.grpc_stream_floor [--messages 1,8,32] [--requests 1500] [--concurrency 20]
        [--interval-ms 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator

import grpc

from bench.load_client import cpu_seconds

MESSAGE = b"\x12\x03tok"  # CompleteChunk(delta="tok"): one streamed token
METHOD = "/barp.bench.Floor/Stream"
STARTUP_TIMEOUT_S = 60.0


async def serve(interval_s: float) -> None:
    async def stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        for _ in range(request[0]):
            await asyncio.sleep(interval_s)
            yield MESSAGE

    handler = grpc.method_handlers_generic_handler(
        "barp.bench.Floor", {"Stream": grpc.unary_stream_rpc_method_handler(stream)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(json.dumps({"event": "floor_server_started", "port": port}), flush=True)
    await server.wait_for_termination()


async def server_cpu_ms_per_stream(
    channel: grpc.aio.Channel, pid: int, messages: int, requests: int, concurrency: int
) -> float:
    call = channel.unary_stream(METHOD)
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            received = 0
            async for _ in call(bytes([messages])):
                received += 1
            assert received == messages, received

    before = cpu_seconds(pid)
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (cpu_seconds(pid) - before) * 1000 / requests


async def measure(args: argparse.Namespace, counts: list[int]) -> dict[int, list[float]]:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.grpc_stream_floor",
        "--serve",
        "--interval-ms",
        str(args.interval_ms),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), STARTUP_TIMEOUT_S)
        port = int(json.loads(line)["port"])
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await server_cpu_ms_per_stream(channel, child.pid, max(counts), 100, args.concurrency)  # warm-up
            results: dict[int, list[float]] = {n: [] for n in counts}
            for _ in range(args.rounds):  # interleaved rounds: machine noise hits every count alike
                for n in counts:
                    cpu_ms = await server_cpu_ms_per_stream(
                        channel, child.pid, n, args.requests, args.concurrency
                    )
                    results[n].append(cpu_ms)
            return results
    finally:
        child.terminate()
        await child.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", default="1,8,32", help="comma-separated messages per stream (1..255)")
    parser.add_argument("--requests", type=int, default=1500, help="streams per count and round")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--interval-ms", type=float, default=5.0, help="delay before each message")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(serve(args.interval_ms / 1000))
        return 0
    counts = [int(n) for n in args.messages.split(",")]
    if not all(1 <= n <= 255 for n in counts) or len(counts) < 2 or args.requests < 1 or args.concurrency < 1:
        print(
            "grpc_stream_floor: --messages: two or more counts in 1..255; --requests, --concurrency: >= 1",
            file=sys.stderr,
        )
        return 2
    results = asyncio.run(measure(args, counts))
    means = {n: sum(values) / len(values) for n, values in results.items()}
    low, high = min(counts), max(counts)
    print("| messages per stream | server CPU per stream (ms), each round |")
    print("|---:|---|")
    for n in counts:
        print(f"| {n} | {', '.join(f'{v:.3f}' for v in results[n])} |")
    per_message_ms = (means[high] - means[low]) / (high - low)
    print(f"\nserver CPU per extra message: {per_message_ms:.4f} ms ({low} -> {high} messages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
