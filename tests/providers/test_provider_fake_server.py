"""The fake provider as a real process (python -m ...), and its option parsing."""

from __future__ import annotations

import asyncio
import json
import signal
import sys

import aiohttp
import pytest

from barp_sidecar.providers.fake_server import (
    FakeBehaviour,
    FakeProvider,
    FakeProviderOptions,
    build_parser,
    options_from_args,
)


async def test_runs_as_a_process_prints_its_port_and_stops_on_sigterm() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "barp_sidecar.providers.fake_server",
        "--port",
        "0",
        "--tokens",
        "3",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        started = json.loads(line)
        assert started["event"] == "fake_provider_started" and started["port"] > 0
        body = {"model": "x", "messages": [{"role": "user", "content": "hi"}]}
        async with aiohttp.ClientSession() as session:
            url = f"{started['base_url']}/chat/completions"
            async with session.post(url, json=body) as response:
                payload = await response.json()
        assert payload["choices"][0]["message"]["content"] == "tok0 tok1 tok2 "
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_command_line_options() -> None:
    args = build_parser().parse_args(
        [
            "--latency-ms",
            "5",
            "--tokens-per-s",
            "100",
            "--error-rate",
            "0.1",
            "--burst-429",
            "2",
            "--no-usage",
        ]
    )
    options = options_from_args(args)
    assert options.default.latency_ms == 5 and options.default.token_interval_ms == 10.0
    assert options.error_rate == 0.1 and options.burst_429 == 2 and not options.default.usage
    with pytest.raises(ValueError, match="error-rate"):
        options_from_args(build_parser().parse_args(["--error-rate", "2"]))


def test_bad_behaviours_are_refused() -> None:
    with pytest.raises(ValueError, match="malformed"):
        FakeBehaviour(malformed="yaml")
    with pytest.raises(ValueError):
        FakeBehaviour(tokens=-1)
    with pytest.raises(ValueError, match="loopback"):
        FakeProvider(host="0.0.0.0")


async def test_bursts_errors_and_bad_requests() -> None:
    options = FakeProviderOptions(burst_429=2, retry_after_s=0.5, error_rate=1.0)
    body = {"model": "x", "messages": [{"role": "user", "content": "hi"}]}
    async with FakeProvider(options) as fake, aiohttp.ClientSession() as session:
        url = f"{fake.base_url}/chat/completions"
        statuses = []
        for _ in range(3):
            async with session.post(url, json=body) as response:
                statuses.append((response.status, response.headers.get("Retry-After")))
        assert statuses == [(429, "0.5"), (429, "0.5"), (500, None)]
        async with session.post(url, data=b"{nope") as response:
            assert response.status == 400
        async with session.post(url, json={"messages": []}) as response:
            assert response.status == 400
        assert fake.stats.requests == 5
