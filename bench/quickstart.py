"""Runs docs/quickstart.md end to end, as a newcomer would, and prints each step's time.

Owns the walkthrough only. The commands are read from the page's ```bash blocks (so the page is what
runs, and a command added there without an expectation here fails the run), executed in order with bash
from the repository root against this checkout (``barp-sidecar`` / ``barp-trainer`` become
``python -m barp_sidecar.cli`` / ``python -m trainer.cli``). To run next to other work it moves every port
to a free one (the page's 50051, 50052, 50061, 8089, 9464, 9465, in commands and through environment
overrides of the example configs) and keeps all state in a temporary directory. Long-running commands
(fake provider, trainer, sidecar) start in the background and are waited for by their start-up line; at
the end they get SIGTERM and must exit 0.

    python -m bench.quickstart [--json out/bench/quickstart.json]

Exit 0 when every step did what the page says, 1 otherwise (the failing step's output is printed, with
the last warning, error and policy lines of each server's log).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[1]
PAGE = REPOSITORY / "docs" / "quickstart.md"
CATALOG = REPOSITORY / "barp_sidecar" / "config" / "catalog.fake-local.yaml"
COMMAND_TIMEOUT_S = 180.0
START_TIMEOUT_S = 180.0
SWAP_TIMEOUT_S = 120.0
# The page's ports -> environment variables that move the servers to the free ports chosen here.
PAGE_PORTS = {
    "sidecar": 50051,
    "admin": 50052,
    "trainer": 50061,
    "fake_provider": 8089,
    "sidecar_metrics": 9464,
    "trainer_metrics": 9465,
}
# Not run: the walkthrough runs inside an installed environment already.
NOT_RUN = {"make install"}


def bash_blocks(page: str) -> list[str]:
    """The page's ```bash blocks, in order."""
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", page, re.S)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Context:
    ports: dict[str, int]
    work: Path
    env: dict[str, str]
    last_decision_id: str | None = None
    background: list[tuple[str, subprocess.Popen[bytes], Path]] = field(default_factory=list)


def as_json(output: str) -> Any:
    return json.loads(output)


def check_decide(output: str, context: Context) -> None:
    decision = as_json(output)
    assert decision["exploration"] == "greedy" and decision["propensity"] == 1.0
    assert len(decision["explanation"]) == 11 and decision["explanation"][0]["model"] == decision["model"]


def check_route(output: str, context: Context) -> None:
    decision = as_json(output)
    assert decision["decision_id"] and decision["model"]
    context.last_decision_id = decision["decision_id"]


def check_complete(output: str, context: Context) -> None:
    assert output.strip(), "complete printed no answer"


def check_report(output: str, context: Context) -> None:
    ack = as_json(output)
    assert ack["recorded"] is True and ack["delivery"] == "OUTCOME_DELIVERY_TRAINER", ack


def check_feed(output: str, context: Context) -> None:
    assert "reported 40 outcomes" in output


def check_swapped(output: str, context: Context) -> None:
    info = as_json(output)
    assert info["version"] >= 2 and info["source"] == "trainer", info


def check_pinned(output: str, context: Context) -> None:
    info = as_json(output)
    assert info["version"] == 1 and info["pinned"] is True, info


def check_list(output: str, context: Context) -> None:
    versions = {policy["version"] for policy in as_json(output)}
    assert {1, 2} <= versions, versions


def check_unpinned(output: str, context: Context) -> None:
    assert as_json(output)["pinned"] is False


@dataclass(frozen=True)
class Expectation:
    """What a page command must do: a check of its stdout, or a start-up line when it keeps running."""

    prefix: str
    check: Callable[[str, Context], None] | None = None
    ready_marker: str | None = None
    retry_until_s: float = 0.0  # > 0: rerun until the check passes (e.g. waiting for a hot swap)


