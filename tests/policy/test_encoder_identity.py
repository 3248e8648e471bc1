"""Which encoder backends a policy accepts: the manifest's int8 list, its JSON form, and hot swaps."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from barp_sidecar.errors import CheckpointError
from barp_sidecar.policy.checkpoint import EncoderIdentity, load_checkpoint, read_manifest
from barp_sidecar.policy.registry import PolicyRegistry
from tests.support.sidecar import make_tiny_checkpoint

SHA_A, SHA_B = "a" * 64, "b" * 64


def test_fp32_backends_need_no_validation_int8_needs_its_file() -> None:
    identity = EncoderIdentity("m", 384, 256, "tail", int8_validated_sha256=(SHA_A,))
    assert identity.serving_problem("torch", "") is None
    assert identity.serving_problem("onnx", SHA_B) is None
    assert identity.serving_problem("onnx-int8", SHA_A) is None
    problem = identity.serving_problem("onnx-int8", SHA_B)
    assert problem is not None and "not validated" in problem and SHA_B[:12] in problem
    assert identity.core() == EncoderIdentity("m", 384, 256, "tail")


def _with_int8(directory: Path, shas: object) -> None:
    path = directory / "manifest.json"
    data = json.loads(path.read_text())
    data["encoder"]["int8_validated_sha256"] = shas
    path.write_text(json.dumps(data))


def test_the_manifest_keeps_the_list_and_old_manifests_read_as_empty(tmp_path: Path) -> None:
    directory = make_tiny_checkpoint(tmp_path / "v1")
    data = json.loads((directory / "manifest.json").read_text())
    del data["encoder"]["int8_validated_sha256"]  # a manifest written before the field existed
    (directory / "manifest.json").write_text(json.dumps(data))
    assert read_manifest(directory).encoder.int8_validated_sha256 == ()
    _with_int8(directory, [SHA_A])
    assert read_manifest(directory).encoder.int8_validated_sha256 == (SHA_A,)
    _with_int8(directory, SHA_A)
    with pytest.raises(CheckpointError, match="int8_validated_sha256"):
        read_manifest(directory)


def test_a_swap_keeps_the_serving_int8_file_validated(tmp_path: Path) -> None:
    first = make_tiny_checkpoint(tmp_path / "v1", version=1)
    _with_int8(first, [SHA_A])
    validated = make_tiny_checkpoint(tmp_path / "v2", version=2)
    _with_int8(validated, [SHA_B, SHA_A])
    unvalidated = make_tiny_checkpoint(tmp_path / "v3", version=3)
    registry = PolicyRegistry(load_checkpoint(first), ("onnx-int8", SHA_A))
    registry.swap(load_checkpoint(validated))  # another list, same embeddings: accepted
    with pytest.raises(CheckpointError, match="not validated"):
        registry.swap(load_checkpoint(unvalidated))
    assert registry.current().version == 2
    # On fp32 backends the list does not matter.
    PolicyRegistry(load_checkpoint(first), ("onnx", SHA_B)).swap(load_checkpoint(unvalidated))
    with pytest.raises(CheckpointError, match="not validated"):
        PolicyRegistry(load_checkpoint(unvalidated), ("onnx-int8", SHA_A))


def test_the_identity_check_on_load_ignores_the_list(tmp_path: Path) -> None:
    directory = make_tiny_checkpoint(tmp_path / "v1")
    _with_int8(directory, [SHA_A])
    plain = read_manifest(directory).encoder.core()
    assert load_checkpoint(directory, expected_encoder=plain).version == 1
    with pytest.raises(CheckpointError, match="encoder"):
        load_checkpoint(directory, expected_encoder=dataclasses.replace(plain, max_seq_length=128))
