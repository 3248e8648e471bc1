"""The OpenVINO encoder backend: conversion, verification, agreement with torch, its cache, start-up errors,
and a real sidecar serving Route on it.

Converts the shipped all-MiniLM-L6-v2 once per session into a temporary directory (seconds).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from barp_sidecar.errors import ConfigError
from barp_sidecar.gen.barp.v1 import router_pb2, router_pb2_grpc
from barp_sidecar.policy import onnx_fused
from barp_sidecar.policy.backends import BackendChoice, load_backend_encoder, resolve_backend
from barp_sidecar.policy.checkpoint import EncoderIdentity, PolicyManifest, read_manifest, save_checkpoint
from barp_sidecar.policy.device import DevicePlacement
from barp_sidecar.policy.encoder import BUILTIN_MODEL_ID, builtin_model_path
from barp_sidecar.policy.loading import load_encoder
from barp_sidecar.policy.network import PolicyArchitecture, PolicyNetwork
from barp_sidecar.policy.onnx_export import (
    RECORD_FILE,
    OnnxModelError,
    OnnxRuntimeUnsupported,
    file_sha256,
    model_directory,
    write_record,
)
from barp_sidecar.policy.openvino_encoder import OpenVinoEncoder
from barp_sidecar.policy.openvino_export import (
    GRAPH_FILE,
    WEIGHTS_FILE,
    OpenVinoModel,
    ensure_openvino_model,
)
from barp_sidecar.settings import EncoderBackendSettings, PolicySettings, load_settings
from tests.support.encoder_inputs import CPU, PROMPTS, SETTINGS
from tests.support.sidecar import running_sidecar, sidecar_settings

pytestmark = pytest.mark.real_encoder

IDENTITY = EncoderIdentity(BUILTIN_MODEL_ID, 384, 256, "tail")
SOURCE = Path(builtin_model_path())


@pytest.fixture(scope="session")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache directory holding the verified IR, converted once for the whole session."""
    onnx_dir = tmp_path_factory.mktemp("openvino")
    ensure_openvino_model(SOURCE, onnx_dir)
    return onnx_dir


def copy_of(converted: Path, tmp_path: Path) -> Path:
    """A private copy of the converted cache directory (a test may corrupt its files)."""
    directory, _ = model_directory(SOURCE, converted)
    copy = tmp_path / "cache"
    shutil.copytree(directory, copy / directory.name)
    return copy


