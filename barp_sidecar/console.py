"""What both console scripts (``barp-sidecar``, ``barp-trainer``) share: the ``--version`` text and a quiet
exit when stdout's reader goes away (``… | head``). No import-time work: ``--help`` must stay fast.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "barp-sidecar"
# What a shell reports for a process killed by SIGPIPE (128 + 13).
EXIT_BROKEN_PIPE = 141


def package_version() -> str:
    """``barp-sidecar``'s installed version, or ``unknown`` when running from a checkout not installed."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"


def run_handling_closed_stdout(command: Callable[[], int]) -> int:
    """Run ``command``; when stdout's reader went away (``| head``), exit quietly like other Unix tools."""
    try:
        code = command()
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
