"""bench/http_load.py end to end with tiny numbers: real fake-provider and sidecar processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench.bench_runner import TINY_LOAD, run_bench


@pytest.mark.slow
async def test_http_load_compares_the_http_modes_with_grpc_complete(tmp_path: Path) -> None:
    out = tmp_path / "http.json"
    await run_bench("http_load", *TINY_LOAD, "--json", str(out))
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
