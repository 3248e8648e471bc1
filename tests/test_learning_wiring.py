"""learning_wiring: the manager gets its checkpoint fetcher in its constructor, only when it can use it."""

from __future__ import annotations

from pathlib import Path

import pytest

from barp_sidecar.errors import CheckpointError
from barp_sidecar.learning_wiring import LearningComponents
from barp_sidecar.policy.checkpoint import load_checkpoint
from barp_sidecar.policy.registry import PolicyRegistry
from barp_sidecar.policy.watcher import TrainerCheckpointFetcher
from tests.support.sidecar import make_tiny_checkpoint, sidecar_settings


def components(tmp_path: Path, **trainer: object) -> LearningComponents:
    checkpoint = make_tiny_checkpoint(tmp_path / "v1")
    settings = sidecar_settings(
        checkpoint, trainer={"checkpoint_cache_dir": str(tmp_path / "cache"), **trainer}
    )
    return LearningComponents(settings, PolicyRegistry(load_checkpoint(checkpoint)), {})


def test_standalone_sidecar_manager_has_no_fetcher(tmp_path: Path) -> None:
    assert components(tmp_path).manager.fetcher is None
    assert components(tmp_path / "b", target="127.0.0.1:1", watch_policies=False).manager.fetcher is None


async def test_following_a_trainer_gives_the_manager_a_fetcher_that_needs_the_started_channel(
    tmp_path: Path,
) -> None:
    learning = components(tmp_path, target="127.0.0.1:1")
    fetcher = learning.manager.fetcher
    assert isinstance(fetcher, TrainerCheckpointFetcher)
    assert fetcher.download_root == tmp_path / "cache"
    with pytest.raises(CheckpointError, match="trainer channel is not open"):
        await fetcher(2, "")
