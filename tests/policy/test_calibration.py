"""The calibration set stored with a policy (issue 13 item 6): written with the checkpoint and recorded in the
manifest, verified on load (sha256, shape, unit norms), and the dry run before every load and swap runs the
policy on it; a policy that overflows on real embeddings is rejected even when random unit vectors pass.
Older manifests without one keep loading (random unit vectors, logged when such a version serves)."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from structlog.testing import capture_logs

from barp_sidecar.errors import CheckpointError, RejectionReason
from barp_sidecar.policy.calibration import (
    CALIBRATION_FILE,
    CalibrationSet,
    nonfinite_outputs,
    random_probe,
    select_calibration,
    write_calibration,
)
from barp_sidecar.policy.checkpoint import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    CheckpointStore,
    LoadedPolicy,
    load_checkpoint,
    replace_calibration,
    save_checkpoint,
    sha256_file,
)
from barp_sidecar.policy.manager import PolicyManager
from barp_sidecar.policy.registry import PolicyRegistry
from barp_sidecar.policy.watcher import DirectoryPolicyWatcher
from tests.support.sidecar import make_tiny_checkpoint, tiny_calibration


def overflowing_on_real_embeddings(policy: LoadedPolicy, version: int) -> LoadedPolicy:
    """Finite weights (1e38) on the one input coordinate the calibration embeddings use most: random unit
    vectors are small there and pass, the real prompt embeddings overflow the first layer."""
    assert policy.calibration is not None
    embeddings = policy.calibration.embeddings
    row, column = divmod(int(embeddings.abs().argmax()), embeddings.shape[1])
    network = copy.deepcopy(policy.network)
    with torch.no_grad():
        network.hidden_layers[0].weight[:, column] = 1e38 * float(embeddings[row, column].sign())
    manifest = dataclasses.replace(policy.manifest, version=version)
    return LoadedPolicy(manifest, network, policy.directory, policy.calibration)


def test_the_calibration_set_is_stored_hashed_and_loaded_back(tmp_path: Path) -> None:
    directory = make_tiny_checkpoint(tmp_path / "v1")
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    entry = manifest["calibration"]
    assert entry["file"] == CALIBRATION_FILE and entry["sha256"] == sha256_file(directory / CALIBRATION_FILE)
    loaded = load_checkpoint(directory)
    expected = tiny_calibration()
    assert loaded.calibration is not None and entry["count"] == len(expected.embeddings) == 6
    assert torch.equal(loaded.calibration.embeddings, expected.embeddings)
    assert loaded.calibration.preference_weights.tolist() == [0.0, 0.5, 1.0]
    assert loaded.manifest.calibration is not None and loaded.manifest.calibration.count == 6


def test_a_manifest_without_one_loads_on_random_vectors_and_is_logged_when_it_serves(tmp_path: Path) -> None:
    old = make_tiny_checkpoint(tmp_path / "v1", calibrated=False)
    assert "calibration" not in json.loads((old / MANIFEST_FILE).read_text())
    assert not (old / CALIBRATION_FILE).exists()
    with capture_logs() as logs:
        first = load_checkpoint(old)
        load_checkpoint(old)
    assert first.calibration is None and first.manifest.calibration is None
    assert logs == [], "loading alone is silent (decide prints JSON on stdout)"
    calibrated = load_checkpoint(make_tiny_checkpoint(tmp_path / "v2", version=2))
    with capture_logs() as logs:
        registry = PolicyRegistry(first)  # starts serving: logged
        registry.swap(calibrated)  # has a set: nothing to say
        registry.swap(first)  # serves again: logged again, once
    missing = [e for e in logs if e["event"] == "policy_calibration_missing"]
    assert [(e["version"], e["directory"], e["log_level"]) for e in missing] == [(1, str(old), "warning")] * 2


def test_huge_weights_that_random_vectors_miss_are_rejected_on_the_calibration_set(tmp_path: Path) -> None:
    good = load_checkpoint(make_tiny_checkpoint(tmp_path / "v1"))
    bad = overflowing_on_real_embeddings(good, 2)
    assert nonfinite_outputs(bad.network, *random_probe(32)) == 0, "the random-vector dry run passes it"
    save_checkpoint(tmp_path / "v2", bad.network, bad.manifest, bad.calibration)
    with pytest.raises(CheckpointError) as raised:
        load_checkpoint(tmp_path / "v2")
    assert raised.value.reason is RejectionReason.NON_FINITE
    message = str(raised.value)
    assert str(tmp_path / "v2" / WEIGHTS_FILE) in message and CALIBRATION_FILE in message
    assert "w_q [0.0, 0.5, 1.0]" in message


def _record_calibration_sha(directory: Path) -> None:
    """Make the manifest's calibration sha256 match the file (so the checks after the sha256 run)."""
    manifest_path = directory / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest["calibration"]["sha256"] = sha256_file(directory / CALIBRATION_FILE)
    manifest_path.write_text(json.dumps(manifest))


