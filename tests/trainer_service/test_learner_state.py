"""Restarts resume the learner: optimiser state, replay buffer, held-out slice and exploration statistics
are saved with every published checkpoint and restored from the LATEST one (store round trip)."""

from __future__ import annotations

import random

import pytest
import torch

from barp_sidecar.policy.checkpoint import CheckpointStore
from tests.learning_helpers import random_event, trainer_settings_yaml
from trainer.replay.memory_log import MemoryEventLog
from trainer.service.learner_state import flatten, load_state, save_state, state_path, unflatten
from trainer.service.loop import TrainingLoop
from trainer.service.policy_source import PolicyAnnouncer, starting_policy
from trainer.service.settings import load_trainer_settings


def settings_for(tmp_path, kind: str):
    config = tmp_path / "trainer.yaml"
    config.write_text(trainer_settings_yaml(tmp_path / "data", every_events=100, every_s=600))
    # Random rewards: a wide margin lets the gate publish, so there are versions to restart from.
    env = {"BARP_TRAINER__LEARNER__ARCHITECTURE_KIND": kind, "BARP_TRAINER__PUBLISH__GATE_MARGIN": "1.0"}
    return load_trainer_settings(config, env)


def make_loop(settings, log) -> TrainingLoop:
    store = CheckpointStore(settings.checkpoints_dir)
    loop = TrainingLoop(
        log,
        store,
        PolicyAnnouncer(),
        starting_policy(settings.learner, store),
        settings.learner,
        settings.publish,
        clock=lambda: 0.0,
    )
    loop.ensure_published()
    return loop


def feed(loop: TrainingLoop, log: MemoryEventLog, events) -> None:
    log.append(events)
    for _ in range(100):
        if loop.cursor >= log.end_offset and not loop.step()["events"]:
            break
        loop.step()


def assert_same(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert set(a) == set(b)
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b


def test_nested_state_round_trips_through_the_file(tmp_path):
    network = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(network.parameters())
    network(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    state = {"optimizer": optimizer.state_dict(), "text": "x", "numbers": [1, 2.5, None, True]}
    tensors: dict[str, torch.Tensor] = {}
    assert_same(unflatten(flatten(state, "s", tensors), tensors), state)
    save_state(tmp_path, 3, state)
    assert_same(load_state(tmp_path, 3), state)
    assert load_state(tmp_path, 4) is None
    state_path(tmp_path, 5).write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="unreadable learner state"):
        load_state(tmp_path, 5)


@pytest.mark.parametrize("kind", ["reward_model", "barp"])
def test_a_restart_resumes_the_learner_saved_with_latest(tmp_path, kind):
    settings = settings_for(tmp_path, kind)
    rng = random.Random(3)
    log = MemoryEventLog()
    loop = make_loop(settings, log)
    feed(loop, log, [random_event(rng, sequence=i) for i in range(1, 401)])
    latest = loop.store.latest_version()
    assert latest is not None and latest >= 2
    saved = load_state(loop.state_dir, latest)
    assert saved is not None
    assert len(list(loop.state_dir.glob("v*.safetensors"))) <= 2  # old versions' states are pruned

    restarted = make_loop(settings, log)  # same store: starts from LATEST and its saved state
    assert restarted._starting_source == "latest"
    assert_same(restarted.learner.state(), saved["learner"])
    assert len(restarted.holdout) == len(saved["holdout"]["lengths"]) > 0
    if kind == "barp":
        assert len(restarted.replay) == len(saved["replay"]["lengths"]) > 0  # the replay buffer came back
        assert restarted.learner.optimizer.state_dict()["state"]  # Adam moments, not a fresh optimiser
    else:
        # The restored regression reproduces the published policy exactly (statistics ↔ weights).
        x, w = torch.randn(8, restarted.learner.network.architecture.embedding_dim), torch.rand(8)
        with torch.inference_mode():
            assert torch.allclose(
                restarted.learner.network(x, w), restarted.published_network(x, w), atol=1e-5
            )
    # Held-out events restored with the state are not appended twice when the log is re-read.
    feed(restarted, log, [])
    ids = [e.event_id for e in restarted.holdout]
    assert len(ids) == len(set(ids))


def test_a_reward_model_without_saved_state_rebuilds_it_from_the_log(tmp_path):
    settings = settings_for(tmp_path, "reward_model")
    rng = random.Random(4)
    log = MemoryEventLog()
    loop = make_loop(settings, log)
    feed(loop, log, [random_event(rng, sequence=i) for i in range(1, 301)])
    for path in loop.state_dir.glob("v*.safetensors"):
        path.unlink()
    restarted = make_loop(settings, log)
    assert restarted.cursor == 0  # re-reads the retained log: the statistics are exact sums
    feed(restarted, log, [])
    assert int(restarted.learner.arm_events.sum()) >= int(loop.learner.arm_events.sum()) - 16
