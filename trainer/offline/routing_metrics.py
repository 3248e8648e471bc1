"""Metrics of routers on a log: score, cost, reward and model shares; strong/cheap pair curves (APGR, CPT).

Owns the metric definitions of ``barp-trainer evaluate`` as pure functions over numpy arrays (no policy,
no files). A router's decisions are a matrix P [N, K] of per-row probabilities over the models (one-hot for
a deterministic router); every metric is the expectation under P, so greedy and probability-weighted
("expected") results share one code path. ``allowed`` [N, K] marks, per row, the models a router may pick:
observed in the log, selected by ``--models`` and known to the policy.

Pair metrics follow RouteLLM (Ong et al., 2024): for a strong model S and a cheap model C, a router's
curve is its (share of calls to S, score) points; PGR = (score − score_C) / (score_S − score_C) is the
share of the quality gap recovered; APGR is the area under PGR over the S-share in [0, 1] (points joined
by straight lines, with the always-C (0, 0) and always-S (1, 1) ends, which any deployment can reach);
CPT(p) is the smallest S-share at which PGR reaches p. A random mix of S and C at share s scores
score_C + s·(score_S − score_C): PGR = s, APGR = 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from barp_sidecar.policy.reward import reward

QUALITY_GAP_FRACTIONS = (0.5, 0.8)
# Cheap model of an automatic pair: the cheapest model whose score is within this of the strong one's.
PAIR_SCORE_WINDOW = 0.15


@dataclass(frozen=True)
class EvaluationData:
    """The evaluated rows: outcomes per (row, model) in the policy's model order, and what may be picked."""

    models: tuple[str, ...]
    quality: np.ndarray  # [N, K]
    cost_usd: np.ndarray  # [N, K]
    allowed: np.ndarray  # [N, K] bool: observed ∩ selected ∩ known to the policy
    tasks: np.ndarray  # [N] str

    def __post_init__(self) -> None:
        n, k = self.quality.shape
        if self.cost_usd.shape != (n, k) or self.allowed.shape != (n, k) or self.tasks.shape != (n,):
            raise ValueError("quality, cost_usd, allowed must be [N, K] and tasks [N]")
        if k != len(self.models):
            raise ValueError("one column per model")
        if n and not self.allowed.any(axis=1).all():
            raise ValueError("every row needs at least one allowed model")

    def __len__(self) -> int:
        return int(self.quality.shape[0])

    def rewards(self, quality_weight: float, tau_usd: float) -> np.ndarray:
        """[N, K] reward of every model on every row (masked entries are meaningless)."""
        return np.asarray(reward(self.quality, self.cost_usd, quality_weight, tau_usd))


def one_hot(choices: np.ndarray, num_models: int) -> np.ndarray:
    out = np.zeros((choices.size, num_models), dtype=np.float64)
    out[np.arange(choices.size), choices] = 1.0
    return out


def summarize(
    data: EvaluationData,
    probabilities: np.ndarray,
    quality_weight: float,
    tau_usd: float,
    rows: np.ndarray | None = None,
) -> dict[str, Any]:
    """Expected outcomes of P [n, K] on ``rows`` (all rows when None); P must be 0 where not allowed.

    ``score``, ``cost_usd`` and ``reward`` are row means; ``score_task_mean`` is the unweighted mean of
    the per-task scores; ``share`` is the mean probability of each model (models with share 0 omitted).
    """
    index = np.arange(len(data)) if rows is None else np.asarray(rows, dtype=np.int64)
    p = np.asarray(probabilities, dtype=np.float64)
    if p.shape != (index.size, len(data.models)):
        raise ValueError(f"probabilities must be [{index.size}, {len(data.models)}], got {p.shape}")
    if np.any(p[~data.allowed[index]] > 1e-9):
        raise ValueError("a router put probability on a model that is not allowed on that row")
    quality = (p * data.quality[index]).sum(axis=1)
    cost = (p * data.cost_usd[index]).sum(axis=1)
    rewards = (p * np.where(data.allowed[index], data.rewards(quality_weight, tau_usd)[index], 0.0)).sum(
        axis=1
    )
    tasks = data.tasks[index]
    per_task: dict[str, dict[str, float]] = {}
    for task in sorted(set(tasks.tolist())):
        mask = tasks == task
        per_task[task] = {
            "score": float(quality[mask].mean()),
            "cost_usd": float(cost[mask].mean()),
            "reward": float(rewards[mask].mean()),
            "rows": int(mask.sum()),
        }
    shares = p.mean(axis=0) if index.size else np.zeros(len(data.models))
    return {
        "score": float(quality.mean()) if index.size else float("nan"),
        "score_task_mean": float(np.mean([t["score"] for t in per_task.values()]))
        if per_task
        else float("nan"),
        "cost_usd": float(cost.mean()) if index.size else float("nan"),
        "reward": float(rewards.mean()) if index.size else float("nan"),
        "share": {m: round(float(s), 6) for m, s in zip(data.models, shares, strict=True) if s > 0},
        "rows": int(index.size),
        "per_task": per_task,
    }


def fixed_order_choices(allowed: np.ndarray, order: Sequence[int] | np.ndarray) -> np.ndarray:
    """Per row, the first model of ``order`` allowed there (a fixed preference with fall-backs)."""
    choices = np.full(allowed.shape[0], -1, dtype=np.int64)
    for model in reversed(list(order)):
        choices = np.where(allowed[:, model], model, choices)
    if np.any(choices < 0):
        raise ValueError("a row allows none of the ordered models")
    return choices