def _rewrite_calibration(directory: Path, calibration: CalibrationSet, *, fix_sha: bool = True) -> None:
    write_calibration(directory / CALIBRATION_FILE, calibration)
    if fix_sha:
        _record_calibration_sha(directory)


def _unit_rows(rows: int, dim: int) -> torch.Tensor:
    return torch.nn.functional.normalize(
        torch.randn(rows, dim, generator=torch.Generator().manual_seed(3)), dim=1
    )


@pytest.mark.parametrize(
    ("fault", "reason", "needle"),
    [
        ("sha", RejectionReason.SHA256_MISMATCH, "sha256 mismatch"),
        ("missing", RejectionReason.MISSING_FILES, "missing"),
        ("dim", RejectionReason.CALIBRATION_INVALID, "expected [N >= 1, 32]"),
        ("count", RejectionReason.CALIBRATION_INVALID, "holds 4 embeddings, the manifest says 6"),
        ("norm", RejectionReason.CALIBRATION_INVALID, "L2-normalised"),
        ("nan", RejectionReason.CALIBRATION_INVALID, "non-finite values"),
        ("weights", RejectionReason.CALIBRATION_INVALID, "preference_weights must lie in [0, 1]"),
        ("garbage", RejectionReason.CALIBRATION_INVALID, "unreadable calibration set"),
    ],
)
def test_a_corrupt_or_mismatched_calibration_file_is_a_clear_error(
    tmp_path: Path, fault: str, reason: RejectionReason, needle: str
) -> None:
    directory = make_tiny_checkpoint(tmp_path / "v1")
    path = directory / CALIBRATION_FILE
    weights = torch.tensor([0.0, 1.0])
    if fault == "sha":
        _rewrite_calibration(directory, CalibrationSet(_unit_rows(6, 32), weights), fix_sha=False)
    elif fault == "missing":
        path.unlink()
    elif fault == "dim":
        _rewrite_calibration(directory, CalibrationSet(_unit_rows(6, 16), weights))
    elif fault == "count":
        _rewrite_calibration(directory, CalibrationSet(_unit_rows(4, 32), weights))
    elif fault == "norm":
        _rewrite_calibration(directory, CalibrationSet(_unit_rows(6, 32) * 3.0, weights))
    elif fault == "nan":
        rows = _unit_rows(6, 32)
        rows[2, 5] = float("nan")
        _rewrite_calibration(directory, CalibrationSet(rows, weights))
    elif fault == "weights":
        _rewrite_calibration(directory, CalibrationSet(_unit_rows(6, 32), torch.tensor([0.0, 2.0])))
    else:
        path.write_bytes(b"not a safetensors file")
        _record_calibration_sha(directory)
    with pytest.raises(CheckpointError) as raised:
        load_checkpoint(directory)
    assert raised.value.reason is reason
    assert str(path) in str(raised.value) and needle in str(raised.value)


@pytest.mark.parametrize("name", ["../policy.safetensors", "other.safetensors"])
def test_a_manifest_naming_another_file_is_corrupt(tmp_path: Path, name: str) -> None:
    directory = make_tiny_checkpoint(tmp_path / "v1")
    manifest_path = directory / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest["calibration"]["file"] = name
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"calibration\.file must be") as raised:
        load_checkpoint(directory)
    assert raised.value.reason is RejectionReason.CORRUPT_MANIFEST


def test_saving_refuses_a_calibration_set_of_the_wrong_dimension(tmp_path: Path) -> None:
    policy = load_checkpoint(make_tiny_checkpoint(tmp_path / "v1"))
    wrong = CalibrationSet(_unit_rows(3, 16), torch.tensor([0.5]))
    with pytest.raises(CheckpointError, match=r"calibration set: embeddings have shape \[3, 16\]"):
        save_checkpoint(tmp_path / "v2", policy.network, policy.manifest, wrong)
    assert not (tmp_path / "v2").exists()


