"""The ONNX Runtime encoder backends: export, verification, agreement with torch, and start-up errors.

Exports the shipped all-MiniLM-L6-v2 once per session into a temporary directory (tens of seconds).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from barp_sidecar.errors import ConfigError
from barp_sidecar.policy import onnx_fused
from barp_sidecar.policy.backends import (
    BackendChoice,
    load_backend_encoder,
    resolve_backend,
)
from barp_sidecar.policy.checkpoint import EncoderIdentity, read_manifest
from barp_sidecar.policy.encoder import BUILTIN_MODEL_ID, builtin_model_path
from barp_sidecar.policy.loading import load_encoder
from barp_sidecar.policy.onnx_encoder import OnnxEncoder
from barp_sidecar.policy.onnx_export import (
    FP32_FILE,
    INT8_FILE,
    RECORD_FILE,
    OnnxModel,
    OnnxModelError,
    OnnxRuntimeUnsupported,
    ensure_onnx_model,
    file_sha256,
    model_directory,
)
from barp_sidecar.policy.openvino_export import GRAPH_FILE, WEIGHTS_FILE
from barp_sidecar.settings import EncoderBackendSettings, PolicySettings
from tests.support.encoder_inputs import CPU, PROMPTS, SETTINGS

pytestmark = pytest.mark.real_encoder


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ONNX directory with both files, exported once for the whole session."""
    onnx_dir = tmp_path_factory.mktemp("onnx")
    ensure_onnx_model(Path(builtin_model_path()), onnx_dir, "onnx-int8")
    return onnx_dir


@pytest.fixture(scope="session")
def torch_embeddings() -> np.ndarray:
    encoder = load_backend_encoder(SETTINGS, BackendChoice("torch", Path("unused")))
    return encoder.encode(PROMPTS)


def test_fp32_onnx_computes_what_torch_computes(exported: Path, torch_embeddings: np.ndarray) -> None:
    encoder = load_backend_encoder(SETTINGS, BackendChoice("onnx", exported))
    assert isinstance(encoder, OnnxEncoder) and encoder.backend == "onnx"
    onnx = encoder.encode(PROMPTS, batch_size=4)  # one padded batch of very different lengths
    assert onnx.shape == torch_embeddings.shape == (4, 384)
    assert np.abs(onnx - torch_embeddings).max() < 1e-5
    # An empty batch is not an error, as with torch (the fast tokenizer raised IndexError on it).
    torch_encoder = load_backend_encoder(SETTINGS, BackendChoice("torch", Path("unused")))
    assert encoder.encode([]).shape == torch_encoder.encode([]).shape == (0, 384)
    assert encoder.token_ids(PROMPTS)[2][-1] == encoder.token_ids(["Which planet is the largest?"])[0][-1]


def test_the_fp32_graph_is_fused_by_onnx_runtime(exported: Path) -> None:
    import onnx

    model = ensure_onnx_model(Path(builtin_model_path()), exported, "onnx")
    operators = [node.op_type for node in onnx.load(str(model.path), load_external_data=False).graph.node]
    assert operators.count("EmbedLayerNormalization") == 1
    assert operators.count("Attention") == 6 and operators.count("BiasGelu") == 6
    assert operators.count("SkipLayerNormalization") == 12


