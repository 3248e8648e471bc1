import dataclasses

import numpy as np
import pytest
import torch

from barp_sidecar.policy.reward import reward
from tests.trainer.conftest import learnable_table
from trainer.offline.evaluation import metrics_for_actions
from trainer.offline.preferences import sample_quality_weights
from trainer.offline.reinforce import OfflineTrainingConfig, greedy_actions, train_offline
from trainer.offline.simulator import BanditSimulator

TAU_USD = 0.004


def test_simulator_reveals_only_the_chosen_arm(learnable):
    table, _ = learnable
    simulator = BanditSimulator(table)
    quality, cost = simulator.reveal(np.array([0, 70, 5]), np.array([2, 1, 0]))
    assert quality.shape == (3,) and cost.shape == (3,)
    assert np.array_equal(quality, table.quality[[0, 70, 5], [2, 1, 0]])
    assert simulator.reveals == 3
    quality[:] = -1  # the learner cannot write back into the table
    assert simulator.reveal(np.array([0]), np.array([2]))[0][0] == table.quality[0, 2]
    with pytest.raises(ValueError, match="out of range"):
        simulator.reveal(np.array([0]), np.array([3]))


class RecordingSimulator(BanditSimulator):
    def __init__(self, table):
        super().__init__(table)
        self.calls = []

    def reveal(self, rows, arms):
        self.calls.append((np.asarray(rows).copy(), np.asarray(arms).copy()))
        return super().reveal(rows, arms)


@pytest.mark.parametrize("baseline", ["batch_mean", "critic"])
def test_training_sees_one_arm_per_event(learnable, baseline):
    table, x = learnable
    simulator = RecordingSimulator(table)
    config = OfflineTrainingConfig(
        steps=5, batch_size=16, baseline=baseline, head_hidden=16, critic_hidden=16
    )
    train_offline(x, simulator, TAU_USD, config)
    assert len(simulator.calls) == 5
    assert all(rows.shape == arms.shape == (16,) for rows, arms in simulator.calls)
    assert simulator.reveals == 5 * 16


def test_preference_sampling_covers_the_ends():
    rng = np.random.default_rng(0)
    ends = sample_quality_weights(rng, 20000, "ends")
    uniform = sample_quality_weights(rng, 20000, "uniform")
    assert ends.min() >= 0 and ends.max() <= 1
    assert (ends >= 0.9).mean() > 1.5 * (uniform >= 0.9).mean()
    assert (ends == 1.0).any() and (ends == 0.0).any()
    with pytest.raises(ValueError, match="preference sampling"):
        sample_quality_weights(rng, 1, "nope")


def test_training_is_deterministic_under_a_seed(learnable):
    table, x = learnable
    config = OfflineTrainingConfig(steps=20, batch_size=32, head_hidden=16, critic_hidden=16, seed=7)
    first = train_offline(x, BanditSimulator(table), TAU_USD, config)
    second = train_offline(x, BanditSimulator(table), TAU_USD, config)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    other = train_offline(
        x, BanditSimulator(table), TAU_USD, OfflineTrainingConfig(**{**config.to_dict(), "seed": 8})
    )
    assert not torch.equal(first.output.weight, other.output.weight)


@pytest.mark.parametrize(
    "options",
    [
        {"policy_ema_decay": 0.9},
        {"critic_ema_decay": 0.9, "critic_input_noise_std": 0.05},
        {"preference_sampling": "ends_high"},
    ],
)
def test_opt_in_research_options_train_with_bandit_feedback_only(learnable, options):
    table, x = learnable
    simulator = RecordingSimulator(table)
    config = OfflineTrainingConfig(steps=5, batch_size=16, head_hidden=16, critic_hidden=16, **options)
    policy = train_offline(x, simulator, TAU_USD, config)
    assert simulator.reveals == 5 * 16
    assert all(torch.isfinite(p).all() for p in policy.parameters())


@pytest.mark.parametrize("baseline", ["critic", "batch_mean"])
def test_policy_beats_every_single_arm_at_two_preferences(baseline):
    train, x = learnable_table(seed=1)
    test, x_test = learnable_table(seed=1, rows_per_cluster=30)  # same clusters, fresh noise
    config = OfflineTrainingConfig(
        steps=800, batch_size=64, head_hidden=32, critic_hidden=32, baseline=baseline, seed=0
    )
    policy = train_offline(x, BanditSimulator(train), TAU_USD, config)
    for w in (0.3, 0.9):
        routed = metrics_for_actions(test, greedy_actions(policy, x_test, w), w, TAU_USD)["reward"]
        singles = [
            metrics_for_actions(test, np.full(len(test), arm), w, TAU_USD)["reward"] for arm in range(3)
        ]
        assert routed > max(singles) + 0.05, (w, routed, singles)
        best = reward(test.quality, test.cost_usd, w, TAU_USD).max(axis=1)
        assert routed == pytest.approx(np.mean([best[:30].mean(), best[30:].mean()]), abs=0.05)


def test_partially_observed_rows_only_ever_reveal_observed_arms():
    """Rows of a source without the 'big' model: training never asks for it there, and stays finite."""
    table, x = learnable_table(rows_per_cluster=30)
    observed = np.ones(table.quality.shape, dtype=bool)
    observed[:30, 2] = False  # cluster A never saw 'big'
    table = dataclasses.replace(table, observed=observed)
    simulator = RecordingSimulator(table)
    with pytest.raises(ValueError, match="did not observe"):
        BanditSimulator(table).reveal(np.array([0]), np.array([2]))
    config = OfflineTrainingConfig(steps=40, batch_size=32, seed=0)
    policy = train_offline(x, simulator, TAU_USD, config)
    assert all(np.isfinite(p.detach().numpy()).all() for p in policy.parameters())
    rows = np.concatenate([r for r, _ in simulator.calls])
    arms = np.concatenate([a for _, a in simulator.calls])
    assert rows.size == 40 * 32 and not np.any((rows < 30) & (arms == 2))
