"""Helpers to run barp-trainer and barp-sidecar as real subprocesses (started and killed for real)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.ports import free_port as free_port  # re-exported: the e2e tests import it from here

ROOT = Path(__file__).resolve().parents[2]


def ready_record(written: bytes, marker: bytes) -> dict[str, Any]:
    """The JSON object of the first log line of ``written`` that holds ``marker`` ({} if not JSON)."""
    line = next(line for line in written.splitlines() if marker in line)
    try:
        record = json.loads(line[line.index(b"{") :])
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


class ManagedProcess:
    """A real subprocess whose output goes to ``log_path``; ``start()``, ``kill()`` (SIGKILL), ``stop()``.

    ``start()`` waits for ``ready_marker`` in the part of the log written by THIS start, so a restart
    after a kill is not mistaken for ready by the previous run's line.
    """

    name = "process"
    ready_marker = b""
    stop_timeout_s = 15.0

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self.argv = argv
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        # The JSON log line holding ``ready_marker`` of the latest start (bound ports of a port-0 server).
        self.ready_record: dict[str, Any] = {}

    def _start(self, timeout_s: float) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, *self.argv], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}: {self.log_path.read_text()[-3000:]}"
                )
            written = self.log_path.read_bytes()[offset:]
            if self.ready_marker in written:
                self.ready_record = ready_record(written, self.ready_marker)
                return
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} did not start: {self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        return self.process.returncode


class TrainerProcess(ManagedProcess):
    """``python -m trainer.service.main`` on a fixed port."""

    name = "trainer"
    ready_marker = b"trainer_started"

    def __init__(self, config: Path, port: int, log_path: Path) -> None:
        argv = ["-m", "trainer.service.main", "--config", str(config), "--port", str(port)]
        super().__init__(argv, log_path)
        self.config = config
        self.port = port

    def start(self, timeout_s: float = 60.0) -> TrainerProcess:
        self._start(timeout_s)
        return self


class SidecarProcess(ManagedProcess):
    """``python -m barp_sidecar.cli serve --config FILE``."""

    name = "sidecar"
    ready_marker = b'"server_started"'
    stop_timeout_s = 20.0

    def __init__(self, config: Path, log_path: Path) -> None:
        super().__init__(["-m", "barp_sidecar.cli", "serve", "--config", str(config)], log_path)
        self.config = config

    def start(self, timeout_s: float = 90.0) -> SidecarProcess:
        self._start(timeout_s)
        return self


async def report_outcomes(
    port: int, count: int, prefix: str, until: asyncio.Event | None = None
) -> list[str]:
    """Route + ReportOutcome ``count`` prompts on a sidecar (fewer when ``until`` is set first: no new
    Route after it is); the decision ids, each recorded durably. Any failed call fails the test (quality
    cycles 0, 0.5, 1)."""
    import grpc

    from barp_sidecar.gen.barp.v1 import router_pb2, router_pb2_grpc

    ids = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        for i in range(count):
            if until is not None and until.is_set():
                break
            decision = await stub.Route(router_pb2.RouteRequest(prompt=f"{prefix} {i}"), timeout=10)
            ack = await stub.ReportOutcome(
                router_pb2.OutcomeRequest(decision_id=decision.decision_id, quality=(i % 3) / 2),
                timeout=10,
            )
            assert ack.recorded
            ids.append(decision.decision_id)
    return ids


def stored_event_ids(events_dir: Path) -> list[str]:
    """The event ids in a trainer's event log (``data_dir/events``), in log order."""
    from trainer.service.eventlog import SegmentedEventLog

    log = SegmentedEventLog(events_dir).open()
    try:
        return [event.event_id for _, event in log.read_from(0, 1_000_000)]
    finally:
        log.close()


def scrape(port: int, metric: str) -> float | None:
    """One sample of a Prometheus metric (first matching line; ``metric`` may carry labels,
    ``name{label="value"}``, to pick one), or None when absent/unreachable."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(metric + " ") or line.startswith(metric + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None
