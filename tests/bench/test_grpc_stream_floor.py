"""bench/grpc_stream_floor.py: a real server process, real streams, the table and the per-message slope."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.grpc_stream_floor import main

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_floor_bench_prints_every_count_and_the_slope() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.grpc_stream_floor", "--messages", "1,3", "--requests", "20"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = re.findall(r"^\| (\d+) \| ([\d., ]+) \|$", done.stdout, re.MULTILINE)
    assert [count for count, _ in rows] == ["1", "3"]
    assert all(len(values.split(", ")) == 2 for _, values in rows)  # two rounds by default
    assert re.search(r"server CPU per extra message: -?\d+\.\d{4} ms \(1 -> 3 messages\)", done.stdout)


@pytest.mark.parametrize("argv", [["--messages", "8"], ["--messages", "1,300"], ["--requests", "0"]])
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("grpc_stream_floor: --messages")
