"""Choosing a model from the policy's probabilities under an exploration mode (pure given the RNG).

Owns the choice and its propensity (the probability with which that model was chosen), which every
decision logs so off-policy learning can importance-weight it (DESIGN §6).
"""

from __future__ import annotations

import numpy as np

from barp_sidecar.domain import ExplorationMode


def choose_model(
    probabilities: np.ndarray,
    allowed: np.ndarray,
    mode: ExplorationMode,
    epsilon: float,
    rng: np.random.Generator,
) -> tuple[int, float]:
    """(model index, propensity). ``allowed`` is a bool mask with at least one True; masked probs are 0.

    GREEDY: the most probable allowed model (lowest index on ties), propensity 1.
    SAMPLE: a model drawn from ``probabilities`` renormalised over allowed models, propensity = its
    probability.
    EPSILON_GREEDY: with probability ε a uniform allowed model, else greedy;
    propensity = (1 − ε)·[model is greedy] + ε / number of allowed models.
    """
    # Masked models already have probability 0, but an allowed model can underflow to 0 too: mask explicitly.
    greedy = int(np.argmax(np.where(allowed, probabilities, -1.0)))
    if mode is ExplorationMode.GREEDY:
        return greedy, 1.0
    if mode is ExplorationMode.SAMPLE:
        weights = np.where(allowed, probabilities, 0.0)
        total = float(weights.sum())
        if total <= 0.0:  # every allowed probability underflowed: fall back to greedy, honestly logged
            return greedy, 1.0
        weights = weights / total
        index = int(rng.choice(len(weights), p=weights))
        return index, float(weights[index])
    if mode is ExplorationMode.EPSILON_GREEDY:
        allowed_indices = np.flatnonzero(allowed)
        index = int(rng.choice(allowed_indices)) if rng.random() < epsilon else greedy
        propensity = (1.0 - epsilon) * (index == greedy) + epsilon / len(allowed_indices)
        return index, float(propensity)
    raise ValueError(f"unknown exploration mode {mode!r}")
