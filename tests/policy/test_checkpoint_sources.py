"""Checkpoint sources on a shared volume (DirectoryPolicyWatcher + PolicyManager over a real store): an
unreadable manifest is rejected once, counted and not re-read until it changes; weights that land after
LATEST are retried with backoff until their sha256 matches; every reason comes from an enum."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from barp_sidecar.errors import RejectionReason
from barp_sidecar.policy.checkpoint import WEIGHTS_FILE, CheckpointStore, load_checkpoint
from barp_sidecar.policy.manager import RETRY_INITIAL_S, PolicyManager
from barp_sidecar.policy.registry import PolicyRegistry
from barp_sidecar.policy.watcher import DirectoryPolicyWatcher
from tests.policy.test_nonfinite_guard import huge
from tests.support.sidecar import make_tiny_checkpoint


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world(tmp_path: Path):  # type: ignore[no-untyped-def]
    store = CheckpointStore(tmp_path / "store")
    make_tiny_checkpoint(store.path(1), version=1, seed=1)
    store.set_latest(1)
    clock = Clock()
    registry = PolicyRegistry(load_checkpoint(store.path(1)))
    manager = PolicyManager(registry, source=str(store.root), clock=clock)
    return store, clock, registry, manager, DirectoryPolicyWatcher(manager, store.root, 0.01)


def rejections(logs: list[dict]) -> list[dict]:
    return [entry for entry in logs if entry["event"] == "policy_rejected"]


async def test_a_non_json_manifest_is_rejected_once_counted_and_not_reread(world) -> None:  # type: ignore[no-untyped-def]
    store, _, registry, manager, watcher = world
    store.path(2).mkdir()
    (store.path(2) / "manifest.json").write_text("{not json")
    store.set_latest(2)
    with capture_logs() as logs:
        for _ in range(10):
            assert not await watcher.poll_once()
    [rejected] = rejections(logs)
    assert rejected["reason"] == "corrupt_manifest" and rejected["version"] == 2
    assert manager.rejected_total == {"corrupt_manifest": 1}
    # The writer fixes it: the next poll reads it again and installs.
    shutil.rmtree(store.path(2))
    make_tiny_checkpoint(store.path(2), version=2, seed=2)
    assert await watcher.poll_once()
    assert registry.current().version == 2


async def test_weights_that_land_after_latest_are_retried_with_backoff(world) -> None:  # type: ignore[no-untyped-def]
    store, clock, registry, manager, watcher = world
    make_tiny_checkpoint(store.path(2), version=2, seed=2)
    weights = store.path(2) / WEIGHTS_FILE
    complete = weights.read_bytes()
    weights.write_bytes(complete[: len(complete) // 2])  # a non-atomic copy, half done
    store.set_latest(2)
    with capture_logs() as logs:
        assert not await watcher.poll_once()
        assert not await watcher.poll_once()  # backing off: no second attempt yet
        clock.now += RETRY_INITIAL_S
        assert not await watcher.poll_once()  # still half written: retried, backoff doubles
    attempts = rejections(logs)
    assert [a["reason"] for a in attempts] == ["sha256_mismatch", "sha256_mismatch"]
    assert [a["retry_in_s"] for a in attempts] == [RETRY_INITIAL_S, 2 * RETRY_INITIAL_S]
    assert manager.rejected_total == {"sha256_mismatch": 1}, "one version, counted once"
    weights.write_bytes(complete)
    clock.now += 2 * RETRY_INITIAL_S
    assert await watcher.poll_once()
    assert registry.current().version == 2


async def test_a_non_finite_dry_run_is_labelled_non_finite(world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store, _, registry, manager, watcher = world
    bad = huge(registry.current(), 2)
    from barp_sidecar.policy.checkpoint import save_checkpoint

    save_checkpoint(store.path(2), bad.network, bad.manifest)
    store.set_latest(2)
    with capture_logs() as logs:
        for _ in range(3):
            assert not await watcher.poll_once()
    [rejected] = rejections(logs)
    assert rejected["reason"] == RejectionReason.NON_FINITE.value and rejected["retry_in_s"] is None
    assert manager.rejected_total == {"non_finite": 1} and registry.current().version == 1
