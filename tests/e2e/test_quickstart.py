"""docs/quickstart.md runs end to end (bench/quickstart.py: every command, real processes, free ports)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench import quickstart

REPO = Path(__file__).resolve().parents[2]


def test_every_command_on_the_page_has_an_expectation() -> None:
    blocks = quickstart.bash_blocks(quickstart.PAGE.read_text())
    assert len(blocks) >= 12
    for block in blocks:
        if block not in quickstart.NOT_RUN:
            quickstart.expectation_for(block)  # raises LookupError for a command nobody checks


def test_the_quickstart_walks_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "quickstart.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.quickstart", "--json", str(out)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-12000:]
    steps = json.loads(out.read_text())["steps"]
    blocks = quickstart.bash_blocks(quickstart.PAGE.read_text())
    assert [step["command"] for step in steps[: len(blocks)]] == blocks
    assert all(step["status"] != "FAILED" for step in steps)
    assert "quickstart walked end to end" in result.stdout
