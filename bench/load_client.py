"""The benches' shared load client: child processes, the fake-provider catalog, closed- and open-loop drivers,
percentiles and process CPU time.

Owns how a bench starts the processes it measures (a child whose stdout is a JSON log; ready when it logs a
given event; SIGTERM, then SIGKILL after a bound), how it drives calls (``concurrency`` closed-loop workers,
or an open loop at a fixed rate, each call returning its time to the first token or None), how it summarises
latencies (nearest-rank percentiles in ms) and how it reads a process's CPU time (Linux /proc). Knows nothing
about which calls a bench makes, its modes, its comparisons or its table: each bench owns those and prints
its own. Traffic goes to loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

STARTUP_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0

# One call of a bench: its index in the run -> seconds to its first token (streaming calls) or None.
Call = Callable[[int], Awaitable[float | None]]


def percentile_ms(values_s: Sequence[float], q: float) -> float:
    """Nearest-rank ``q`` quantile (q in [0, 1]) of durations in seconds, in milliseconds; NaN if empty."""
    if not values_s:
        return float("nan")
    ordered = sorted(values_s)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index] * 1000.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = STOP_TIMEOUT_S) -> int:
    """SIGTERM a child started with ``subprocess.Popen``, SIGKILL it after ``timeout_s``; its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def remove_scratch(scratch: Path, completed: bool) -> None:
    """Delete a run's scratch directory (server state and logs: ~100 MB) after a completed run; after a
    failed one keep it and say where, for its server logs."""
    if completed:
        shutil.rmtree(scratch, ignore_errors=True)
    else:
        print(f"server logs and state kept in {scratch}", file=sys.stderr)


async def wait_for_json_event(
    log_file: Path, event: str, what: str, child: asyncio.subprocess.Process
) -> dict[str, Any]:
    """Poll the child's stdout log file for a JSON line whose ``event`` is ``event``."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        for line in (await asyncio.to_thread(log_file.read_text, errors="replace")).splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                data = json.loads(line)
                if isinstance(data, dict) and data.get("event") == event:
                    return data
        if child.returncode is not None:
            raise RuntimeError(f"{what} exited ({child.returncode}) before logging {event}; see {log_file}")
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{what} did not log {event} within {STARTUP_TIMEOUT_S:.0f}s")


@contextlib.asynccontextmanager
async def process(
    args: Sequence[str], event: str, what: str, log_file: Path, source: Path | None = None
) -> AsyncIterator[dict[str, Any]]:
    """Start a child process (stdout to ``log_file``), yield its startup event (plus ``_pid``), then stop it.

    ``source``: run it in that checkout (its directory first on the import path) instead of this one.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if source is not None:
        env["PYTHONPATH"] = str(source)
    with log_file.open("wb") as sink:
        child = await asyncio.create_subprocess_exec(
            *args, stdout=sink, stderr=asyncio.subprocess.STDOUT, env=env, cwd=source
        )
    try:
        started = await wait_for_json_event(log_file, event, what, child)
        yield {**started, "_pid": child.pid}
    finally:
        if child.returncode is None:
            child.terminate()
            try:
                await asyncio.wait_for(child.wait(), 10)
            except TimeoutError:
                child.kill()
                await child.wait()


async def run_load(call: Call, requests: int, concurrency: int) -> tuple[list[float], list[float], float]:
    """Closed loop: ``requests`` calls by ``concurrency`` workers.

    Returns per-call latencies (s), per-call times to the first text (s; streaming calls only) and the wall
    time (s).
    """
    latencies: list[float] = []
    firsts: list[float] = []
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < requests:
            index = next_index
            next_index += 1
            started = time.perf_counter()
            first = await call(index)
            latencies.append(time.perf_counter() - started)
            if first is not None:
                firsts.append(first)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, firsts, time.perf_counter() - started


