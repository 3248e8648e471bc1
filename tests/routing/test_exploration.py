"""choose_model: greedy, sampling and ε-greedy choices and their propensities."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from barp_sidecar.domain import ExplorationMode
from barp_sidecar.routing.exploration import choose_model

PROBS = np.array([0.1, 0.6, 0.0, 0.3])
ALL = np.array([True, True, True, True])


def test_greedy_picks_the_most_probable_allowed_arm() -> None:
    rng = np.random.default_rng(0)
    assert choose_model(PROBS, ALL, ExplorationMode.GREEDY, 0.1, rng) == (1, 1.0)
    allowed = np.array([True, False, True, True])
    assert choose_model(PROBS, allowed, ExplorationMode.GREEDY, 0.1, rng) == (3, 1.0)


def test_greedy_breaks_ties_by_lowest_index() -> None:
    probs = np.array([0.5, 0.5])
    assert choose_model(
        probs, np.array([True, True]), ExplorationMode.GREEDY, 0, np.random.default_rng()
    ) == (
        0,
        1.0,
    )


def test_greedy_can_pick_an_allowed_arm_with_zero_probability() -> None:
    allowed = np.array([False, False, True, False])
    assert choose_model(PROBS, allowed, ExplorationMode.GREEDY, 0.1, np.random.default_rng()) == (2, 1.0)


def test_sample_follows_the_distribution_and_reports_its_probability() -> None:
    rng = np.random.default_rng(1)
    counts: collections.Counter[int] = collections.Counter()
    for _ in range(4000):
        index, propensity = choose_model(PROBS, ALL, ExplorationMode.SAMPLE, 0.1, rng)
        assert propensity == pytest.approx(PROBS[index])
        counts[index] += 1
    assert counts[2] == 0
    for index in (0, 1, 3):
        assert counts[index] / 4000 == pytest.approx(PROBS[index], abs=0.03)


def test_sample_renormalises_over_allowed_arms() -> None:
    allowed = np.array([True, False, False, True])
    rng = np.random.default_rng(2)
    for _ in range(200):
        index, propensity = choose_model(PROBS, allowed, ExplorationMode.SAMPLE, 0.1, rng)
        assert index in (0, 3)
        assert propensity == pytest.approx(PROBS[index] / 0.4)


def test_epsilon_greedy_propensities_and_frequencies() -> None:
    rng = np.random.default_rng(3)
    epsilon = 0.2
    counts: collections.Counter[int] = collections.Counter()
    for _ in range(8000):
        index, propensity = choose_model(PROBS, ALL, ExplorationMode.EPSILON_GREEDY, epsilon, rng)
        expected = (1 - epsilon) * (index == 1) + epsilon / 4
        assert propensity == pytest.approx(expected)
        counts[index] += 1
    assert counts[1] / 8000 == pytest.approx(0.8 + 0.05, abs=0.02)
    assert counts[2] / 8000 == pytest.approx(0.05, abs=0.015)


def test_epsilon_zero_is_greedy_with_propensity_one() -> None:
    rng = np.random.default_rng(4)
    assert {choose_model(PROBS, ALL, ExplorationMode.EPSILON_GREEDY, 0.0, rng) for _ in range(50)} == {
        (1, 1.0)
    }
