"""Deterministic train/validation slices of a training table, stratified by task (for tuning only)."""

from __future__ import annotations

import numpy as np

from trainer.offline.datasets import RoutingTable


def stratified_split(
    table: RoutingTable, validation_fraction: float = 0.15, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices): ``validation_fraction`` of each task, chosen by ``seed``."""
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError("validation_fraction must be in (0, 1)")
    rng = np.random.default_rng(seed)
    tasks = np.asarray(table.tasks)
    train, validation = [], []
    for task in table.task_names:
        rows = np.flatnonzero(tasks == task)
        rows = rows[rng.permutation(rows.size)]
        cut = max(1, round(rows.size * validation_fraction))
        validation.append(rows[:cut])
        train.append(rows[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(validation))
