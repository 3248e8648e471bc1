"""values.schema.json rejects bad values naming the key; generated docs are fresh; image and chart agree."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.helm.chart_render import CHART, REPOSITORY, Helm, HelmFailed

INVALID_VALUES = Path(__file__).with_name("invalid-values.yaml")


def test_invalid_values_file_is_rejected_naming_the_key(helm: Helm) -> None:
    with pytest.raises(HelmFailed) as caught:
        helm.template([INVALID_VALUES])
    message = caught.value.stderr
    assert "values don't meet the specifications of the schema" in message
    assert "at '/standalone': additional properties 'replica' not allowed" in message


@pytest.mark.parametrize(
    ("set_values", "expected"),
    [
        (["standalone.replicas=three"], "at '/standalone/replicas': got string, want integer"),
        (["ports.grpc=70000"], "at '/ports/grpc'"),
        (["image.pullPolicy=Sometimes"], "at '/image/pullPolicy'"),
        (["unknownTopLevel=1"], "additional properties 'unknownTopLevel' not allowed"),
        # A sidecar setting that does not exist, and one of the wrong type (from settings.py).
        (
            ["config.batching.max_wait=2"],
            "at '/config/batching': additional properties 'max_wait' not allowed",
        ),
        (["config.batching.max_wait_ms=fast"], "at '/config/batching/max_wait_ms': got string, want number"),
        # Keys the chart owns (they depend on the pod layout) are refused in config.
        (["config.server.port=6000"], "at '/config/server': additional properties 'port' not allowed"),
        (["config.rewards.spool_dir=/x"], "additional properties 'spool_dir' not allowed"),
        (["apiKeys[0].env=OPENAI_API_KEY"], "at '/apiKeys/0': missing properties"),
        (["metrics.serviceMonitor.interval=soon"], "at '/metrics/serviceMonitor/interval'"),
    ],
)
def test_schema_errors_name_the_key(helm: Helm, set_values: list[str], expected: str) -> None:
    with pytest.raises(HelmFailed) as caught:
        helm.template(set_values=set_values)
    assert expected in caught.value.stderr


def test_generated_schema_and_readme_table_are_fresh() -> None:
    result = subprocess.run(
        [sys.executable, str(REPOSITORY / "helm" / "generate_docs.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_readme_documents_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for key in values:
        assert f"| `{key}" in readme, f"README.md has no row for {key}"


def test_image_tag_follows_the_chart_and_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    project = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]
    assert values["image"]["tag"] == chart["appVersion"] == project["version"]


def test_dockerfile_matches_the_chart_and_the_entry_points() -> None:
    dockerfile = (REPOSITORY / "Dockerfile").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    scripts = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]["scripts"]
    # The image runs as the uid/gid the chart's security contexts demand.
    (user,) = re.findall(r"^USER (\d+):(\d+)$", dockerfile, flags=re.MULTILINE)
    assert (int(user[0]), int(user[1])) == (
        values["securityContext"]["runAsUser"],
        values["securityContext"]["runAsGroup"],
    )
    assert int(user[0]) != 0
    # Both processes the chart starts exist in the package, and the image build runs them.
    assert {"barp-sidecar", "barp-trainer"} <= set(scripts)
    for script in ("barp-sidecar", "barp-trainer"):
        assert f"{script} --help" in dockerfile
    assert 'CMD ["barp-sidecar", "serve"]' in dockerfile
    # Declared ports are the chart's.
    (exposed,) = re.findall(r"^EXPOSE (.+)$", dockerfile, flags=re.MULTILINE)
    ports = values["ports"]
    assert {int(p) for p in exposed.split()} == {
        ports["grpc"],
        ports["admin"],
        ports["metrics"],
        ports["trainer"],
    }
    # torch comes from the CPU (or chosen CUDA) wheel index, as an extra index.
    assert "ARG TORCH_VARIANT=cpu" in dockerfile
    assert '--extra-index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}"' in dockerfile


def test_dockerignore_keeps_only_what_pip_install_needs() -> None:
    lines = [
        line for line in (REPOSITORY / ".dockerignore").read_text().splitlines() if line and line[0] != "#"
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = set(re.findall(r"^COPY (?!--from)(.+?) \S+$", (REPOSITORY / "Dockerfile").read_text(), re.M))
    copied_paths = {path for entry in copied for path in entry.split()}
    assert copied_paths == allowed


def test_hadolint_passes(tmp_path: Path) -> None:
    hadolint = REPOSITORY / ".tools" / "bin" / "hadolint"
    if not hadolint.exists():
        pytest.skip("no hadolint: run `bash .ci/install-helm.sh` (puts the pinned hadolint in .tools/bin)")
    result = subprocess.run(
        [str(hadolint), str(REPOSITORY / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
