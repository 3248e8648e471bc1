"""Checkpoint round-trip and every way a checkpoint can be bad: each raises CheckpointError naming it."""

import json

import pytest
import torch

from barp_sidecar.errors import CheckpointError
from barp_sidecar.policy.checkpoint import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    CheckpointStore,
    EncoderIdentity,
    PolicyManifest,
    load_checkpoint,
    save_checkpoint,
)
from barp_sidecar.policy.network import PolicyArchitecture, PolicyNetwork

ARMS = ("small", "medium", "large")
ENCODER = EncoderIdentity("hash:16", 16, 256, "tail")


def _manifest(architecture: PolicyArchitecture, version: int = 1) -> PolicyManifest:
    return PolicyManifest(
        version=version, models=ARMS, encoder=ENCODER, tau_usd=0.005, architecture=architecture
    )


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    architecture = PolicyArchitecture(embedding_dim=16, num_models=3, head_hidden=8, conditioning="film")
    network = PolicyNetwork(architecture)
    directory = tmp_path / "v1"
    manifest = save_checkpoint(directory, network, _manifest(architecture))
    return directory, network, manifest


def test_round_trip_gives_identical_outputs_and_manifest(saved):
    directory, network, manifest = saved
    loaded = load_checkpoint(directory, expected_models=ARMS, expected_encoder=ENCODER)
    assert loaded.manifest == manifest
    assert len(manifest.weights_sha256) == 64
    x, w = torch.randn(5, 16), torch.rand(5)
    network.eval()
    assert torch.equal(loaded.network(x, w), network(x, w))


def test_existing_directory_is_never_overwritten(saved):
    directory, network, manifest = saved
    with pytest.raises(CheckpointError, match="already exists"):
        save_checkpoint(directory, network, manifest)


def test_corrupted_weights_fail_the_sha256_check(saved):
    directory, _, _ = saved
    weights = directory / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_checkpoint(directory)


def _rewrite_manifest(directory, **changes):
    path = directory / MANIFEST_FILE
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_truncated_weights_with_matching_digest_are_unreadable(saved):
    directory, _, _ = saved
    weights = directory / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])
    from barp_sidecar.policy.checkpoint import sha256_file

    _rewrite_manifest(directory, weights_sha256=sha256_file(weights))
    with pytest.raises(CheckpointError, match="unreadable safetensors"):
        load_checkpoint(directory)


def test_missing_files_are_named(saved):
    directory, _, _ = saved
    (directory / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match=f"{WEIGHTS_FILE}: missing"):
        load_checkpoint(directory)
    (directory / MANIFEST_FILE).unlink()
    with pytest.raises(CheckpointError, match=f"{MANIFEST_FILE}: missing"):
        load_checkpoint(directory)


def test_truncated_manifest_is_not_valid_json(saved):
    directory, _, _ = saved
    path = directory / MANIFEST_FILE
    path.write_text(path.read_text()[:50])
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(directory)


def test_manifest_missing_a_field_is_malformed(saved):
    directory, _, _ = saved
    path = directory / MANIFEST_FILE
    data = json.loads(path.read_text())
    del data["tau_usd"]
    path.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"malformed manifest.*tau_usd"):
        load_checkpoint(directory)


def test_mismatched_arms_and_encoder_are_rejected(saved):
    directory, _, _ = saved
    with pytest.raises(CheckpointError, match="model list"):
        load_checkpoint(directory, expected_models=("small", "large", "medium"))
    with pytest.raises(CheckpointError, match="trained with encoder"):
        load_checkpoint(directory, expected_encoder=EncoderIdentity("hash:16", 16, 256, "head"))


def test_weights_that_do_not_fit_the_architecture_are_rejected(saved):
    directory, _, _ = saved
    architecture = json.loads((directory / MANIFEST_FILE).read_text())["architecture"]
    _rewrite_manifest(directory, architecture={**architecture, "head_hidden": 12})
    with pytest.raises(CheckpointError, match="do not fit the architecture"):
        load_checkpoint(directory)


def test_unsupported_format_version(saved):
    directory, _, _ = saved
    _rewrite_manifest(directory, format_version=99)
    with pytest.raises(CheckpointError, match="unsupported format_version 99"):
        load_checkpoint(directory)


def test_store_publishes_versions_and_latest(tmp_path):
    architecture = PolicyArchitecture(embedding_dim=16, num_models=3, head_hidden=8)
    store = CheckpointStore(tmp_path / "store")
    assert store.latest_version() is None
    store.publish(PolicyNetwork(architecture), _manifest(architecture, 1))
    store.publish(PolicyNetwork(architecture), _manifest(architecture, 2))
    assert store.versions() == [1, 2]
    assert store.latest_version() == 2
    store.set_latest(1)
    assert load_checkpoint(store.path(store.latest_version())).version == 1
    with pytest.raises(CheckpointError, match="already published"):
        store.publish(PolicyNetwork(architecture), _manifest(architecture, 2))
