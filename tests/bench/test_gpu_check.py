"""bench/gpu_check.sh refuses clearly (exit 2, one line) on a machine without CUDA."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.sh"


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine the script runs the full check")
def test_gpu_check_fails_clearly_without_cuda(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(SCRIPT)],
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "OUT_DIR": str(tmp_path / "out")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "no CUDA device" in result.stderr
    assert not (tmp_path / "out").exists()
