"""End to end: ``barp-sidecar serve`` and ``barp-sidecar route`` as real processes, killed for real."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from barp_sidecar.gen.barp.v1 import router_pb2, router_pb2_grpc
from tests.support.sidecar import ARMS, make_tiny_checkpoint

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 90


class ServeProcess:
    """A ``serve`` subprocess; a thread collects stdout; ``started`` is its server_started event."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "barp_sidecar.cli", "serve", "--config", str(config), "--port", "0",
             "--metrics-port", "0"],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self._started = threading.Event()
        self.started: dict = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if '"server_started"' in line:
                self.started = json.loads(line)
                self._started.set()

    def wait_started(self) -> dict:
        if not self._started.wait(STARTUP_TIMEOUT_S):
            self.kill()
            raise AssertionError(
                f"no server_started within {STARTUP_TIMEOUT_S}s: {self.lines} {self.stderr()}"
            )
        return self.started

    def events(self) -> list[str]:
        self._reader.join(timeout=10)
        return [json.loads(line)["event"] for line in self.lines if line.startswith("{")]

    def stderr(self) -> str:
        return self.proc.stderr.read() if self.proc.stderr and self.proc.poll() is not None else ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def checkpoint_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("store")
    make_tiny_checkpoint(root / "v3", version=3)
    (root / "LATEST").write_text("v3\n")
    return root