def test_an_export_that_differs_from_torch_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The verification can fail: with a zero tolerance the (tiny, ~2e-7) difference is too much."""
    monkeypatch.setattr(onnx_fused, "VERIFY_MAX_ABS_DIFF", 0.0)
    out = tmp_path / FP32_FILE
    with pytest.raises(onnx_fused.FusedExportError, match="differs from the torch model by") as caught:
        onnx_fused.export_fused_fp32(Path(builtin_model_path()), out)
    assert str(out) in str(caught.value)


def test_export_onnx_of_a_model_it_cannot_fuse_exits_2_naming_the_directory(tmp_path: Path) -> None:
    import subprocess
    import sys

    source = Path(builtin_model_path())
    model = tmp_path / "not-bert"
    shutil.copytree(source, model, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    (model / "model.safetensors").symlink_to(source / "model.safetensors")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "hidden_act": "relu"}))
    command = [sys.executable, "-m", "barp_sidecar.cli", "export-onnx", "--onnx-dir", str(tmp_path / "onnx"),
               "--encoder-model", str(model)]  # fmt: skip
    repository = Path(__file__).resolve().parents[2]
    result = subprocess.run(command, cwd=repository, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("encoder.onnx_dir:")]
    assert str(model) in line and "not a BERT sentence encoder" in line


def test_int8_stays_close_to_torch(exported: Path, torch_embeddings: np.ndarray) -> None:
    encoder = load_backend_encoder(SETTINGS, BackendChoice("onnx-int8", exported))
    int8 = encoder.encode(PROMPTS)
    cosine = (int8 * torch_embeddings).sum(axis=1)
    assert cosine.min() > 0.97, cosine
    assert np.allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-5)
    assert encoder.model_sha256 == file_sha256(encoder._model.path)  # type: ignore[attr-defined]


def test_a_verified_model_is_reused_without_export(exported: Path) -> None:
    exports: list[str] = []
    model = ensure_onnx_model(Path(builtin_model_path()), exported, "onnx", exports.append)
    assert exports == []
    record = json.loads((model.path.parent / RECORD_FILE).read_text())
    assert record["files"][FP32_FILE] == model.sha256 == file_sha256(model.path)


def test_a_corrupt_model_is_re_exported(exported: Path, tmp_path: Path) -> None:
    source = Path(builtin_model_path())
    directory, _ = model_directory(source, exported)
    copy = tmp_path / "onnx"
    shutil.copytree(directory, copy / directory.name)
    int8 = copy / directory.name / INT8_FILE
    good = file_sha256(int8)
    with int8.open("r+b") as handle:
        handle.seek(4096)
        handle.write(b"\x00corrupt\x00")
    exports: list[str] = []
    model = ensure_onnx_model(source, copy, "onnx-int8", exports.append)
    assert len(exports) == 1 and str(int8) in exports[0] and "sha256" in exports[0]
    assert model.sha256 == good == file_sha256(int8)  # quantisation is deterministic


def test_a_corrupt_model_that_cannot_be_re_exported_exits_2_naming_the_file(
    exported: Path, tmp_path: Path
) -> None:
    """export-onnx on a corrupt fp32 file whose re-export cannot be written (the process may write files
    of at most 1 MiB, as on a full disk): exit 2, one line naming the file; nothing else is replaced."""
    import resource
    import subprocess
    import sys

    directory, _ = model_directory(Path(builtin_model_path()), exported)
    copy = tmp_path / "onnx"
    shutil.copytree(directory, copy / directory.name)
    fp32 = copy / directory.name / FP32_FILE
    with fp32.open("r+b") as handle:
        handle.seek(4096)
        handle.write(b"\x00corrupt\x00")
    corrupt = file_sha256(fp32)

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    command = [sys.executable, "-m", "barp_sidecar.cli", "export-onnx", "--onnx-dir", str(copy)]
    repository = Path(__file__).resolve().parents[2]
    result = subprocess.run(command, cwd=repository, capture_output=True, text=True, timeout=300,
                            check=False, preexec_fn=small_files)  # fmt: skip
    assert result.returncode == 2, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("encoder.onnx_dir:")]
    assert str(fp32) in line and "corrupt" in line and "exporting it failed" in line
    assert file_sha256(fp32) == corrupt  # not half-overwritten
    assert sorted(p.name for p in fp32.parent.iterdir()) == sorted([FP32_FILE, INT8_FILE, RECORD_FILE])


def test_a_missing_model_that_cannot_be_exported_names_the_file(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with pytest.raises(OnnxModelError, match="missing; exporting it failed") as caught:
        ensure_onnx_model(Path(builtin_model_path()), blocker / "onnx", "onnx-int8")
    assert INT8_FILE in str(caught.value)
    identity = EncoderIdentity(BUILTIN_MODEL_ID, 384, 256, "tail")
    with pytest.raises(ConfigError) as config_error:
        load_encoder(
            identity,
            PolicySettings(),
            CPU,
            EncoderBackendSettings(backend="onnx", onnx_dir=str(blocker / "onnx")),
        )
    assert config_error.value.key == "encoder.onnx_dir" and FP32_FILE in str(config_error.value)
    # The default (auto = openvino on the CPU) never falls back to another encoder when its files cannot
    # be produced.
    with pytest.raises(ConfigError) as auto_error:
        load_encoder(identity, PolicySettings(), CPU, EncoderBackendSettings(onnx_dir=str(blocker / "onnx")))
    assert auto_error.value.key == "encoder.onnx_dir" and GRAPH_FILE in str(auto_error.value)


def test_auto_serves_fp32_openvino_when_the_listed_int8_file_is_another_machines(exported: Path) -> None:
    """A manifest validated with an int8 file this machine did not export (other library versions): auto
    serves the fp32 backend (openvino), the same function the policy was trained with, and says why."""
    other = EncoderIdentity(BUILTIN_MODEL_ID, 384, 256, "tail", int8_validated_sha256=("0" * 64,))
    with capture_logs() as logs:
        encoder = load_encoder(other, PolicySettings(), CPU, EncoderBackendSettings("auto", str(exported)))
    assert getattr(encoder, "backend", None) == "openvino"
    (warning,) = [entry for entry in logs if entry["event"] == "encoder_backend_auto_uses_fp32"]
    assert warning["backend"] == "openvino"
    assert INT8_FILE in warning["reason"] or "not validated" in warning["reason"]


def test_an_onnx_runtime_without_the_operators_fails_at_start(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("NoSuchEncoderOp", ["input_ids", "attention_mask"], ["sentence_embedding"],
                            domain="com.example.missing")  # fmt: skip
    graph = helper.make_graph(
        [node],
        "missing-op",
        [
            helper.make_tensor_value_info(n, TensorProto.INT64, ["b", "l"])
            for n in ("input_ids", "attention_mask")
        ],
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["b", 384])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.example.missing", 1)]
    )
    # A verified file (its sha256 matches export.json) that this onnxruntime cannot run.
    directory, source = model_directory(Path(builtin_model_path()), tmp_path / "onnx")
    directory.mkdir(parents=True)
    path = directory / FP32_FILE
    onnx.save(model, path)
    record = {**source, "files": {FP32_FILE: file_sha256(path)}}
    (directory / RECORD_FILE).write_text(json.dumps(record))
    encoder = OnnxEncoder(SETTINGS, OnnxModel("onnx", path, file_sha256(path)))
    with pytest.raises(OnnxRuntimeUnsupported, match=r"onnxruntime .* cannot run it") as caught:
        encoder.load()
    assert str(path) in str(caught.value)
    identity = EncoderIdentity(BUILTIN_MODEL_ID, 384, 256, "tail")
    settings = EncoderBackendSettings(backend="onnx", onnx_dir=str(tmp_path / "onnx"))
    with pytest.raises(ConfigError) as config_error:
        load_encoder(identity, PolicySettings(), CPU, settings)
    assert config_error.value.key == "encoder.backend" and str(path) in str(config_error.value)


def test_backend_resolution() -> None:
    assert resolve_backend("auto", "cpu", int8_validated=True) == "onnx-int8"
    assert resolve_backend("auto", "cpu", int8_validated=False) == "openvino"
    assert resolve_backend("auto", "cuda", int8_validated=True) == "torch"
    assert resolve_backend("auto", "cuda:1", int8_validated=False) == "torch"
    assert resolve_backend("onnx", "cpu") == "onnx"
    with pytest.raises(ValueError, match="CPU only"):
        resolve_backend("onnx-int8", "cuda:0")
    with pytest.raises(ValueError, match="one of"):
        resolve_backend("tensorrt", "cpu")


def test_int8_serves_only_policies_validated_with_that_file(exported: Path) -> None:
    unvalidated = EncoderIdentity(BUILTIN_MODEL_ID, 384, 256, "tail")
    onnx_dir = str(exported)
    with pytest.raises(ConfigError) as caught:
        load_encoder(unvalidated, PolicySettings(), CPU, EncoderBackendSettings("onnx-int8", onnx_dir))
    assert caught.value.key == "encoder.backend" and "not validated" in str(caught.value)
    # auto picks the fp32 openvino backend for it: the same function, it needs no validation.
    auto = load_encoder(unvalidated, PolicySettings(), CPU, EncoderBackendSettings("auto", onnx_dir))
    assert getattr(auto, "backend", None) == "openvino"
    fp32 = load_encoder(unvalidated, PolicySettings(), CPU, EncoderBackendSettings("onnx", onnx_dir))
    assert getattr(fp32, "backend", None) == "onnx"
    sha = file_sha256(model_directory(Path(builtin_model_path()), exported)[0] / INT8_FILE)
    validated = EncoderIdentity(BUILTIN_MODEL_ID, 384, 256, "tail", int8_validated_sha256=(sha,))
    int8 = load_encoder(validated, PolicySettings(), CPU, EncoderBackendSettings("auto", onnx_dir))
    assert getattr(int8, "backend", None) == "onnx-int8"


def test_the_shipped_policy_serves_on_fp32_openvino_by_default(exported: Path) -> None:
    """Its int8 agreement was 94.5-98.7% < 99.5% (docs/benchmarks.md): it lists no int8 file, so auto is
    the fp32 openvino backend (100% the same decisions, 2.1-2.3x torch's throughput in the sidecar), onnx
    and torch are one setting away, and onnx-int8 is refused."""
    from barp_sidecar.policy.builtin import builtin_policy_dir

    identity = read_manifest(builtin_policy_dir()).encoder
    assert identity.int8_validated_sha256 == ()
    onnx_dir = str(exported)
    auto = load_encoder(identity, PolicySettings(), CPU, EncoderBackendSettings("auto", onnx_dir))
    assert getattr(auto, "backend", None) == "openvino"
    onnx_encoder = load_encoder(identity, PolicySettings(), CPU, EncoderBackendSettings("onnx", onnx_dir))
    assert getattr(onnx_encoder, "backend", None) == "onnx"
    torch_encoder = load_encoder(identity, PolicySettings(), CPU, EncoderBackendSettings("torch", onnx_dir))
    assert getattr(torch_encoder, "backend", "torch") == "torch"
    with pytest.raises(ConfigError, match="not validated"):
        load_encoder(identity, PolicySettings(), CPU, EncoderBackendSettings("onnx-int8", onnx_dir))


def test_export_onnx_command_prints_the_verified_files(exported: Path) -> None:
    import subprocess
    import sys

    command = [sys.executable, "-m", "barp_sidecar.cli", "export-onnx", "--onnx-dir", str(exported)]
    repository = Path(__file__).resolve().parents[2]
    result = subprocess.run(command, cwd=repository, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    files = json.loads(result.stdout)
    assert sorted(files) == sorted([FP32_FILE, INT8_FILE, GRAPH_FILE, WEIGHTS_FILE])  # OpenVINO's IR too
    for name in files:
        assert files[name]["sha256"] == file_sha256(Path(files[name]["path"]))
        assert Path(files[name]["path"]).parent.parent == exported
    # The shipped policy does not accept the int8 file: --require-validated says so and fails.
    result = subprocess.run(
        [*command, "--require-validated"], cwd=repository, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1 and "not validated" in result.stderr
