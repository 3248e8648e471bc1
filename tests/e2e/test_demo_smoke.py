"""``python -m trainer.demo`` end to end on a small JSONL log (real encoder, real processes): slow."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.e2e.learning_processes import ROOT


@pytest.mark.slow
@pytest.mark.real_encoder
def test_demo_runs_on_a_jsonl_log_and_writes_its_outputs(tmp_path):
    log = tmp_path / "log.jsonl"
    with log.open("w") as handle:
        for i in range(80):
            code = i % 2 == 0
            handle.write(
                json.dumps(
                    {
                        "prompt": (
                            f"def f{i}(x): return x * {i}" if code else f"What is the capital of country {i}?"
                        ),
                        "task": "code" if code else "qa",
                        "scores": {"small": 0.2 if code else 0.9, "large": 0.9},
                        "costs": {"small": 0.0001, "large": 0.004},
                    }
                )
                + "\n"
            )
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "trainer.demo", "--log", str(log), "--out", str(out), "--passes", "3",
         "--publish-every-events", "40", "--settle-s", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert {
        "events",
        "versions_published",
        "quality_weight",
        "final_policy_reward",
        "best_single_model_reward",
    } <= set(summary)
    assert summary["events"] == 56 * 3
    assert (out / "learning_curve.png").stat().st_size > 1000
