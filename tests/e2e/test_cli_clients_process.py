"""``barp-sidecar admin …`` and ``barp-sidecar report …`` against a real ``serve`` process (no grpcurl)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.e2e.test_serve_process import ServeProcess
from tests.support.sidecar import ARMS, make_tiny_checkpoint

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "barp_sidecar.cli", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    root = tmp_path_factory.mktemp("cli-clients")
    make_tiny_checkpoint(root / "store" / "v3", version=3)
    (root / "store" / "LATEST").write_text("v3\n")
    config = root / "serve.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "policy": {"checkpoint_dir": str(root / "store"), "device": "cpu"},
                "admin": {"port": 0},
                "state": {"dir": str(root / "state")},
                "server": {"grace_s": 1},
            }
        )
    )
    process = ServeProcess(config)
    process.wait_started()
    yield process
    process.proc.send_signal(signal.SIGTERM)
    assert process.proc.wait(timeout=30) == 0
    process.kill()


def admin(served: ServeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return cli("admin", *args, "--target", f"127.0.0.1:{served.started['admin_port']}")


def test_server_started_names_the_state_directories(served: ServeProcess) -> None:
    started = served.started
    assert started["state_dir"].endswith("state") and started["spool_dir"] == f"{started['state_dir']}/spool"
    assert Path(started["spool_dir"]).is_dir() and started["trainer"] is None
    deadline = time.monotonic() + 10  # logged right after server_started
    while "outcomes_kept_without_trainer" not in served_events(served) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "outcomes_kept_without_trainer" in served_events(served)


def test_readme_names_the_fields_server_started_has(served: ServeProcess) -> None:
    readme = (REPO / "README.md").read_text()
    example = re.search(r'`\{"event": "server_started", (.*?)\}`', readme, re.S)
    assert example is not None
    fields = re.findall(r'"(\w+)": …', example.group(1))
    assert fields and all(name in served.started for name in fields), fields


def served_events(served: ServeProcess) -> list[str]:
    return [json.loads(line)["event"] for line in list(served.lines) if line.startswith("{")]


def test_admin_get_list_pin_unpin(served: ServeProcess) -> None:
    got = admin(served, "get")
    assert got.returncode == 0, got.stderr
    info = json.loads(got.stdout)
    assert info["version"] == 3 and info["arms"] == list(ARMS) and info["pinned"] is False
    listed = json.loads(admin(served, "list").stdout)
    assert [p["version"] for p in listed] == [3]
    pinned = admin(served, "pin", "3")
    assert pinned.returncode == 0 and json.loads(pinned.stdout)["pinned"] is True
    assert json.loads(admin(served, "get").stdout)["pinned"] is True
    unpinned = admin(served, "unpin")
    assert unpinned.returncode == 0 and json.loads(unpinned.stdout)["pinned"] is False


def test_admin_errors_are_one_line(served: ServeProcess) -> None:
    unknown = admin(served, "pin", "99")
    assert unknown.returncode == 1 and unknown.stdout == ""
    assert unknown.stderr.count("\n") == 1 and unknown.stderr.startswith("NOT_FOUND: version")
    bad = admin(served, "pin", "0")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "version must be >= 1" in bad.stderr
    down = cli("admin", "get", "--target", "127.0.0.1:1", "--timeout-s", "2")
    assert down.returncode == 1 and down.stderr.count("\n") == 1 and down.stderr.startswith("UNAVAILABLE")


def test_report_records_once_and_says_no_trainer_is_attached(served: ServeProcess) -> None:
    target = f"127.0.0.1:{served.started['port']}"
    routed = cli("route", "--target", target, "Explain quicksort.")
    assert routed.returncode == 0, routed.stderr
    decision_id = json.loads(routed.stdout)["decision_id"]
    first = cli("report", decision_id, "--quality", "0.8", "--cost-usd", "0.001", "--target", target)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {
        "decision_id": decision_id,
        "recorded": True,
        "delivery": "OUTCOME_DELIVERY_KEPT_WITHOUT_TRAINER",
    }
    again = json.loads(cli("report", decision_id, "--quality", "0.8", "--target", target).stdout)
    assert again["recorded"] is False
    unknown = cli("report", "no-such-decision", "--quality", "0.5", "--target", target)
    assert unknown.returncode == 1 and unknown.stderr.startswith("NOT_FOUND: ")
    bad = cli("report", decision_id, "--quality", "1.5", "--target", target)
    assert bad.returncode == 1 and bad.stderr.startswith("INVALID_ARGUMENT: quality")


def test_version_flags() -> None:
    for module in ("barp_sidecar.cli", "trainer.cli"):
        result = subprocess.run(
            [sys.executable, "-m", module, "--version"],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0 and result.stdout.split()[1][0].isdigit(), result


def test_piping_into_head_prints_no_traceback(served: ServeProcess) -> None:
    target = f"127.0.0.1:{served.started['port']}"
    command = (
        f"{sys.executable} -m barp_sidecar.cli route --target {target} 'hello there' | head -n 1; "
        "exit ${PIPESTATUS[1]}"
    )
    result = subprocess.run(
        ["bash", "-c", command],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and result.stdout == "{\n" and "Traceback" not in result.stderr
