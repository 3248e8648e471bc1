"""bench/provider_read_floor.py: a real fake-provider process, real streams, every mode's row."""

from __future__ import annotations

import re

import pytest

from bench.provider_read_floor import MODES, main
from tests.bench.bench_runner import run_bench


@pytest.mark.slow
async def test_the_read_floor_bench_reads_every_token_in_every_mode() -> None:
    text = await run_bench(
        "provider_read_floor",
        *("--tokens", "6", "--tokens-per-s", "100", "--concurrency", "2", "--streams", "4", "--rounds", "2"),
    )
    rows = re.findall(r"^\| (\w+) \| ([\d.]+) \| ([\d., ]+) \| ([\d.]+) \|$", text, re.MULTILINE)
    assert [mode for mode, *_ in rows] == list(MODES)
    for _, reads_per_stream, per_round, mean in rows:
        # 6 tokens 10 ms apart: about one read each (plus the headers and the finish), never fewer than 2.
        assert 2 <= float(reads_per_stream) <= 12
        assert len(per_round.split(", ")) == 2 and float(mean) > 0


@pytest.mark.parametrize(
    "argv", [["--tokens", "0"], ["--concurrency", "0"], ["--streams", "0"], ["--tokens-per-s", "0"]]
)
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("provider_read_floor: --tokens")