async def run_paced(call: Call, requests: int, rate_rps: float) -> tuple[list[float], list[float], float]:
    """Open loop: one call every 1/rate_rps seconds whatever the completions; returns as run_load."""
    latencies: list[float] = []
    firsts: list[float] = []

    async def timed(index: int) -> None:
        started = time.perf_counter()
        first = await call(index)
        latencies.append(time.perf_counter() - started)
        if first is not None:
            firsts.append(first)

    tasks = []
    started = time.perf_counter()
    for index in range(requests):
        delay = started + index / rate_rps - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(timed(index)))
    await asyncio.gather(*tasks)
    return latencies, firsts, time.perf_counter() - started


class InterleavedRounds:
    """Per mode: latencies, first-token times, wall time and CPU time of the watched processes (and of this
    client), accumulated over rounds in which the modes take turns, so machine noise hits them alike."""

    def __init__(self, modes: Sequence[str], pids: dict[str, int]) -> None:
        self.modes, self.pids = tuple(modes), dict(pids)
        self.latencies: dict[str, list[float]] = {name: [] for name in self.modes}
        self.firsts: dict[str, list[float]] = {name: [] for name in self.modes}
        self.wall_s: dict[str, float] = dict.fromkeys(self.modes, 0.0)
        self.cpu_s = {name: dict.fromkeys([*self.pids, "client"], 0.0) for name in self.modes}

    async def run(
        self, calls: dict[str, Call], rounds: int, per_round: int, concurrency: int, rate_rps: float
    ) -> None:
        """``rounds`` rounds of ``per_round`` calls per mode: open loop at ``rate_rps`` > 0, else closed."""
        for _ in range(rounds):
            for name in self.modes:
                before = {who: cpu_seconds(pid) for who, pid in self.pids.items()}
                client_before = cpu_seconds(os.getpid())
                if rate_rps > 0:
                    values, first_values, seconds = await run_paced(calls[name], per_round, rate_rps)
                else:
                    values, first_values, seconds = await run_load(calls[name], per_round, concurrency)
                for who, pid in self.pids.items():
                    self.cpu_s[name][who] += cpu_seconds(pid) - before[who]
                self.cpu_s[name]["client"] += cpu_seconds(os.getpid()) - client_before
                self.latencies[name] += values
                self.firsts[name] += first_values
                self.wall_s[name] += seconds

    def row(self, name: str, concurrency: int, rate_rps: float) -> dict[str, Any]:
        """The latency and throughput columns every load bench prints for one mode."""
        latencies, wall_s = self.latencies[name], self.wall_s[name]
        return {
            "name": name,
            # Closed loop: the workers; open loop: the mean number of calls in flight.
            "concurrency": concurrency if rate_rps <= 0 else round(sum(latencies) / wall_s),
            "load": f"open {rate_rps:g} rps" if rate_rps > 0 else "closed",
            "requests": len(latencies),
            "throughput_rps": round(len(latencies) / wall_s, 1),
            "p50_ms": round(percentile_ms(latencies, 0.50), 3),
            "p95_ms": round(percentile_ms(latencies, 0.95), 3),
            "p99_ms": round(percentile_ms(latencies, 0.99), 3),
            "mean_ms": round(statistics.fmean(latencies) * 1000, 3),
        }

    def cpu_ms_per_request(self, name: str, who: str) -> float:
        """CPU time ``who`` (a watched process, or "client") spent per call of mode ``name``, in ms."""
        return round(self.cpu_s[name][who] * 1000 / len(self.latencies[name]), 3)


def make_hash_checkpoint(
    directory: Path,
    models: Sequence[str] = tuple(f"model-{i:02d}" for i in range(11)),
    dim: int = 384,
    max_seq_length: int = 256,
    **architecture_sizes: int,
) -> tuple[str, ...]:
    """A randomly initialised policy over ``models`` on the ``hash:{dim}`` encoder (seeded; the MLP cost is
    negligible, so a bench measures everything but the encoder); ``architecture_sizes`` override the
    network's default layer sizes."""
    import torch

    from barp_sidecar.policy.checkpoint import EncoderIdentity, PolicyManifest, save_checkpoint
    from barp_sidecar.policy.network import PolicyArchitecture, PolicyNetwork

    torch.manual_seed(0)
    architecture = PolicyArchitecture(embedding_dim=dim, num_models=len(models), **architecture_sizes)
    manifest = PolicyManifest(
        version=1,
        models=tuple(models),
        encoder=EncoderIdentity(f"hash:{dim}", dim, max_seq_length, "tail"),
        tau_usd=0.005,
        architecture=architecture,
    )
    save_checkpoint(directory, PolicyNetwork(architecture), manifest)
    return tuple(models)