def corrupt(path: Path) -> None:
    with path.open("r+b") as handle:
        handle.seek(min(4096, path.stat().st_size // 2))
        handle.write(b"\x00corrupt\x00")


def test_openvino_computes_what_torch_computes(converted: Path) -> None:
    torch_embeddings = load_backend_encoder(SETTINGS, BackendChoice("torch", Path("unused"))).encode(PROMPTS)
    encoder = load_backend_encoder(SETTINGS, BackendChoice("openvino", converted, intra_op_threads=1))
    assert isinstance(encoder, OpenVinoEncoder) and encoder.backend == "openvino"
    embeddings = encoder.encode(PROMPTS, batch_size=4)  # one padded batch of very different lengths
    assert embeddings.shape == torch_embeddings.shape == (4, 384)
    assert np.abs(embeddings - torch_embeddings).max() <= 1e-5
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-6)
    one_by_one = np.vstack([encoder.encode([prompt]) for prompt in PROMPTS])  # no padding at all
    assert np.abs(one_by_one - torch_embeddings).max() <= 1e-5
    assert encoder.encode_token_ids([]).shape == (0, 384)
    assert encoder.encode([]).shape == (0, 384)  # as torch's: an empty batch is not an error


def test_the_ir_is_fp32_and_recorded_in_export_json(converted: Path) -> None:
    exports: list[str] = []
    model = ensure_openvino_model(SOURCE, converted, exports.append)
    assert exports == []  # verified: reused without converting again
    weights = model.graph_path.with_name(WEIGHTS_FILE)
    record = json.loads((model.graph_path.parent / RECORD_FILE).read_text())
    assert record["files"] == {GRAPH_FILE: model.graph_sha256, WEIGHTS_FILE: model.weights_sha256}
    assert model.graph_sha256 == file_sha256(model.graph_path) and model.weights_sha256 == file_sha256(
        weights
    )
    assert "openvino" in record["libraries"]
    # The identity an embedding cache keys on covers the weights, which the graph file does not hold.
    assert OpenVinoModel(model.graph_path, model.graph_sha256, "0" * 64).sha256 != model.sha256
    # fp32 weights: at least 4 bytes per parameter of the 22.7M-parameter model (fp16 would be half).
    assert weights.stat().st_size > 4 * 22_000_000
    assert sorted(p.name for p in model.graph_path.parent.iterdir()) == [
        RECORD_FILE,
        WEIGHTS_FILE,
        GRAPH_FILE,
    ]


def test_a_conversion_that_differs_from_torch_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The verification can fail: with a zero tolerance the (tiny, ~2e-7) difference is too much, and
    nothing is written, not even the staging directory."""
    monkeypatch.setattr(onnx_fused, "VERIFY_MAX_ABS_DIFF", 0.0)
    with pytest.raises(OnnxModelError, match="differs from the torch model by") as caught:
        ensure_openvino_model(SOURCE, tmp_path / "cache")
    directory, _ = model_directory(SOURCE, tmp_path / "cache")
    assert f"{directory / GRAPH_FILE}: missing; exporting it failed" in str(caught.value)
    assert list(directory.iterdir()) == []


@pytest.mark.parametrize("name", [GRAPH_FILE, WEIGHTS_FILE])
def test_a_corrupt_or_missing_file_is_re_exported_to_the_same_bytes(
    converted: Path, tmp_path: Path, name: str
) -> None:
    copy = copy_of(converted, tmp_path)
    directory, _ = model_directory(SOURCE, copy)
    good = {n: file_sha256(directory / n) for n in (GRAPH_FILE, WEIGHTS_FILE)}
    corrupt(directory / name)
    exports: list[str] = []
    model = ensure_openvino_model(SOURCE, copy, exports.append)
    assert len(exports) == 1 and str(directory / name) in exports[0] and "sha256" in exports[0]
    # Conversion is deterministic: the same bytes as the first conversion.
    assert {GRAPH_FILE: model.graph_sha256, WEIGHTS_FILE: model.weights_sha256} == good
    (directory / name).unlink()
    exports.clear()
    assert ensure_openvino_model(SOURCE, copy, exports.append) == model
    assert exports == [f"{directory / name}: missing"]


def test_export_json_keeps_the_entries_of_the_other_exporter(tmp_path: Path) -> None:
    """The ONNX and OpenVINO exports record their files in one export.json: neither drops the other's."""
    source = {"recipe": 2, "weights_sha256": {"model.safetensors": "ab"}}
    write_record(tmp_path, source, {"model.onnx": "11", "model-int8.onnx": "22"})
    write_record(tmp_path, source, {GRAPH_FILE: "33", WEIGHTS_FILE: "44"})
    write_record(tmp_path, source, {"model-int8.onnx": "55"})
    record = json.loads((tmp_path / RECORD_FILE).read_text())
    assert record == {**source, "files": {"model.onnx": "11", "model-int8.onnx": "55", GRAPH_FILE: "33",
                                         WEIGHTS_FILE: "44"}}  # fmt: skip
    # A record of another source vouches for nothing.
    write_record(tmp_path, {**source, "recipe": 3}, {GRAPH_FILE: "66"})
    assert json.loads((tmp_path / RECORD_FILE).read_text())["files"] == {GRAPH_FILE: "66"}


def test_a_corrupt_file_that_cannot_be_re_exported_names_the_file(converted: Path, tmp_path: Path) -> None:
    """The directory cannot take the new files (the process may write at most 1 MiB per file, as on a full
    disk; chmod does not stop root): OnnxModelError naming the file, the old files untouched, nothing
    else left behind."""
    copy = copy_of(converted, tmp_path)
    directory, _ = model_directory(SOURCE, copy)
    corrupt(directory / WEIGHTS_FILE)
    before = {p.name: file_sha256(p) for p in directory.iterdir()}
    script = (
        "import resource, sys\n"
        "from pathlib import Path\n"
        "from barp_sidecar.policy.encoder import builtin_model_path\n"
        "from barp_sidecar.policy.onnx_export import OnnxModelError\n"
        "from barp_sidecar.policy.openvino_export import ensure_openvino_model\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))\n"
        "try:\n"
        "    ensure_openvino_model(Path(builtin_model_path()), Path(sys.argv[1]))\n"
        "except OnnxModelError as exc:\n"
        "    print(exc, file=sys.stderr)\n"
        "    sys.exit(2)\n"
    )
    repository = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", script, str(copy)], cwd=repository, capture_output=True,
                            text=True, timeout=300, check=False)  # fmt: skip
    assert result.returncode == 2, result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert (
        message.startswith(f"{directory / WEIGHTS_FILE}: sha256 does not match")
        and "exporting it failed" in message
    )
    assert {p.name: file_sha256(p) for p in directory.iterdir()} == before