def write_config(path: Path, store: Path, **sections: dict) -> Path:
    config = {
        "policy": {"checkpoint_dir": str(store), "device": "cpu"},
        "admin": {"enabled": False},
        # Durable state (spool, pending-decision journal) next to the config, never in the checkout.
        "rewards": {"spool_dir": str(path.parent / "spool")},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def served(checkpoint_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    config = write_config(tmp_path_factory.mktemp("cfg") / "serve.yaml", checkpoint_store)
    process = ServeProcess(config)
    process.wait_started()
    yield process
    process.proc.send_signal(signal.SIGTERM)
    assert process.proc.wait(timeout=30) == 0
    process.kill()


def route_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "barp_sidecar.cli", "route", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_server_started_event_carries_the_bound_ports(served: ServeProcess) -> None:
    started = served.started
    assert started["port"] > 0 and started["metrics_port"] > 0 and started["port"] != 50051
    assert started["policy_version"] == 3 and started["level"] == "info"


def test_route_cli_prints_the_decision_as_json(served: ServeProcess) -> None:
    target = f"127.0.0.1:{served.started['port']}"
    allowed = ["--allowed-model", "small-model", "--allowed-model", "large-model"]
    result = route_cli(
        "--target", target, "--quality-weight", "0.9", *allowed, "--exploration", "sample", "2+2?"
    )
    assert result.returncode == 0, result.stderr
    decision = json.loads(result.stdout)
    assert decision["model"] in ("small-model", "large-model")
    assert decision["policy_version"] == 3 and decision["quality_weight"] == pytest.approx(0.9)
    assert decision["exploration"] == "EXPLORATION_SAMPLE"
    assert [p["model"] for p in decision["probabilities"]] == list(ARMS)


def test_route_cli_reports_grpc_errors_on_stderr(served: ServeProcess) -> None:
    target = f"127.0.0.1:{served.started['port']}"
    result = route_cli("--target", target, "--quality-weight", "1.5", "hi")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("INVALID_ARGUMENT: preference.quality_weight")
    unknown = route_cli("--target", target, "--allowed-model", "nope", "hi")
    assert unknown.returncode == 1 and "'nope'" in unknown.stderr


def test_prompts_are_not_logged_by_default(served: ServeProcess) -> None:
    target = f"127.0.0.1:{served.started['port']}"
    assert (
        route_cli("--target", target, "--request-id", "secret-check", "my very secret prompt").returncode == 0
    )
    deadline = time.monotonic() + 10
    while not any("secret-check" in line for line in served.lines) and time.monotonic() < deadline:
        time.sleep(0.05)
    access = [json.loads(line) for line in served.lines if "secret-check" in line]
    assert access and access[0]["event"] == "rpc" and access[0]["code"] == "OK" and "latency_ms" in access[0]
    assert not any("my very secret prompt" in line for line in served.lines)


def admitted_requests(metrics_port: int) -> float:
    """Calls the server has received and admitted so far: pending + answered OK."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    values = {
        line.split()[0]: float(line.split()[1]) for line in body.splitlines() if line.startswith("barp_")
    }
    return values["barp_pending_requests"] + values.get('barp_requests_total{code="OK",method="Route"}', 0.0)


async def hold_calls_in_flight(stub, count: int, metrics_port: int) -> list[asyncio.Future]:
    """``count`` calls with ~1 MB prompts (the hash encoder spends ~0.1 s on each), returned once the server
    has received all of them (a call still uploading its request when the server stops is cancelled by
    gRPC, not answered)."""
    calls = [
        asyncio.ensure_future(
            stub.Route(router_pb2.RouteRequest(prompt="word " * 200_000 + str(i)), timeout=30)
        )
        for i in range(count)
    ]
    for _ in range(500):
        if await asyncio.to_thread(admitted_requests, metrics_port) >= count:
            return calls
        await asyncio.sleep(0.01)
    raise AssertionError("the slow calls never reached the server")


async def test_sigterm_finishes_in_flight_calls_and_exits_zero(
    checkpoint_store: Path, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "slow.yaml", checkpoint_store, server={"grace_s": 20.0})
    process = ServeProcess(config)
    try:
        started = await asyncio.to_thread(process.wait_started)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{started['port']}") as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            tasks = await hold_calls_in_flight(stub, 8, started["metrics_port"])
            process.proc.send_signal(signal.SIGTERM)
            in_flight_at_signal = sum(not t.done() for t in tasks)
            responses = await asyncio.gather(*tasks)
        assert in_flight_at_signal >= 2
        assert all(r.model in ARMS for r in responses)
        assert await asyncio.to_thread(process.proc.wait, 30) == 0
        events = process.events()
        assert (
            events.index("shutdown_requested")
            < events.index("server_stopping")
            < events.index("server_stopped")
        )
    finally:
        process.kill()


async def test_second_signal_forces_exit(checkpoint_store: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "slow.yaml", checkpoint_store, server={"grace_s": 30.0})
    process = ServeProcess(config)
    try:
        started = await asyncio.to_thread(process.wait_started)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{started['port']}") as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            calls = await hold_calls_in_flight(stub, 4, started["metrics_port"])
            process.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.05)
            process.proc.send_signal(signal.SIGINT)
            assert await asyncio.to_thread(process.proc.wait, 10) == 130
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            # The process died mid-work: the calls it had not answered fail (UNAVAILABLE), none hang.
            assert any(isinstance(o, grpc.aio.AioRpcError) for o in outcomes)
        assert "forced_exit" in process.events()
    finally:
        process.kill()


@pytest.mark.parametrize(
    ("sections", "env", "key"),
    [
        ({"batching": {"max_wait_ms": -1}}, {}, "batching.max_wait_ms"),
        ({}, {"BARP__ROUTING__EPSILON": "2"}, "routing.epsilon"),
        ({"policy": {"checkpoint_dir": "/nonexistent/policies"}}, {}, "policy.checkpoint_dir"),
        ({"encoder": {"backend": "tensorrt"}}, {}, "encoder.backend"),
    ],
)
def test_bad_configuration_exits_2_naming_the_key(
    checkpoint_store: Path, tmp_path: Path, sections: dict, env: dict, key: str
) -> None:
    config = write_config(tmp_path / "bad.yaml", checkpoint_store, **sections)
    result = subprocess.run(
        [sys.executable, "-m", "barp_sidecar.cli", "serve", "--config", str(config), "--port", "0"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert key in result.stderr and "invalid configuration" in result.stderr
    assert "server_started" not in result.stdout
