"""bench/encoder_peer.py without the peer: argument errors, missing venv, the closed loop, the table."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.encoder_peer import (
    MAX_PROMPT_TOKENS,
    closed_loop,
    mean_batch,
    parse_args,
    peer_command,
    peer_environment,
    run_server,
    summarise,
    table,
    verdict,
)
from tests.bench.bench_runner import argument_error

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--concurrency", "0"], "--concurrency must be at least 1, not 0"),
        (["--rounds", "0"], "--rounds must be at least 1"),
        (["--peer-batch-size", "-1"], "--peer-batch-size must be at least 1"),
        (["--max-batch-tokens", "0"], "--max-batch-tokens must be at least 1"),
        (["--duration-s", "0"], "--duration-s must be positive"),
        (["--warmup-s", "-1"], "--warmup-s must be 0 or more"),
        (["--prompt-tokens", "16", "0"], "--prompt-tokens 0: must be between 1 and"),
        (["--prompt-tokens", str(MAX_PROMPT_TOKENS + 1)], f"--prompt-tokens {MAX_PROMPT_TOKENS + 1}"),
        (["--ceiling-batch-sizes", "8", "0"], "--ceiling-batch-sizes must all be at least 1"),
        (["--concurrency", "many"], "--concurrency: invalid int value"),
    ],
)
def test_bad_arguments_exit_2_naming_the_flag(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert message in argument_error(parse_args, argv, capsys)


def test_the_defaults_are_the_issue_s_run() -> None:
    args = parse_args([])
    assert (args.prompt_tokens, args.concurrency) == ([16, 64, 256], 64)
    assert args.peer_venv == REPO / ".cache" / "peer-venv"


def test_without_the_peer_venv_the_bench_exits_2_with_one_line_saying_how_to_create_it(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "no-venv"
    done = subprocess.run(
        [sys.executable, "-m", "bench.encoder_peer", "--peer-venv", str(missing)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(missing / "bin" / "infinity_emb") in lines[0]
    assert "make peer-venv" in lines[0]
    assert not missing.exists()  # nothing created on the way


def test_the_peer_serves_on_loopback_with_the_torch_engine_on_the_cpu_and_sends_no_statistics() -> None:
    command = peer_command(Path("/venv/bin/infinity_emb"), "/models/minilm", 4711, 32)
    options = dict(zip(command[2::2], command[3::2], strict=False))
    assert command[:2] == ["/venv/bin/infinity_emb", "v2"]
    assert options["--model-id"] == "/models/minilm"
    assert (options["--host"], options["--port"]) == ("127.0.0.1", "4711")
    assert (options["--engine"], options["--device"], options["--dtype"]) == ("torch", "cpu", "float32")
    assert options["--batch-size"] == "32"
    environment = peer_environment(threads=2)
    assert environment["OMP_WAIT_POLICY"] == "PASSIVE"
    assert environment["OMP_NUM_THREADS"] == "2"
    assert environment["INFINITY_ANONYMOUS_USAGE_STATS"] == "0"
    assert environment["HF_HUB_OFFLINE"] == "1"


def test_the_closed_loop_measures_a_bounded_window_with_unique_prompts_and_counts_errors() -> None:
    sent: list[int] = []

    async def call(index: int) -> None:
        sent.append(index)
        await asyncio.sleep(0.01)
        if index % 5 == 0:
            raise RuntimeError("refused")

    result = asyncio.run(closed_loop(call, 4, 0.3, 0.05, 10_000, first_index=100))
    assert len(sent) == len(set(sent))
    assert min(sent) == 100
    assert result["next_index"] == 100 + len(sent)
    assert 0 < result["requests"] < len(sent)
    assert result["errors"] > 0
    # 4 workers x calls of at least 10 ms: at most 400 calls/s (fewer on a busy machine).
    assert 0 < result["throughput_rps"] <= 400
    assert result["p50_ms"] >= 10


def test_the_closed_loop_stops_at_max_requests() -> None:
    async def call(index: int) -> None:
        await asyncio.sleep(0.001)

    result = asyncio.run(closed_loop(call, 2, 30.0, 0.0, 20, first_index=0))
    assert result["requests"] == 20


def measured(
    ceiling: float,
    sidecar: float,
    peer: float,
    sidecar_cpu_ms: float = 10.0,
    peer_cpu_ms: float = 12.0,
    sidecar_little: float | None = None,
) -> dict[str, dict[str, float]]:
    return {
        "ceiling": {
            "throughput_rps": ceiling,
            "cpu_ms_per_prompt": 9.0,
            **scheduler(1.75, 0.25, 0.0),
        },
        "sidecar": {
            "throughput_rps": sidecar,
            "little_rps": sidecar if sidecar_little is None else sidecar_little,
            "p50_ms": 100.0,
            "p99_ms": 150.0,
            "cpu_ms_per_prompt": sidecar_cpu_ms,
            "cores": 1.5,
            **scheduler(1.5, 0.5, 0.125),
        },
        "peer": {
            "throughput_rps": peer,
            "little_rps": peer,
            "p50_ms": 120.0,
            "p99_ms": 180.0,
            "cpu_ms_per_prompt": peer_cpu_ms,
            "cores": 1.25,
            **scheduler(1.25, 0.75, 0.0),
        },
    }


def scheduler(ran: float, waited: float, idle: float) -> dict[str, object]:
    return {"ran_cores": ran, "waited_cores": waited, "idle_cores": idle, "threads": []}


def test_the_table_shows_medians_of_within_round_shares_and_the_per_round_sidecar_over_peer() -> None:
    rounds = [
        # Round 0's sidecar answered in bursts its window's count caught one short of: Little's law says 96/s.
        {16: measured(100.0, 80.0, 64.0, sidecar_little=96.0), 64: measured(40.0, 30.0, 32.0, 20.0, 19.0)},
        {16: measured(120.0, 90.0, 60.0), 64: measured(50.0, 40.0, 32.0, 20.0, 21.0)},
        {16: measured(110.0, 99.0, 90.0), 64: measured(44.0, 33.0, 30.0, 20.0, 22.0)},
    ]
    summary = summarise(rounds)
    assert summary[16]["sidecar_share"] == pytest.approx(0.8)  # rounds: 0.8, 0.75, 0.9
    assert summary[16]["sidecar_over_peer_rounds"] == pytest.approx([1.25, 1.5, 1.1])
    assert summary[64]["peer_share"] == pytest.approx(0.68181818)  # rounds: 0.8, 0.64, 0.6818
    assert summary[64]["sidecar_throughput_rps"] == 33.0
    text = table(summary).splitlines()
    assert len(text) == 4
    assert text[0].startswith("| tokens | ceiling (prompts/s) | sidecar (prompts/s) |")
    assert summary[64]["peer_over_sidecar_cpu_rounds"] == pytest.approx([0.95, 1.05, 1.1])
    assert summary[64]["sidecar_cpu_ms_per_prompt"] == 20.0
    assert text[2] == (
        "| 16 | 110.0 | 90.0 | 100 / 150 | 0.80 | 64.0 | 120 / 180 | 0.64 | 1.25× [1.25, 1.50, 1.10]"
        " | 1.50× [1.50, 1.50, 1.10] | 9.0 / 10.0 / 12.0 | 1.75 / 1.50 / 1.25 | 0.25 / 0.50 / 0.75"
        " | 0.00 / 0.12 / 0.00 | 1.20× [1.20, 1.20, 1.20] |"
    )
    assert text[3].endswith(
        "| 1.10× [0.94, 1.25, 1.10] | 1.10× [0.94, 1.25, 1.10] | 9.0 / 20.0 / 21.0 | 1.75 / 1.50 / 1.25"
        " | 0.25 / 0.50 / 0.75 | 0.00 / 0.12 / 0.00 | 1.05× [0.95, 1.05, 1.10] |"
    )
    assert verdict(summary) == (
        "sidecar NOT ahead of the peer in every round at: 64 tokens\n"
        "sidecar NOT cheaper in CPU per prompt in every round at: 64 tokens"
    )
    ahead = summarise([{16: measured(100.0, 80.0, 64.0)}])
    assert verdict(ahead) == (
        "sidecar ahead of the peer at every length in every round\n"
        "sidecar cheaper in CPU per prompt at every length in every round"
    )


BURN_0_4_S = """
import sys, time
sys.stdin.readline()
end = time.process_time() + 0.4
while time.process_time() < end:
    pass
