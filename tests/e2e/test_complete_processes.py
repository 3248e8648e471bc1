"""Complete end to end with real processes: a fake provider process and a sidecar process, killed for real."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from barp_sidecar.gen.barp.v1 import router_pb2, router_pb2_grpc
from tests.support.sidecar import ARMS, make_tiny_checkpoint

REPO = Path(__file__).resolve().parents[2]
STARTUP_S = 90.0


async def started_event(child: asyncio.subprocess.Process, event: str) -> dict[str, Any]:
    assert child.stdout is not None
    async with asyncio.timeout(STARTUP_S):
        while True:
            line = await child.stdout.readline()
            if not line:
                raise AssertionError(f"process exited ({await child.wait()}) before logging {event}")
            with contextlib.suppress(json.JSONDecodeError):
                data = json.loads(line)
                if isinstance(data, dict) and data.get("event") == event:
                    return data


@contextlib.asynccontextmanager
async def spawn(*args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        yield child
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()


async def test_killing_the_provider_mid_stream_is_unavailable_and_the_sidecar_keeps_serving(
    tmp_path: Path,
) -> None:
    checkpoint = make_tiny_checkpoint(tmp_path / "policy")
    fake_args = ("-m", "barp_sidecar.providers.fake_server", "--port", "0", "--tokens", "400")
    async with spawn(*fake_args, "--tokens-per-s", "100") as fake:
        base_url = (await started_event(fake, "fake_provider_started"))["base_url"]
        catalog = tmp_path / "catalog.yaml"
        entries = [{"arm": a, "base_url": base_url, "upstream_model": a, "timeout_s": 30} for a in ARMS]
        catalog.write_text(yaml.safe_dump({"providers": entries}))
        config = tmp_path / "sidecar.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "server": {"port": 0, "grace_s": 2.0},
                    "metrics": {"port": 0},
                    "admin": {"enabled": False},
                    "policy": {"checkpoint_dir": str(checkpoint), "device": "cpu"},
                    "rewards": {"spool_dir": str(tmp_path / "spool")},
                    "providers": {
                        "catalog_file": str(catalog),
                        "retry_initial_backoff_ms": 1,
                        "retry_max_backoff_ms": 5,
                    },
                }
            )
        )
        async with spawn("-m", "barp_sidecar.cli", "serve", "--config", str(config)) as sidecar:
            port = (await started_event(sidecar, "server_started"))["port"]
            request = router_pb2.CompleteRequest(messages=[router_pb2.ChatMessage(role="user", content="hi")])
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = router_pb2_grpc.RouterStub(channel)
                call = stub.Complete(request, timeout=30)
                first = await call.read()
                assert first.HasField("decision") and first.delta.startswith("tok0")
                fake.send_signal(signal.SIGKILL)  # the provider dies mid-answer
                await fake.wait()
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    while await call.read() is not grpc.aio.EOF:
                        pass
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "stream_broken" in caught.value.details() or "protocol" in caught.value.details()
                # Nothing listens any more: every allowed model fails to connect; the answer is prompt.
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    async for _ in stub.Complete(request, timeout=30):
                        pass
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "(connect)" in caught.value.details()
                # Route never needed the provider.
                routed = await stub.Route(router_pb2.RouteRequest(prompt="hi"), timeout=10)
                assert routed.model in ARMS
            sidecar.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(sidecar.wait(), 30) == 0