def _mean_rewards(data: EvaluationData, rewards: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """[K] mean reward of each model over the rows (of ``rows``) where it is allowed; -inf where never."""
    allowed = data.allowed[rows]
    totals = np.where(allowed, rewards[rows], 0.0).sum(axis=0)
    counts = allowed.sum(axis=0)
    return np.where(counts > 0, totals / np.maximum(counts, 1), -np.inf)


def best_single_choices(data: EvaluationData, quality_weight: float, tau_usd: float) -> np.ndarray:
    """The model with the best mean reward on these rows (hindsight); where absent, the next best."""
    rewards = data.rewards(quality_weight, tau_usd)
    means = _mean_rewards(data, rewards, np.arange(len(data)))
    return fixed_order_choices(data.allowed, np.argsort(-means, kind="stable"))


def per_task_best_choices(data: EvaluationData, quality_weight: float, tau_usd: float) -> np.ndarray:
    """Per task, the model with the best mean reward on that task's rows (hindsight: one model per task)."""
    rewards = data.rewards(quality_weight, tau_usd)
    choices = np.zeros(len(data), dtype=np.int64)
    for task in sorted(set(data.tasks.tolist())):
        rows = np.flatnonzero(data.tasks == task)
        means = _mean_rewards(data, rewards, rows)
        choices[rows] = fixed_order_choices(data.allowed[rows], np.argsort(-means, kind="stable"))
    return choices


def oracle_choices(data: EvaluationData, quality_weight: float, tau_usd: float) -> np.ndarray:
    """Per row, the allowed model with the best reward (knows the outcomes: an upper bound)."""
    rewards = np.where(data.allowed, data.rewards(quality_weight, tau_usd), -np.inf)
    return np.argmax(rewards, axis=1)


def mean_score_and_cost(data: EvaluationData, model: int) -> tuple[float, float, int]:
    rows = data.allowed[:, model]
    if not rows.any():
        return float("nan"), float("nan"), 0
    return float(data.quality[rows, model].mean()), float(data.cost_usd[rows, model].mean()), int(rows.sum())


def automatic_pair(data: EvaluationData, window: float = PAIR_SCORE_WINDOW) -> tuple[int, int] | None:
    """(strong, cheap): the best single model by score, and the cheapest other model within ``window``.

    Cost ties go to the higher score. Without such a model the cheapest other model is taken. None when
    fewer than two models are allowed anywhere.
    """
    stats = [mean_score_and_cost(data, m) for m in range(len(data.models))]
    present = [m for m, (_, _, n) in enumerate(stats) if n > 0]
    if len(present) < 2:
        return None
    strong = max(present, key=lambda m: stats[m][0])
    others = [m for m in present if m != strong]
    close = [m for m in others if stats[m][0] >= stats[strong][0] - window] or others
    cheap = min(close, key=lambda m: (stats[m][1], -stats[m][0]))
    return strong, cheap


@dataclass(frozen=True)
class CurvePoint:
    strong_share: float
    score: float


def pgr(score: float, strong_score: float, cheap_score: float) -> float:
    return (score - cheap_score) / (strong_score - cheap_score)


def _interpolated(points: Sequence[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """(shares, PGRs) sorted by share, duplicates averaged, with the (0, 0) and (1, 1) ends."""
    by_share: dict[float, list[float]] = {}
    for share, value in [(0.0, 0.0), *points, (1.0, 1.0)]:
        by_share.setdefault(round(float(share), 9), []).append(float(value))
    shares = np.array(sorted(by_share))
    values = np.array([np.mean(by_share[s]) for s in shares])
    return shares, values


def apgr(points: Sequence[tuple[float, float]]) -> float:
    """Area under PGR over the strong share in [0, 1], the points joined by straight lines."""
    shares, values = _interpolated(points)
    return float(np.sum((shares[1:] - shares[:-1]) * (values[1:] + values[:-1]) / 2.0))


def cpt(points: Sequence[tuple[float, float]], fraction: float) -> float:
    """The smallest strong share at which the (interpolated) PGR reaches ``fraction``."""
    shares, values = _interpolated(points)
    if values[0] >= fraction:
        return float(shares[0])
    for i in range(1, shares.size):
        if values[i] >= fraction:
            low, high = values[i - 1], values[i]
            t = (fraction - low) / (high - low) if high > low else 1.0
            return float(shares[i - 1] + t * (shares[i] - shares[i - 1]))
    return 1.0  # unreachable: the (1, 1) end is always present


def oracle_ranking_points(quality_strong: np.ndarray, quality_cheap: np.ndarray) -> list[tuple[float, float]]:
    """(share, score) when prompts go to S in order of their true gain q_S − q_C (an upper bound)."""
    gain = np.sort(quality_strong - quality_cheap)[::-1]
    n = gain.size
    scores = quality_cheap.mean() + np.concatenate([[0.0], np.cumsum(gain)]) / n
    return [(k / n, float(scores[k])) for k in range(n + 1)]


def pair_summary(
    curve: Sequence[dict[str, float]], strong_score: float, cheap_score: float
) -> dict[str, float | None]:
    """APGR, CPT(50 %), CPT(80 %) and the worst shortfall below the random-mix line of a curve."""
    gap = strong_score - cheap_score
    below = max(
        (cheap_score + p["strong_share"] * gap - p["score"] for p in curve),
        default=0.0,
    )
    if gap <= 1e-12:  # no quality gap to recover: PGR is undefined
        return {"apgr": None, "cpt50": None, "cpt80": None, "max_below_random_mix": float(below)}
    points = [(p["strong_share"], pgr(p["score"], strong_score, cheap_score)) for p in curve]
    return {
        "apgr": apgr(points),
        "cpt50": cpt(points, 0.5),
        "cpt80": cpt(points, 0.8),
        "max_below_random_mix": float(below),
    }