print("done", flush=True)
sys.stdin.readline()
"""


def test_a_server_run_counts_the_server_process_s_cpu_per_call_answered() -> None:
    """run_server charges the server's CPU over the whole run to the calls it answered: here the "server"
    is a child that burns 0.4 s of CPU during the run, which makes 8 calls."""
    burner = subprocess.Popen(
        [sys.executable, "-c", BURN_0_4_S], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert burner.stdin is not None and burner.stdout is not None
    stdin, stdout = burner.stdin, burner.stdout
    try:

        async def run(first: int) -> dict[str, int]:
            stdin.write("go\n")
            stdin.flush()
            assert await asyncio.wait_for(asyncio.to_thread(stdout.readline), 30) == "done\n"
            return {"next_index": first + 8}

        result = run_server(burner.pid, run, 100)
    finally:
        stdin.close()
        burner.wait(30)
    assert result["next_index"] == 108
    # 0.4 s of CPU over 8 calls = 50 ms per call (clock ticks are 10 ms).
    assert 45 <= result["cpu_ms_per_prompt"] <= 60
    assert 0 < result["cores"] <= 1.05
    # The scheduler's counters see the same 0.4 s (ns resolution), whatever part of it waited for a core.
    assert result["ran_cores"] == pytest.approx(result["cores"], abs=0.05)
    assert 0 <= result["waited_cores"] <= 1.0
    assert result["threads"][0]["ran"] == pytest.approx(result["ran_cores"])


def test_a_window_shorter_than_the_latency_is_stretched_to_cover_several_answers() -> None:
    async def slow_call(index: int) -> None:  # a server answering every call after 0.1 s
        await asyncio.sleep(0.1)

    result = asyncio.run(closed_loop(slow_call, 3, 0.01, 0.0, 10_000, first_index=0))
    assert result["window_s"] >= 0.2  # two warm-up median latencies, not the 10 ms asked for
    assert result["requests"] >= 3
    assert 0 < result["throughput_rps"] <= 45  # at most 3 clients / 0.1 s, plus a call ending on the edge


def test_the_sidecar_s_mean_batch_comes_from_its_histogram_s_growth() -> None:
    assert mean_batch((100.0, 10.0), (420.0, 20.0)) == 32.0
    assert math.isnan(mean_batch((100.0, 10.0), (100.0, 10.0)))  # no batch ran


def test_little_s_law_is_not_quantised_by_a_server_that_answers_in_bursts() -> None:
    """A "server" that answers everything queued at once every 0.1 s serves 4 clients 40 calls/s. A short
    window counts whole bursts only; clients / mean latency does not depend on where the window falls."""
    tick_s = 0.1

    async def burst_call(index: int) -> None:
        now = asyncio.get_running_loop().time()
        await asyncio.sleep(tick_s - now % tick_s)

    result = asyncio.run(closed_loop(burst_call, 4, 0.25, 0.0, 10_000, first_index=0))
    # Every call waits for the next tick, about one tick: 4 clients / 0.1 s. (A busy machine adds latency.)
    assert 25 <= result["little_rps"] <= 42
    assert result["little_rps"] == pytest.approx(4 / (result["p50_ms"] / 1000), rel=0.3)
