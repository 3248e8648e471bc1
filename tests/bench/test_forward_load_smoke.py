"""bench/forward_load.py end to end with tiny numbers: real fake-provider and sidecar processes."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
async def test_forward_load_writes_the_three_modes(tmp_path: Path) -> None:
    out = tmp_path / "forward.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.forward_load",
        "--concurrency",
        "1,4",
        "--requests",
        "40",
        "--rounds",
        "1",
        "--json",
        str(out),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 300)
    assert process.returncode == 0, output.decode()[-2000:]
    report = json.loads(out.read_text())
    rows = report["results"]
    assert [(r["name"], r["concurrency"]) for r in rows] == [
        (name, c) for c in (1, 4) for name in ("direct", "sidecar_route", "sidecar_complete")
    ]
    for row in rows:
        assert row["throughput_rps"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
    complete = [r for r in rows if r["name"] == "sidecar_complete"]
    assert all("p50_added_ms" in r and "p50_first_token_added_ms" in r for r in complete)
    assert all(r["sidecar_cpu_ms_per_request"] > 0 for r in complete)
    assert report["config"]["policy"] == "hash"
