"""Scoring routing decisions on a table (DESIGN §8): per task and unweighted task mean of score, cost, reward.

Owns the metric definitions and the w_q grid; pure functions over numpy arrays (no training, no I/O).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from barp_sidecar.policy.reward import reward
from trainer.offline.datasets import RoutingTable

QUALITY_WEIGHT_GRID: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))


def grid_key(quality_weight: float) -> str:
    """The report's key for a grid point: "0.0" … "1.0"."""
    return f"{quality_weight:.1f}"


def metrics_for_actions(
    table: RoutingTable, arms: np.ndarray, quality_weight: float, tau_usd: float
) -> dict[str, object]:
    """{"score", "cost_usd", "reward", "per_task": {task: {...}}} for one decision per row.

    Scores are in [0, 1]; the top level is the unweighted mean over tasks (each task counts once).
    """
    arms = np.asarray(arms, dtype=np.int64)
    rows = np.arange(len(table))
    quality = table.quality[rows, arms]
    cost = table.cost_usd[rows, arms]
    rewards = reward(quality, cost, quality_weight, tau_usd)
    tasks = np.asarray(table.tasks)
    per_task: dict[str, dict[str, float]] = {}
    for task in table.task_names:
        mask = tasks == task
        per_task[task] = {
            "score": float(quality[mask].mean()),
            "cost_usd": float(cost[mask].mean()),
            "reward": float(rewards[mask].mean()),
        }
    return {
        "score": float(np.mean([m["score"] for m in per_task.values()])),
        "cost_usd": float(np.mean([m["cost_usd"] for m in per_task.values()])),
        "reward": float(np.mean([m["reward"] for m in per_task.values()])),
        "per_task": per_task,
    }


Chooser = Callable[[float], np.ndarray]


def evaluate_over_grid(
    table: RoutingTable, choose: Chooser, tau_usd: float, grid: Sequence[float] = QUALITY_WEIGHT_GRID
) -> dict[str, dict[str, object]]:
    """{W_Q: metrics} where ``choose(w_q)`` returns one arm index per row of ``table``."""
    return {grid_key(w): metrics_for_actions(table, choose(w), w, tau_usd) for w in grid}


def mean_over_seeds(runs: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(mean, std) of several grid evaluations with the same keys, field by field (per task too)."""
    fields = ("score", "cost_usd", "reward")

    def stats(entries: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
        values = {f: np.array([e[f] for e in entries], dtype=np.float64) for f in fields}
        return {f: float(v.mean()) for f, v in values.items()}, {f: float(v.std()) for f, v in values.items()}

    mean: dict[str, Any] = {}
    std: dict[str, Any] = {}
    for key in runs[0]:
        entries = [run[key] for run in runs]
        mean[key], std[key] = stats(entries)
        mean[key]["per_task"], std[key]["per_task"] = {}, {}
        for task in entries[0]["per_task"]:
            task_mean, task_std = stats([e["per_task"][task] for e in entries])
            mean[key]["per_task"][task], std[key]["per_task"][task] = task_mean, task_std
    return mean, std


def headroom_captured(policy_reward: float, best_single_reward: float, oracle_reward: float) -> float | None:
    """(R_policy − R_best single) / (R_oracle − R_best single); None when the oracle has no headroom."""
    gap = oracle_reward - best_single_reward
    if gap <= 1e-12:
        return None
    return (policy_reward - best_single_reward) / gap
