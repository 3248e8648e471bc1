"""Bandit feedback simulated from a full routing table (the paper's offline protocol).

Owns the only reference to the full quality/cost table during bandit training: a learner asks for the
outcome of the arm it chose on a row and gets exactly that arm's (q, c) back, nothing else. Every reveal is
counted, so tests (and the manifest) can show that the learner saw one arm per simulated event. A table
built from several sources may not hold every arm on every row: ``observed`` says which arms a learner may
choose on a row, and asking for an unobserved outcome is an error.
"""

from __future__ import annotations

import numpy as np

from trainer.offline.datasets import RoutingTable


class BanditSimulator:
    """Reveals (quality, cost_usd) of the chosen arm only."""

    def __init__(self, table: RoutingTable) -> None:
        self._quality = np.asarray(table.quality, dtype=np.float64).copy()
        self._cost_usd = np.asarray(table.cost_usd, dtype=np.float64).copy()
        self.num_rows, self.num_arms = self._quality.shape
        self.observed = np.asarray(table.observed_mask, dtype=bool).copy()
        self.fully_observed = bool(self.observed.all())
        if not self.observed.any(axis=1).all():
            raise ValueError("every row needs at least one observed arm")
        self.reveals = 0

    def reveal(self, rows: np.ndarray, arms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(quality [B], cost_usd [B]) of arm ``arms[i]`` on row ``rows[i]``; one reveal per event."""
        rows = np.asarray(rows, dtype=np.int64)
        arms = np.asarray(arms, dtype=np.int64)
        if rows.shape != arms.shape or rows.ndim != 1:
            raise ValueError("rows and arms must be 1-d arrays of equal length")
        if rows.size and (arms.min() < 0 or arms.max() >= self.num_arms):
            raise ValueError(f"arm index out of range [0, {self.num_arms})")
        if not self.fully_observed and not self.observed[rows, arms].all():
            raise ValueError("asked for the outcome of an arm the row did not observe")
        self.reveals += int(rows.size)
        return self._quality[rows, arms].copy(), self._cost_usd[rows, arms].copy()
