"""Reward shaping (DESIGN §6): the one pure function that turns (quality, cost, preference) into a reward.

r = w_q·q − (1 − w_q)·min(c / τ, 1). Shared by the sidecar, the online and the offline trainer and the
evaluation code, so the number a report prints is the number the learner maximised. No I/O, no state.
``reward_from_normalized_cost`` is the formula itself for callers that already hold min(c/τ, 1) (estimated
costs of a critic or a baseline, torch tensors inside a training step): nobody writes w·q − (1 − w)·c again.
Because r is linear in w_q for a fixed (q, c), one revealed (q, c) gives the reward at every preference.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike


def normalized_cost(cost_usd: ArrayLike, tau_usd: float) -> Any:
    """min(c / τ, 1) for c ≥ 0 (float64 array, or numpy scalar for a scalar); τ must be positive."""
    if not tau_usd > 0:
        raise ValueError(f"tau_usd must be positive, not {tau_usd!r}")
    return np.minimum(np.asarray(cost_usd, dtype=np.float64) / tau_usd, 1.0)


def reward_from_normalized_cost(quality: Any, cost_normalized: Any, quality_weight: Any) -> Any:
    """w_q·q − (1 − w_q)·ĉ for an already normalised cost ĉ = min(c/τ, 1).

    Uses arithmetic operators only, so it works elementwise (with broadcasting) on floats, numpy arrays and
    torch tensors alike, and keeps autograd graphs intact.
    """
    return quality_weight * quality - (1.0 - quality_weight) * cost_normalized


def reward(quality: ArrayLike, cost_usd: ArrayLike, quality_weight: ArrayLike, tau_usd: float) -> Any:
    """r = w_q·q − (1 − w_q)·min(c/τ, 1), elementwise with numpy broadcasting.

    Returns a Python float when every input is a scalar, else a float64 array of the broadcast shape.

    Invariants: r ∈ [−1, 1] for q ∈ [0, 1], c ≥ 0, w_q ∈ [0, 1]; r = q at w_q = 1; r = −min(c/τ, 1) at
    w_q = 0; monotone increasing in q and decreasing in c.
    """
    w_q = np.asarray(quality_weight, dtype=np.float64)
    result = reward_from_normalized_cost(
        np.asarray(quality, dtype=np.float64), normalized_cost(cost_usd, tau_usd), w_q
    )
    if np.ndim(result) == 0:
        return float(result)
    return result


def reward_array(
    quality: np.ndarray, cost_usd: np.ndarray, quality_weight: np.ndarray | float, tau_usd: float
) -> np.ndarray:
    """``reward`` that always returns an array (for callers that index the result)."""
    return np.asarray(reward(np.asarray(quality), np.asarray(cost_usd), np.asarray(quality_weight), tau_usd))
