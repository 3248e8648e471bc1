"""Runs a bench as a user does (``python -m bench.NAME ...`` from the repository root) for smoke tests."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Tiny counts: two concurrency levels, a few requests, one round (seconds, not minutes).
TINY_LOAD = ("--concurrency", "1,4", "--requests", "40", "--rounds", "1")


async def run_bench(module: str, *argv: str, timeout_s: float = 300.0) -> str:
    """Run ``python -m bench.<module> argv``; its combined output. Fails the test on a non-zero exit."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        f"bench.{module}",
        *argv,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout_s)
    text = output.decode()
    assert process.returncode == 0, text[-2000:]
    return text


def argument_error(
    parse: Callable[[list[str]], object], argv: list[str], capsys: pytest.CaptureFixture[str]
) -> str:
    """What a bench's argument parsing printed for ``argv``; asserts it exited 2 (argparse's usage error)."""
    with pytest.raises(SystemExit) as exited:
        parse(argv)
    assert exited.value.code == 2
    return capsys.readouterr().err
