"""bench/forward_load.py end to end with tiny numbers: real fake-provider and sidecar processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench.bench_runner import REPO, TINY_LOAD, run_bench


@pytest.mark.slow
async def test_forward_load_writes_the_three_modes(tmp_path: Path) -> None:
    out = tmp_path / "forward.json"
    await run_bench("forward_load", *TINY_LOAD, "--json", str(out))
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
    # 8 zero-latency tokens: at most one message per token plus the finish, at least one in all.
    assert all(1 <= r["messages_per_stream"] <= 9 for r in complete)
    assert all("messages_per_stream" not in r for r in rows if r["name"] != "sidecar_complete")
    assert report["config"]["policy"] == "hash"


@pytest.mark.slow
async def test_forward_load_cpu_per_token_baseline_and_profile(tmp_path: Path) -> None:
    # The baseline is this checkout again: the mode names, the CPU columns and the profile printout.
    out = tmp_path / "forward.json"
    profile = tmp_path / "sidecar.pstats"
    text = await run_bench(
        "forward_load",
        *("--concurrency", "2", "--requests", "30", "--rounds", "1", "--tokens", "2"),
        *("--long-tokens", "6", "--tokens-per-s", "1000", "--baseline-src", str(REPO)),
        *("--profile-sidecar", str(profile), "--json", str(out)),
    )
    report = json.loads(out.read_text())
    rows = {r["name"]: r for r in report["results"]}
    assert list(rows) == [
        "direct",
        "sidecar_route",
        "sidecar_complete",
        "sidecar_complete_long",
        "baseline_route",
        "baseline_complete",
        "baseline_complete_long",
    ]
    assert report["config"]["long_tokens_per_completion"] == 6
    for prefix in ("sidecar", "baseline"):
        complete, route = rows[f"{prefix}_complete"], rows[f"{prefix}_route"]
        assert complete["forward_cpu_ms_per_request"] == pytest.approx(
            complete["sidecar_cpu_ms_per_request"] - route["sidecar_cpu_ms_per_request"], abs=0.002
        )
        assert "sidecar_cpu_ms_per_extra_token" in rows[f"{prefix}_complete_long"]
        assert 1 <= complete["messages_per_stream"] <= 3  # 2 tokens
        assert 1 <= rows[f"{prefix}_complete_long"]["messages_per_stream"] <= 7  # 6 tokens
        # Each sidecar's own process: both served requests, so both spent CPU.
        assert complete["sidecar_cpu_ms_per_request"] > 0
    assert profile.is_file() and "sidecar profile" in text and "us/call" in text


def test_forward_load_rejects_a_baseline_without_the_package(tmp_path: Path) -> None:
    from bench.forward_load import main

    assert main(["--baseline-src", str(tmp_path)]) == 2
