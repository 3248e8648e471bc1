"""Sampling quality weights w_q on the simplex for training (pure; takes a numpy Generator).

"uniform": w_q ~ U[0, 1] (the paper). "ends": a mixture that gives the ends of the simplex more mass
(a third uniform, a third Beta(0.5, 0.5), a third on the 11-point evaluation grid including 0 and 1);
under uniform sampling the high-w_q region, where the costly arm should win, is starved.
"""

from __future__ import annotations

import numpy as np

PREFERENCE_SAMPLINGS = ("uniform", "ends", "ends_high")
GRID = np.round(np.linspace(0.0, 1.0, 11), 10)


def sample_quality_weights(rng: np.random.Generator, size: int, sampling: str) -> np.ndarray:
    if sampling == "uniform":
        return rng.uniform(0.0, 1.0, size)
    if sampling == "ends":
        pick = rng.integers(0, 3, size)
        out = rng.uniform(0.0, 1.0, size)
        beta = rng.beta(0.5, 0.5, size)
        grid = rng.choice(GRID, size)
        out = np.where(pick == 1, beta, out)
        return np.where(pick == 2, grid, out)
    if sampling == "ends_high":
        # "ends", with a quarter of the draws moved to U[0.75, 1] (where the costly-arm boundaries lie).
        out = sample_quality_weights(rng, size, "ends")
        high = rng.uniform(0.75, 1.0, size)
        return np.where(rng.uniform(size=size) < 0.25, high, out)
    raise ValueError(f"preference sampling must be one of {PREFERENCE_SAMPLINGS}, not {sampling!r}")
