"""bench/soak.py end to end with small numbers: real fake-provider, trainer and sidecar processes, two
kill -9s; the soak's own checks must pass and its JSON must say so."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_small_soak_passes(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--requests", "600", "--concurrency", "8", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["passed"] and report["lost"] == 0 and report["doubled"] == 0
    assert report["requests"] == 600 and report["bad_inputs"] > 0
    assert "UNKNOWN" not in report["codes"] and "INTERNAL" not in report["codes"]
