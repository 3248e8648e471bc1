"""Fixtures for the chart tests: the helm binary (skip with the reason when absent) and cached renders.

The tests skip when no helm v3 binary is found: ``bash .ci/install-helm.sh`` installs the pinned one.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest

from tests.helm.chart_render import CHART, HELM_TIMEOUT_S, Helm, Rendered, find_helm


@pytest.fixture(scope="session")
def helm() -> Helm:
    binary = find_helm()
    if binary is None:
        pytest.skip("no helm binary: run `bash .ci/install-helm.sh` (puts the pinned helm in .tools/bin)")
    version = subprocess.run(
        [binary, "version", "--short"], capture_output=True, text=True, timeout=HELM_TIMEOUT_S, check=False
    ).stdout
    if not version.startswith("v3."):
        pytest.skip(f"{binary} is not helm v3 ({version.strip()!r})")
    return Helm(binary)


@pytest.fixture(scope="session")
def render_ci(helm: Helm) -> Callable[[str | None], Rendered]:
    """Rendering of a values file in helm/barp-sidecar/ci/ by stem (None = the chart defaults), cached."""
    cache: dict[str | None, Rendered] = {}

    def render(name: str | None) -> Rendered:
        if name not in cache:
            files = [CHART / "ci" / f"{name}-values.yaml"] if name else []
            cache[name] = helm.template(files)
        return cache[name]

    return render
