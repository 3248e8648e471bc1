"""The console scripts the image runs (``barp-sidecar``, ``barp-trainer``) start and print their help.

Runs each ``[project.scripts]`` target of pyproject.toml in a fresh interpreter from this checkout: the
same entry points the Dockerfile's build-time check and the Helm chart's commands use.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
SCRIPTS = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]["scripts"]
HELP_TIMEOUT_S = 60


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_console_script_help(script: str) -> None:
    module, function = SCRIPTS[script].split(":")
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} (behind {script}) is not in this checkout yet")
    code = (
        f"import sys; from {module} import {function} as main; "
        f"sys.argv[0] = {script!r}; sys.exit(main(['--help']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=HELP_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {script}"), result.stdout
