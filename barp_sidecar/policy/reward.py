"""The BaRP reward: r = w_q·q − w_c·min(c/τ, 1) with w_c = 1 − w_q. Pure functions, no I/O.

Owns reward shaping only. Shared by the offline trainer, the online trainer and evaluation so every
part of the system scores a decision the same way.
"""

from __future__ import annotations

import math

import numpy as np


def normalized_cost(cost_usd: float, tau_usd: float) -> float:
    """min(c/τ, 1): cost as a fraction of the cost cap τ, saturating at 1."""
    if tau_usd <= 0 or not math.isfinite(tau_usd):
        raise ValueError(f"tau_usd must be a positive finite number, not {tau_usd!r}")
    if cost_usd < 0 or not math.isfinite(cost_usd):
        raise ValueError(f"cost_usd must be a non-negative finite number, not {cost_usd!r}")
    return min(cost_usd / tau_usd, 1.0)


def reward(quality: float, cost_usd: float, quality_weight: float, tau_usd: float) -> float:
    """r = w_q·q − (1 − w_q)·min(c/τ, 1), in [−1, 1] for q in [0, 1]."""
    if not 0.0 <= quality_weight <= 1.0:
        raise ValueError(f"quality_weight must be in [0, 1], not {quality_weight!r}")
    if not 0.0 <= quality <= 1.0:
        raise ValueError(f"quality must be in [0, 1], not {quality!r}")
    return quality_weight * quality - (1.0 - quality_weight) * normalized_cost(cost_usd, tau_usd)


def reward_array(
    quality: np.ndarray, cost_usd: np.ndarray, quality_weight: np.ndarray | float, tau_usd: float
) -> np.ndarray:
    """Vectorised ``reward`` (broadcasting); inputs are assumed validated."""
    if tau_usd <= 0:
        raise ValueError(f"tau_usd must be positive, not {tau_usd!r}")
    w_q = np.asarray(quality_weight, dtype=np.float64)
    return w_q * quality - (1.0 - w_q) * np.minimum(np.asarray(cost_usd, dtype=np.float64) / tau_usd, 1.0)