def test_select_calibration_is_deterministic_and_skips_unusable_rows() -> None:
    rows = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32)
    rows[0] = 0.0
    rows[1, 3] = np.inf
    first = select_calibration(rows, np.linspace(0, 1, 200), size=64)
    again = select_calibration(rows, np.linspace(0, 1, 200), size=64)
    assert first is not None and again is not None
    assert first.embeddings.shape == (64, 8) and torch.equal(first.embeddings, again.embeddings)
    assert first.problem(8) is None
    assert len(first.preference_weights) == 8 and first.preference_weights.min() == 0.0
    assert first.preference_weights.max() == 1.0
    assert select_calibration(np.zeros((5, 8), dtype=np.float32)) is None
    assert select_calibration(np.zeros((0, 8), dtype=np.float32)) is None
    embeddings, weights = first.dry_run_inputs()
    expected = sorted({0.0, 0.5, 1.0} | set(first.preference_weights.tolist()))
    assert sorted(set(weights.tolist())) == expected and 0.5 not in first.preference_weights.tolist()
    assert embeddings.shape == (64 * len(expected), 8)


def test_replace_calibration_keeps_the_weights_and_upgrades_an_old_checkpoint(tmp_path: Path) -> None:
    directory = make_tiny_checkpoint(tmp_path / "old", calibrated=False)
    weights_sha = sha256_file(directory / WEIGHTS_FILE)
    final = replace_calibration(directory, tiny_calibration())
    assert final.weights_sha256 == weights_sha == sha256_file(directory / WEIGHTS_FILE)
    loaded = load_checkpoint(directory)
    assert loaded.calibration is not None and loaded.manifest.calibration == final.calibration
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"], "no staging directory left behind"


def test_replace_calibration_refuses_a_set_the_policy_overflows_on(tmp_path: Path) -> None:
    good = load_checkpoint(make_tiny_checkpoint(tmp_path / "v1"))
    bad = overflowing_on_real_embeddings(good, 1)
    save_checkpoint(tmp_path / "v2", bad.network, bad.manifest)  # no set: random vectors pass it
    with pytest.raises(CheckpointError) as raised:
        replace_calibration(tmp_path / "v2", tiny_calibration())
    assert raised.value.reason is RejectionReason.NON_FINITE
    assert load_checkpoint(tmp_path / "v2").calibration is None, "the old checkpoint is untouched"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v1", "v2"]


async def test_a_hot_swap_to_a_policy_that_overflows_on_its_calibration_set_is_rejected(
    tmp_path: Path,
) -> None:
    store = CheckpointStore(tmp_path / "store")
    make_tiny_checkpoint(store.path(1), version=1, seed=1)
    store.set_latest(1)
    registry = PolicyRegistry(load_checkpoint(store.path(1)))
    manager = PolicyManager(registry, source=str(store.root))
    watcher = DirectoryPolicyWatcher(manager, store.root, 0.01)
    bad = overflowing_on_real_embeddings(registry.current(), 2)
    store.publish(bad.network, bad.manifest, bad.calibration)
    with capture_logs() as logs:
        for _ in range(3):
            assert not await watcher.poll_once()
    [rejected] = [e for e in logs if e["event"] == "policy_rejected"]
    assert rejected["reason"] == "non_finite" and rejected["version"] == 2 and rejected["retry_in_s"] is None
    assert CALIBRATION_FILE in rejected["error"]
    assert manager.rejected_total == {"non_finite": 1} and registry.current().version == 1
    # A calibration file of the wrong dimension (sha256 consistent) is the next version's problem.
    make_tiny_checkpoint(store.path(3), version=3, seed=3)
    _rewrite_calibration(store.path(3), CalibrationSet(_unit_rows(6, 16), torch.tensor([0.5])))
    store.set_latest(3)
    assert not await watcher.poll_once()
    assert manager.rejected_total == {"non_finite": 1, "calibration_invalid": 1}
    # A sound version after them swaps in.
    make_tiny_checkpoint(store.path(4), version=4, seed=4)
    store.set_latest(4)
    assert await watcher.poll_once()
    assert registry.current().version == 4 and registry.current().calibration is not None


def test_replace_calibration_that_fails_to_rename_keeps_the_old_checkpoint(
    tmp_path: Path, monkeypatch
) -> None:
    directory = make_tiny_checkpoint(tmp_path / "v1", calibrated=False)
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    real_rename = os.rename
    calls = []

    def rename(source, target):  # type: ignore[no-untyped-def]
        calls.append(Path(source).name)
        if len(calls) == 2:  # the staging directory moving into place
            raise OSError("disk went away")
        real_rename(source, target)

    monkeypatch.setattr("barp_sidecar.policy.checkpoint.os.rename", rename)
    with pytest.raises(OSError, match="disk went away"):
        replace_calibration(directory, tiny_calibration())
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v1"], "no staging or retired directory left"