def test_an_unwritable_cache_fails_start_naming_the_setting_and_the_file(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    settings = EncoderBackendSettings(backend="openvino", onnx_dir=str(blocker / "cache"))
    with pytest.raises(ConfigError) as caught:
        load_encoder(IDENTITY, PolicySettings(), CPU, settings)
    assert caught.value.key == "encoder.onnx_dir"
    assert f"{GRAPH_FILE}: missing; exporting it failed" in str(caught.value)


def test_an_ir_this_openvino_cannot_run_fails_at_start(tmp_path: Path) -> None:
    """A verified (sha256 matches export.json) graph that OpenVINO cannot compile: encoder.backend."""
    directory, source = model_directory(SOURCE, tmp_path / "cache")
    directory.mkdir(parents=True)
    (directory / GRAPH_FILE).write_text('<?xml version="1.0"?>\n<net name="broken" version="11"><layers>')
    (directory / WEIGHTS_FILE).write_bytes(b"")
    files = {name: file_sha256(directory / name) for name in (GRAPH_FILE, WEIGHTS_FILE)}
    write_record(directory, source, files)
    encoder = OpenVinoEncoder(SETTINGS, OpenVinoModel(directory / GRAPH_FILE, files[GRAPH_FILE], ""))
    with pytest.raises(OnnxRuntimeUnsupported, match=r"openvino .* cannot run it") as caught:
        encoder.load()
    assert str(directory / GRAPH_FILE) in str(caught.value)
    settings = EncoderBackendSettings(backend="openvino", onnx_dir=str(tmp_path / "cache"))
    with pytest.raises(ConfigError) as config_error:
        load_encoder(IDENTITY, PolicySettings(), CPU, settings)
    assert config_error.value.key == "encoder.backend" and str(directory / GRAPH_FILE) in str(
        config_error.value
    )


def test_openvino_is_a_cpu_only_backend_and_autos_fp32_choice_on_the_cpu() -> None:
    assert load_settings(None, {"BARP__ENCODER__BACKEND": "openvino"}).encoder.backend == "openvino"
    assert resolve_backend("openvino", "cpu") == "openvino"
    assert resolve_backend("auto", "cpu", int8_validated=False) == "openvino"
    assert resolve_backend("auto", "cpu", int8_validated=True) == "onnx-int8"
    assert resolve_backend("auto", "cuda:0", int8_validated=False) == "torch"
    with pytest.raises(ValueError, match="CPU only"):
        resolve_backend("openvino", "cuda:0")
    with pytest.raises(ValueError, match="one of"):
        resolve_backend("openvino-int8", "cpu")
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {"BARP__ENCODER__BACKEND": "openvino-int8"})
    assert caught.value.key == "encoder.backend"
    cuda = DevicePlacement("cuda:0", True)
    with pytest.raises(ConfigError) as config_error:
        load_encoder(IDENTITY, PolicySettings(), cuda, EncoderBackendSettings(backend="openvino"))
    assert config_error.value.key == "encoder.backend" and "CPU only" in str(config_error.value)


