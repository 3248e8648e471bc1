"""The read floor under forwarding: CPU per read of a provider's token stream, aiohttp vs a bare protocol.

The fake provider (a separate process) streams ``--tokens`` OpenAI chunks ``1 / --tokens-per-s`` apart, so
each token is its own read, as when a real model streams; ``--concurrency`` streams run at once. This
process reads them in three modes, interleaved per round, and reports its own CPU time (user + system,
event loop included) per read:

  aiohttp         an aiohttp ClientSession POST read with ``response.content.iter_any()``: how
                  ``ProviderPool`` reads a stream, without decoding it
  aiohttp_decode  the same plus ``OpenAIStreamDecoder.feed`` and ``coalesce`` on every read: the pool's
                  whole per-read work (the SSE and JSON parsing is the difference to ``aiohttp``)
  protocol        a bare ``asyncio.Protocol`` (hand-written HTTP/1.1 request, no response parsing) whose
                  ``data_received`` wakes a waiting coroutine: the least any coroutine reader pays per read

With ``bench.grpc_stream_floor`` (what grpc.aio costs per streamed message) this splits
``bench.forward_load``'s CPU per extra token into reading, decoding and sending.

    python -m bench.provider_read_floor [--tokens 64] [--tokens-per-s 200] [--concurrency 20]
        [--streams 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from barp_sidecar.providers.chat import coalesce
from barp_sidecar.providers.openai_adapter import OpenAIStreamDecoder
from bench.load_client import process

MODES = ("aiohttp", "aiohttp_decode", "protocol")
# One stream read to its end in some mode: the number of reads it took.
Reader = Callable[[int], Awaitable[int]]


class _WakingProtocol(asyncio.Protocol):
    """Keeps what arrived; wakes the coroutine waiting for it (one future per wait, as a stream reader)."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.closed = False
        self.waiter: asyncio.Future[None] | None = None

    def data_received(self, data: bytes) -> None:
        self.received.append(data)
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


def readers(session: aiohttp.ClientSession, base_url: str, tokens: int) -> dict[str, Reader]:
    body = {"model": "fake", "stream": True, "max_tokens": tokens}
    url = f"{base_url}/chat/completions"

    async def read_aiohttp(i: int, decode: bool) -> int:
        reads = 0
        decoder = OpenAIStreamDecoder()
        request = {**body, "messages": [{"role": "user", "content": f"question {i}"}]}
        async with session.post(url, json=request) as response:
            assert response.status == 200, response.status
            async for chunk in response.content.iter_any():
                reads += 1
                if decode:
                    coalesce(decoder.feed(chunk))
        if decode:
            decoder.finish()
        return reads

    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80

    async def read_protocol(i: int) -> int:
        payload = json.dumps({**body, "messages": [{"role": "user", "content": f"question {i}"}]}).encode()
        head = (
            f"POST {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        )
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_connection(_WakingProtocol, host, port)
        transport.write(head.encode() + payload)
        reads = 0
        while True:
            if protocol.received:
                b"".join(protocol.received)
                protocol.received.clear()
                reads += 1
            elif protocol.closed:
                return reads
            else:
                protocol.waiter = loop.create_future()
                await protocol.waiter

    return {
        "aiohttp": lambda i: read_aiohttp(i, decode=False),
        "aiohttp_decode": lambda i: read_aiohttp(i, decode=True),
        "protocol": read_protocol,
    }


async def cpu_us_per_read(read: Reader, streams: int, concurrency: int) -> tuple[float, float]:
    """(CPU µs per read, reads per stream) here over ``streams`` streams, ``concurrency`` at once."""
    left = list(range(streams))
    reads = 0

    async def worker() -> None:
        nonlocal reads
        while left:
            stream_reads = await read(left.pop())  # not ``reads += await``: that loses other workers' adds
            reads += stream_reads

    before = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (time.process_time() - before) * 1e6 / reads, reads / streams


async def measure(args: argparse.Namespace) -> dict[str, list[tuple[float, float]]]:
    with tempfile.TemporaryDirectory(prefix="barp-read-floor-") as tmp:
        fake = [sys.executable, "-m", "barp_sidecar.providers.fake_server", "--port", "0"]
        fake += ["--tokens", str(args.tokens), "--tokens-per-s", str(args.tokens_per_s)]
        async with process(fake, "fake_provider_started", "fake provider", Path(tmp) / "fake.log") as started:
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as session:
                calls = readers(session, started["base_url"], args.tokens)
                for mode in MODES:  # warm-up: connections, code paths
                    await cpu_us_per_read(calls[mode], args.concurrency, args.concurrency)
                results: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
                for _ in range(args.rounds):  # interleaved: machine noise hits every mode alike
                    for mode in MODES:
                        results[mode].append(
                            await cpu_us_per_read(calls[mode], args.streams, args.concurrency)
                        )
                return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=64, help="tokens per stream")
    parser.add_argument("--tokens-per-s", type=float, default=200.0, help="the fake's pace per stream")
    parser.add_argument("--concurrency", type=int, default=20, help="streams read at once")
    parser.add_argument("--streams", type=int, default=200, help="streams per mode and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if min(args.tokens, args.concurrency, args.streams, args.rounds) < 1 or args.tokens_per_s <= 0:
        print(
            "provider_read_floor: --tokens, --concurrency, --streams, --rounds: >= 1; --tokens-per-s: > 0",
            file=sys.stderr,
        )
        return 2
    results = asyncio.run(measure(args))
    print("| mode | reads per stream | CPU per read (µs), each round | mean (µs) |")
    print("|---|---:|---|---:|")
    for mode, rounds in results.items():
        per_read = [us for us, _ in rounds]
        reads = sum(r for _, r in rounds) / len(rounds)
        cells = ", ".join(f"{us:.1f}" for us in per_read)
        print(f"| {mode} | {reads:.1f} | {cells} | {sum(per_read) / len(per_read):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
