"""Start-up benchmark: how long a newcomer (or a new Kubernetes pod) waits for each command.

Runs real processes from this checkout, one after the other, ``--repeats`` times each, and prints
median / max wall seconds against the targets of issue 10:

- ``barp-sidecar --help`` and ``barp-trainer --help``            target ≤ 0.5 s
- a configuration error (unknown key) from ``serve`` of each       target ≤ 1 s (exit 2, key named)
- ``barp-sidecar serve`` (shipped policy, real encoder) until its health service answers SERVING
                                                                    target ≤ 4 s
- ``barp-sidecar decide`` (shipped policy, real encoder)          target ≤ 4 s

and, to show what limits ``serve``/``decide``, the parts: ``import torch``, the encoder + policy load
after it, and ``import sentence_transformers`` (which the shipped encoder no longer needs), with
``decide`` through sentence-transformers (the same files, the path before) measured side by side.

    python -m bench.startup --repeats 5 --json out/bench/startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from barp_sidecar.policy.encoder import builtin_model_path

REPOSITORY = Path(__file__).resolve().parents[1]
SERVE_TIMEOUT_S = 120.0
COMMAND_TIMEOUT_S = 120.0
PROMPT = "Write a Python function that merges two sorted lists."
LOAD_PARTS = (
    "import time, json; t0 = time.perf_counter(); import torch; t1 = time.perf_counter(); "
    "from barp_sidecar.policy.builtin import builtin_policy_dir; "
    "from barp_sidecar.policy.checkpoint import load_checkpoint; "
    "from barp_sidecar.policy.encoder import EncoderSettings, SentenceTransformerEncoder; "
    "load_checkpoint(builtin_policy_dir()); "
    "SentenceTransformerEncoder(EncoderSettings(device='cpu')).load().encode(['warm up']); "
    "print(json.dumps({'import_torch_s': t1 - t0, 'load_s': time.perf_counter() - t1}))"
)


@dataclass
class Row:
    name: str
    target_s: float | None
    seconds: list[float]

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def met(self) -> bool | None:
        return None if self.target_s is None else self.median_s <= self.target_s


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPOSITORY)}


def timed_command(argv: list[str], expect_code: int, expect_stderr: str = "") -> float:
    """Wall seconds of one command run to completion; raises when it does not behave as expected."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, *argv],
        cwd=REPOSITORY,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if result.returncode != expect_code or expect_stderr not in result.stderr:
        raise RuntimeError(f"{argv}: exit {result.returncode}, stderr {result.stderr[-1000:]!r}")
    return elapsed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_until_serving(state_dir: Path) -> float:
    """Seconds from spawning ``serve`` (shipped policy) to its health service answering SERVING."""
    port = free_port()
    config = state_dir / "serve.yaml"
    config.write_text(
        f"server:\n  port: {port}\n  grace_s: 1\nmetrics:\n  enabled: false\n"
        f"admin:\n  port: 0\nrewards:\n  spool_dir: {state_dir / 'spool'}\n"
        "policy:\n  device: cpu\n"
    )
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "barp_sidecar.cli", "serve", "--config", str(config)],
        cwd=REPOSITORY,
        env=environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.perf_counter() - started < SERVE_TIMEOUT_S:
                if process.poll() is not None:
                    raise RuntimeError(f"serve exited with {process.returncode}: {process.stderr.read()!r}")
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=0.5).status
                except grpc.RpcError:
                    status = None
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return time.perf_counter() - started
                time.sleep(0.01)
        raise TimeoutError(f"serve not SERVING within {SERVE_TIMEOUT_S} s")
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def load_parts() -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, "-c", LOAD_PARTS],
        cwd=REPOSITORY,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=True,
    )
    parts: dict[str, float] = json.loads(result.stdout)
    return parts


def measure(repeats: int, work_dir: Path) -> list[Row]:
    bad_sidecar = work_dir / "bad-sidecar.yaml"
    bad_sidecar.write_text("server:\n  prot: 1\n")
    bad_trainer = work_dir / "bad-trainer.yaml"
    bad_trainer.write_text("learner:\n  batchsize: 1\n")
    cases: list[tuple[str, float | None, Callable[[], float]]] = [
        ("barp-sidecar --help", 0.5, lambda: timed_command(["-m", "barp_sidecar.cli", "--help"], 0)),
        ("barp-trainer --help", 0.5, lambda: timed_command(["-m", "trainer.cli", "--help"], 0)),
        (
            "barp-sidecar serve: config error",
            1.0,
            lambda: timed_command(
                ["-m", "barp_sidecar.cli", "serve", "--config", str(bad_sidecar)], 2, "server.prot"
            ),
        ),
        (
            "barp-trainer serve: config error",
            1.0,
            lambda: timed_command(
                ["-m", "trainer.cli", "serve", "--config", str(bad_trainer)], 2, "learner.batchsize"
            ),
        ),
        ("barp-sidecar serve -> SERVING", 4.0, lambda: serve_until_serving(work_dir)),
        ("barp-sidecar decide", 4.0, lambda: timed_command(["-m", "barp_sidecar.cli", "decide", PROMPT], 0)),
        (
            "  before: decide via sentence-transformers",
            None,
            lambda: timed_command(
                ["-m", "barp_sidecar.cli", "decide", "--encoder-model", builtin_model_path(), PROMPT], 0
            ),
        ),
        (
            "  part: import sentence_transformers (not used)",
            None,
            lambda: timed_command(["-c", "import sentence_transformers"], 0),
        ),
    ]
    rows = [Row(name, target, []) for name, target, _ in cases]
    parts = [Row("  part: import torch", None, []), Row("  part: load policy + encoder", None, [])]
    for _ in range(repeats):  # interleaved, so a busy spell affects every row alike
        for row, (_, _, run) in zip(rows, cases, strict=True):
            row.seconds.append(run())
        measured = load_parts()
        parts[0].seconds.append(measured["import_torch_s"])
        parts[1].seconds.append(measured["load_s"])
    return rows + parts


def print_table(rows: list[Row]) -> None:
    print(f"{'command':<48} {'median s':>9} {'max s':>7} {'target s':>9}  met")
    for row in rows:
        target = f"{row.target_s:.1f}" if row.target_s is not None else "-"
        met = {True: "yes", False: "NO", None: ""}[row.met]
        print(f"{row.name:<48} {row.median_s:>9.2f} {max(row.seconds):>7.2f} {target:>9}  {met}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of every command (median reported)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    if not 1 <= args.repeats <= 50:
        parser.error("--repeats must be in [1, 50]")
    with tempfile.TemporaryDirectory(prefix="barp-startup-") as work:
        rows = measure(args.repeats, Path(work))
    print_table(rows)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = [{**asdict(row), "median_s": row.median_s, "met": row.met} for row in rows]
        args.json.write_text(json.dumps({"repeats": args.repeats, "rows": report}, indent=2) + "\n")
    return 0 if all(row.met is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