def fake_catalog(
    models: Sequence[str],
    base_url: str,
    upstream_model: Callable[[str], str] = lambda model: "fake",
    max_concurrency: int = 1024,
    timeout_s: float = 60.0,
) -> dict[str, Any]:
    """A catalog (docs/providers.md) that sends every model to the fake provider at ``base_url``.

    The default ``max_concurrency`` is above any bench's concurrency: the benches measure overhead, not the
    limit."""
    return {
        "providers": [
            {
                "arm": model,  # the catalog's key for the model's name
                "enabled": True,
                "base_url": base_url,
                "upstream_model": upstream_model(model),
                "input_usd_per_1m_tokens": 1.0,
                "output_usd_per_1m_tokens": 2.0,
                "max_concurrency": max_concurrency,
                "timeout_s": timeout_s,
            }
            for model in models
        ]
    }


def add_load_arguments(parser: argparse.ArgumentParser, requests: int) -> None:
    """The options every fake-provider load bench takes (concurrency, counts, fake's stream, output)."""
    parser.add_argument("--concurrency", default="1,100", help="comma-separated concurrent streams")
    parser.add_argument("--requests", type=int, default=requests, help="requests per mode and concurrency")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the modes")
    parser.add_argument("--tokens", type=int, default=8, help="tokens per completion from the fake")
    parser.add_argument(
        "--tokens-per-s", type=float, default=0.0, help="fake provider's streaming rate (0 = all at once)"
    )
    parser.add_argument(
        "--rate-rps",
        type=float,
        default=0.0,
        help="open loop: start this many calls per second in every mode (0 = closed loop, --concurrency)",
    )
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--log-dir", metavar="DIR", help="keep the fake's and the sidecar's logs here")


def concurrencies(args: argparse.Namespace) -> list[int]:
    """``--concurrency`` as ints; open loop ignores it (one pass: concurrency is what rate and latency
    make)."""
    return [int(c) for c in args.concurrency.split(",")] if args.rate_rps <= 0 else [1]


# The first columns of every load bench's table: what ``InterleavedRounds.row`` measures.
LOAD_COLUMNS = ("mode", "concurrency", "load", "throughput (req/s)", "p50 (ms)", "p95 (ms)", "p99 (ms)")


def load_cells(row: dict[str, Any]) -> list[str]:
    """``row``'s cells under LOAD_COLUMNS."""
    return [
        str(row["name"]),
        str(row["concurrency"]),
        str(row["load"]),
        f"{row['throughput_rps']:.0f}",
        *(f"{row[key]:.2f}" for key in ("p50_ms", "p95_ms", "p99_ms")),
    ]


def load_markdown(results: Sequence[dict[str, Any]], extra: Sequence[tuple[str, str, str]]) -> str:
    """A bench's Markdown table: LOAD_COLUMNS, then one column per ``(title, key, format spec)`` of
    ``extra`` (empty where a mode has no such key; a spec ending in "×" appends it). Text columns align left,
    numbers right."""
    columns = [*LOAD_COLUMNS, *(title for title, _, _ in extra)]
    align = ["---" if column in ("mode", "load") else "---:" for column in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(align) + "|"]
    for row in results:
        cells = load_cells(row)
        for _, key, spec in extra:
            suffix = "×" if spec.endswith("×") else ""
            cells.append(format(row[key], spec.removesuffix("×")) + suffix if key in row else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(path: str | None, report: dict[str, Any]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=2) + "\n")
