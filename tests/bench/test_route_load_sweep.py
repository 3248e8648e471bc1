"""bench/route_load.py's before/after sweep: per-client comparisons, argument errors, a tiny real run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.route_load import SWEEP_NOTE, Result, main, peak_rss_mib, ratio_values
from tests.bench.bench_runner import argument_error

REPO = Path(__file__).resolve().parents[2]


def row(name: str, clients: int, rps: float, p50_ms: float, p99_ms: float) -> Result:
    return Result(name, 16, clients, rps, p50_ms, p50_ms, p99_ms, 1.0, note=SWEEP_NOTE)


def test_the_sweep_compares_sidecar_with_baseline_at_each_client_count() -> None:
    values = ratio_values(
        [
            row("baseline", 1, 50.0, 20.0, 30.0),
            row("sidecar", 1, 55.0, 18.0, 25.0),
            row("baseline", 16, 100.0, 160.0, 400.0),
            row("sidecar", 16, 250.0, 64.0, 90.0),
        ]
    )
    assert values == {
        "16 tokens, 1 clients: sidecar vs baseline throughput ratio": pytest.approx(1.1),
        "16 tokens, 1 clients: sidecar vs baseline p50 difference (ms)": pytest.approx(-2.0),
        "16 tokens, 1 clients: sidecar vs baseline p99 difference (ms)": pytest.approx(-5.0),
        "16 tokens, 16 clients: sidecar vs baseline throughput ratio": pytest.approx(2.5),
        "16 tokens, 16 clients: sidecar vs baseline p50 difference (ms)": pytest.approx(-96.0),
        "16 tokens, 16 clients: sidecar vs baseline p99 difference (ms)": pytest.approx(-310.0),
    }


def test_an_alt_backend_sidecar_is_compared_with_the_sidecar_in_its_round() -> None:
    values = ratio_values(
        [
            Result("sidecar", 64, 64, 240.0, 300.0, 320.0, 400.0, 31.0),
            Result("sidecar_alt", 64, 64, 200.0, 350.0, 380.0, 450.0, 31.0),
            Result("sidecar_alt", 16, 64, 999.0, 1.0, 1.0, 1.0, 31.0),  # another length: not paired
        ]
    )
    assert values == {"64 tokens: sidecar / sidecar_alt throughput": pytest.approx(1.2)}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--baseline-src", "."], "--baseline-src needs --sweep-clients"),
        (["--baseline-src", "/nonexistent", "--sweep-clients", "1"], "no barp_sidecar/cli.py there"),
    ],
)
def test_bad_baseline_arguments_exit_2_naming_the_flag(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert message in argument_error(main, argv, capsys)


def test_peak_rss_is_the_processes_high_water_mark() -> None:
    import os
    import resource

    def resident_mib() -> float:
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("VmRSS:")).split()[1]) / 1024

    before = peak_rss_mib(os.getpid())
    assert before is not None
    # Touch enough memory to rise 64 MiB above the earlier peak (earlier tests may have set it high).
    ballast = bytearray(int((before - resident_mib() + 64) * 1024 * 1024))
    ballast[::4096] = b"x" * len(ballast[::4096])
    after = peak_rss_mib(os.getpid())
    assert after is not None and after >= before + 60
    del ballast
    assert peak_rss_mib(os.getpid()) == pytest.approx(after, abs=2)  # a high-water mark stays (±counter lag)
    assert after == pytest.approx(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, abs=2)
    assert peak_rss_mib(2**22 + 12345) is None  # no such process


@pytest.mark.slow
def test_a_tiny_sweep_against_a_baseline_checkout_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "sweep.json"
    command = [sys.executable, "-m", "bench.route_load", "--prompt-tokens", "8", "--sweep-clients", "1", "4"]
    command += ["--baseline-src", str(REPO), "--duration-s", "0.5", "--rounds", "1", "--json", str(out)]
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    report = json.loads(out.read_text())
    assert sorted((r["name"], r["concurrency"]) for r in report["results"]) == [
        ("baseline", 1),
        ("baseline", 4),
        ("sidecar", 1),
        ("sidecar", 4),
    ]
    assert all(r["requests"] > 0 and r["errors"] == 0 for r in report["results"])
    assert "8 tokens, 4 clients: sidecar vs baseline throughput ratio" in report["comparisons"]
    assert set(report["peak_rss_mib"]) == {"sidecar", "baseline"}
    assert all(mib > 50 for mib in report["peak_rss_mib"].values())


def test_a_completed_run_removes_its_scratch_and_a_failed_one_keeps_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.load_client import remove_scratch

    done, failed = tmp_path / "done", tmp_path / "failed"
    for scratch in (done, failed):
        (scratch / "sidecar-state").mkdir(parents=True)
        (scratch / "sidecar.log").write_text("log\n")
    remove_scratch(done, completed=True)
    remove_scratch(failed, completed=False)
    assert not done.exists()
    assert (failed / "sidecar.log").read_text() == "log\n"
    assert f"kept in {failed}" in capsys.readouterr().err