def test_openvino_neither_phones_home_nor_writes_to_home(tmp_path: Path) -> None:
    """``import openvino`` starts openvino_telemetry (writes $HOME/intel, posts to Google Analytics) unless
    a consent file says no; the backend imports it without. A fresh process (the telemetry is a
    process-wide singleton started at import) converts, loads and encodes with an empty HOME, outside any
    CI (the telemetry's other opt-out)."""
    home = tmp_path / "home"
    home.mkdir()
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from barp_sidecar.policy.encoder import EncoderSettings, builtin_model_path\n"
        "from barp_sidecar.policy.openvino_encoder import OpenVinoEncoder\n"
        "from barp_sidecar.policy.openvino_export import ensure_openvino_model\n"
        "model = ensure_openvino_model(Path(builtin_model_path()), Path(sys.argv[1]))\n"
        "encoder = OpenVinoEncoder(EncoderSettings(device='cpu'), model).load()\n"
        "assert encoder.encode(['hello']).shape == (1, 384)\n"
        "import openvino.tools.ovc.telemetry_utils as t\n"
        "assert t.tm.__name__ == 'openvino.tools.ovc.telemetry_stub', t.tm\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}
    env["HOME"] = str(home)
    repository = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "onnx")], cwd=repository, env=env,
                            capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert list((tmp_path / "onnx").glob(f"*/{GRAPH_FILE}")), "nothing was converted"
    assert list(home.iterdir()) == [], "openvino wrote to $HOME"


def test_openvino_is_imported_only_when_the_backend_loads() -> None:
    """Torch-only users pay nothing for it: building the sidecar's modules does not import it."""
    script = (
        "import sys\n"
        "import barp_sidecar.app, barp_sidecar.policy.backends, barp_sidecar.policy.loading\n"
        "import barp_sidecar.policy.openvino_encoder, barp_sidecar.policy.openvino_export\n"
        "assert 'openvino' not in sys.modules, 'openvino imported'\n"
    )
    repository = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", script], cwd=repository, capture_output=True, text=True,
                            timeout=120, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_the_shipped_policy_serves_on_openvino(converted: Path) -> None:
    """fp32: the same function as the encoder it was trained with, so no manifest entry is needed."""
    from barp_sidecar.policy.builtin import builtin_policy_dir

    identity = read_manifest(builtin_policy_dir()).encoder
    settings = EncoderBackendSettings(backend="openvino", onnx_dir=str(converted))
    encoder = load_encoder(identity, PolicySettings(cpu_threads=1), CPU, settings)
    assert getattr(encoder, "backend", None) == "openvino"


async def test_a_real_sidecar_on_openvino_answers_route(converted: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    architecture = PolicyArchitecture(embedding_dim=384, num_models=3, head_hidden=32, head_layers=1)
    models = ("cheap", "mid", "best")
    identity = EncoderIdentity(BUILTIN_MODEL_ID, 384, 128, "tail")
    manifest = PolicyManifest(
        version=5, models=models, encoder=identity, tau_usd=0.005, architecture=architecture
    )
    save_checkpoint(tmp_path / "v5", PolicyNetwork(architecture), manifest)
    settings = sidecar_settings(
        tmp_path / "v5",
        policy={"cpu_threads": 1},
        encoder={"backend": "openvino", "onnx_dir": str(converted)},
    )
    async with running_sidecar(settings) as app:
        assert app.inference is not None
        encoder = app.inference.encoder
        assert getattr(encoder, "backend", None) == "openvino"
        # policy.cpu_threads reaches OpenVINO (its own default is one thread per core).
        assert encoder._request.get_compiled_model().get_property("INFERENCE_NUM_THREADS") == 1  # type: ignore[attr-defined]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            long_prompt = "context " * 400 + "Which model should answer this?"
            responses = [
                await stub.Route(router_pb2.RouteRequest(prompt=p), timeout=60)
                for p in ("What is 2 + 2?", long_prompt)
            ]
    assert all(
        r.encoder == BUILTIN_MODEL_ID and r.policy_version == 5 and r.model in models for r in responses
    )
    assert all(abs(sum(p.probability for p in r.probabilities) - 1.0) < 1e-5 for r in responses)