EXPECTATIONS = (
    Expectation("barp-sidecar decide", check_decide),
    Expectation("python -m barp_sidecar.providers.fake_server", ready_marker="fake_provider_started"),
    Expectation("barp-trainer serve", ready_marker="trainer_started"),
    Expectation("barp-sidecar serve", ready_marker="server_started"),
    Expectation("barp-sidecar route", check_route),
    Expectation("barp-sidecar complete", check_complete),
    Expectation("barp-sidecar report", check_report),
    Expectation("python - <<'EOF'", check_feed),
    Expectation("barp-sidecar admin get", check_swapped, retry_until_s=SWAP_TIMEOUT_S),
    Expectation("barp-sidecar admin pin", check_pinned),
    Expectation("barp-sidecar admin list", check_list),
    Expectation("barp-sidecar admin unpin", check_unpinned),
)


def expectation_for(command: str) -> Expectation:
    for expectation in EXPECTATIONS:
        if command.startswith(expectation.prefix):
            return expectation
    raise LookupError(f"docs/quickstart.md runs {command.splitlines()[0]!r}: add an Expectation for it")


def localise(command: str, context: Context) -> str:
    """The page's command with this checkout's interpreter, the free ports and the last decision id."""
    python = sys.executable
    command = re.sub(r"^barp-sidecar\b", f"{python} -m barp_sidecar.cli", command, flags=re.M)
    command = re.sub(r"^barp-trainer\b", f"{python} -m trainer.cli", command, flags=re.M)
    command = re.sub(r"^python\b", python, command, flags=re.M)
    for name, page_port in PAGE_PORTS.items():
        command = command.replace(f"127.0.0.1:{page_port}", f"127.0.0.1:{context.ports[name]}")
        command = command.replace(f"--port {page_port}", f"--port {context.ports[name]}")
    if "DECISION_ID" in command:
        if context.last_decision_id is None:
            raise AssertionError("DECISION_ID is used before any route printed one")
        command = command.replace("DECISION_ID", context.last_decision_id)
    return command


def environment(ports: dict[str, int], work: Path) -> dict[str, str]:
    catalog = work / "catalog.fake-local.yaml"
    catalog.write_text(
        CATALOG.read_text().replace(
            f"127.0.0.1:{PAGE_PORTS['fake_provider']}", f"127.0.0.1:{ports['fake_provider']}"
        )
    )
    return {
        **os.environ,
        "PYTHONPATH": str(REPOSITORY),
        "XDG_STATE_HOME": str(work / "state"),
        "BARP__SERVER__PORT": str(ports["sidecar"]),
        "BARP__ADMIN__PORT": str(ports["admin"]),
        "BARP__METRICS__PORT": str(ports["sidecar_metrics"]),
        "BARP__TRAINER__TARGET": f"127.0.0.1:{ports['trainer']}",
        "BARP__PROVIDERS__CATALOG_FILE": str(catalog),
        "BARP_TRAINER__SERVER__PORT": str(ports["trainer"]),
        "BARP_TRAINER__METRICS__PORT": str(ports["trainer_metrics"]),
        "BARP_TRAINER__STORAGE__DATA_DIR": str(work / "trainer-data"),
    }


def start_background(command: str, expectation: Expectation, context: Context) -> None:
    log_path = context.work / f"background-{len(context.background)}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            ["bash", "-c", f"exec {command}"],
            cwd=REPOSITORY,
            env=context.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    context.background.append((command, process, log_path))
    deadline = time.monotonic() + START_TIMEOUT_S
    assert expectation.ready_marker is not None
    while expectation.ready_marker not in log_path.read_text(errors="replace"):
        if process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {expectation.ready_marker} within {START_TIMEOUT_S} s")
        time.sleep(0.05)


