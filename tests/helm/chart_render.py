"""Rendering the chart for tests: find the helm binary, run ``helm template``, parse the objects.

``find_helm`` looks in ``.tools/bin`` (where ``bash .ci/install-helm.sh`` puts the pinned helm), then
``$HELM_BIN``, then ``PATH``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPOSITORY = Path(__file__).resolve().parents[2]
CHART = REPOSITORY / "helm" / "barp-sidecar"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE = "barp"
NAMESPACE = "apps"
HELM_TIMEOUT_S = 60


def find_helm() -> str | None:
    candidates = [REPOSITORY / ".tools" / "bin" / "helm"]
    if os.environ.get("HELM_BIN"):
        candidates.insert(0, Path(os.environ["HELM_BIN"]))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("helm")


@dataclass(frozen=True)
class Rendered:
    """The objects of one ``helm template`` run."""

    objects: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name_suffix: str = "") -> dict[str, Any]:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"].endswith(name_suffix)]
        assert len(found) == 1, f"expected one {kind} named *{name_suffix}, found {len(found)}"
        return found[0]

    def trainer(self) -> dict[str, Any]:
        """The trainer's workload: a Deployment, or a StatefulSet with trainer.replicas > 1."""
        kind = "StatefulSet" if self.of_kind("StatefulSet") else "Deployment"
        return self.one(kind, "-trainer")

    def pod_specs(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for o in self.objects:
            if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
                yield o["metadata"]["name"], o["spec"]["template"]["spec"]

    def containers(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for name, spec in self.pod_specs():
            for container in [*spec.get("initContainers", []), *spec["containers"]]:
                yield f"{name}/{container['name']}", container


class HelmFailed(Exception):
    def __init__(self, stderr: str) -> None:
        super().__init__(stderr)
        self.stderr = stderr


@dataclass(frozen=True)
class Helm:
    binary: str

    def template(
        self,
        values_files: Iterable[Path] = (),
        set_values: Iterable[str] = (),
        set_strings: Iterable[str] = (),
    ) -> Rendered:
        command = [self.binary, "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
        for file in values_files:
            command += ["--values", str(file)]
        for item in set_values:
            command += ["--set", item]
        for item in set_strings:
            command += ["--set-string", item]
        result = subprocess.run(command, capture_output=True, text=True, timeout=HELM_TIMEOUT_S, check=False)
        if result.returncode != 0:
            raise HelmFailed(result.stderr)
        return Rendered([o for o in yaml.safe_load_all(result.stdout) if o])


def ci_names() -> list[str | None]:
    return [None, *(path.name.removesuffix("-values.yaml") for path in CI_VALUES)]
