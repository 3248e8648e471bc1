"""``barp-trainer serve`` runs in the sidecar's process shell: JSON logs on stdout (not stderr), SIGTERM ->
ordered shutdown and exit 0, a bad setting -> exit 2 with one line naming it. Real subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.learning_helpers import trainer_settings_yaml

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def test_trainer_logs_json_to_stdout_and_exits_zero_on_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "trainer.yaml"
    config.write_text(trainer_settings_yaml(tmp_path / "data", every_events=1000, every_s=600))
    process = subprocess.Popen(
        [sys.executable, "-m", "trainer.service.main", "--config", str(config), "--port", "0"],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines: list[dict] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(json.loads(line))
            if lines[-1]["event"] == "trainer_started":
                break
        assert lines and lines[-1]["event"] == "trainer_started", lines
        assert lines[-1]["timestamp"].endswith("Z") and lines[-1]["level"] == "info"
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.returncode == 0, stderr
    events = [json.loads(line)["event"] for line in stdout.splitlines()]
    assert events.index("shutdown_requested") < events.index("trainer_stopped")
    assert "trainer_started" not in stderr


def test_trainer_bad_setting_exits_2_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "trainer.yaml"
    config.write_text(trainer_settings_yaml(tmp_path / "data", every_events=1000, every_s=600))
    result = subprocess.run(
        [sys.executable, "-m", "trainer.service.main", "--config", str(config), "--port", "70000"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("barp-trainer serve: invalid configuration: --port")
    assert len(result.stderr.strip().splitlines()) == 1