def run_command(command: str, expectation: Expectation, context: Context) -> int:
    """Run to completion and check; returns how many times it ran."""
    deadline = time.monotonic() + expectation.retry_until_s
    attempts = 0
    while True:
        attempts += 1
        result = subprocess.run(
            ["bash", "-c", command],
            cwd=REPOSITORY,
            env=context.env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
        try:
            assert result.returncode == 0, f"exit {result.returncode}"
            assert expectation.check is not None
            expectation.check(result.stdout, context)
            return attempts
        except (AssertionError, ValueError, KeyError) as failure:
            if time.monotonic() < deadline:
                time.sleep(1.0)
                continue
            raise AssertionError(
                f"{failure}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
            ) from failure


# What a failed step prints of each server's log: the lines that explain a missing swap or a stall.
LOG_TAIL_LINES = 12
LOG_TAIL_PATTERN = re.compile(r"warning|error|policy_|gate|published|swap", re.I)


def background_log_tails(context: Context) -> str:
    """The last warning/error/policy lines of every background server's log (for a failed step)."""
    parts = []
    for command, _process, log_path in context.background:
        lines = [
            line
            for line in log_path.read_text(errors="replace").splitlines()
            if LOG_TAIL_PATTERN.search(line)
        ]
        tail = "\n".join(line[:300] for line in lines[-LOG_TAIL_LINES:]) or "(no such lines)"
        parts.append(f"--- {' '.join(command.split()[:3])}: last {LOG_TAIL_LINES} notable log lines\n{tail}")
    return "\n".join(parts)


def stop_background(context: Context) -> list[str]:
    """SIGTERM every background process (last started first); returns the ones that did not exit 0."""
    failures = []
    for command, process, log_path in reversed(context.background):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait(timeout=10)
        if code != 0:
            failures.append(f"{command.split()[0:3]} exited {code}: {log_path.read_text()[-2000:]}")
    return failures


def walk(work: Path) -> list[dict[str, Any]]:
    ports = {name: free_port() for name in PAGE_PORTS}
    context = Context(ports=ports, work=work, env=environment(ports, work))
    steps: list[dict[str, Any]] = []
    try:
        for block in bash_blocks(PAGE.read_text()):
            if block in NOT_RUN:
                steps.append({"command": block, "seconds": None, "status": "not run (installed already)"})
                continue
            expectation = expectation_for(block)
            command = localise(block, context)
            started = time.perf_counter()
            status = "ok"
            try:
                if expectation.ready_marker is not None:
                    start_background(command, expectation, context)
                    status = "running"
                else:
                    attempts = run_command(command, expectation, context)
                    status = "ok" if attempts == 1 else f"ok after {attempts} tries"
            except AssertionError as failure:
                steps.append({"command": block, "seconds": time.perf_counter() - started, "status": "FAILED"})
                print_steps(steps)
                print(f"\nFAILED: {block.splitlines()[0]}\n{failure}", file=sys.stderr)
                print(background_log_tails(context), file=sys.stderr)
                raise
            steps.append({"command": block, "seconds": time.perf_counter() - started, "status": status})
    finally:
        failures = stop_background(context)
    if failures:
        raise AssertionError("shutdown: " + "; ".join(failures))
    steps.append({"command": "Ctrl-C (SIGTERM) the three servers", "seconds": None, "status": "exit 0"})
    return steps


def print_steps(steps: list[dict[str, Any]]) -> None:
    print(f"{'step':<4} {'seconds':>8}  {'status':<18} command")
    for index, step in enumerate(steps, start=1):
        seconds = f"{step['seconds']:.2f}" if step["seconds"] is not None else "-"
        first_line = step["command"].splitlines()[0]
        print(f"{index:<4} {seconds:>8}  {step['status']:<18} {first_line[:100]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None, help="also write the steps and times here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="barp-quickstart-") as work:
        try:
            steps = walk(Path(work))
        except AssertionError:
            return 1
    print_steps(steps)
    total_s = time.perf_counter() - started
    print(f"\nquickstart walked end to end in {total_s:.1f} s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"total_s": total_s, "steps": steps}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
