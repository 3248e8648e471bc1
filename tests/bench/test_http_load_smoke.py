"""bench/http_load.py end to end with tiny numbers: real fake-provider and sidecar processes."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
async def test_http_load_compares_the_http_modes_with_grpc_complete(tmp_path: Path) -> None:
    out = tmp_path / "http.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.http_load",
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
        (name, c) for c in (1, 4) for name in ("grpc_complete", "http_stream", "http_json")
    ]
    for row in rows:
        assert row["throughput_rps"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
        assert row["sidecar_cpu_ms_per_request"] > 0
    http = [r for r in rows if r["name"] != "grpc_complete"]
    assert all("p50_added_ms" in r and r["throughput_ratio"] > 0 for r in http)
    assert report["targets"] == {"p50_added_ms_max": 1.0, "throughput_ratio_min": 0.9}
