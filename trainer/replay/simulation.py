"""The replay protocol: stream a routing table's training rows as bandit feedback, score on its test rows.

Owns the stream (rows × passes, reshuffled each pass, seeded), the preference per event (fixed or
w_q ~ U(0, 1)), the checkpoints (every N events: greedy held-out reward, served mean reward, published
versions, model shares) and the references (best single model, per-task best, oracle on the same test
rows), and an optional pool schedule (arms added to or retired from the pool at given event counts,
through the learner's own pool change; the checkpoints then also carry each task's shares). A learner
takes part through the ``OnlineRouter`` protocol (choose, observe, greedy_arms); the
production trainer's adapter is ``trainer_router.py``, Vowpal Wabbit's ``vw_peer.py``. No I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from barp_sidecar.policy.reward import reward, reward_array

QUALITY_WEIGHT_GRID: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))


@dataclass(frozen=True)
class ReplayData:
    """Train rows (streamed) and test rows (never streamed), embeddings precomputed; ``names[a]``: arm a."""

    names: tuple[str, ...]
    tau_usd: float
    train_x: np.ndarray  # [N, D] float32
    train_quality: np.ndarray  # [N, K]
    train_cost_usd: np.ndarray  # [N, K]
    train_tasks: tuple[str, ...]
    test_x: np.ndarray  # [M, D]
    test_quality: np.ndarray  # [M, K]
    test_cost_usd: np.ndarray  # [M, K]
    test_tasks: tuple[str, ...]

    def test_rewards(self, quality_weight: float) -> np.ndarray:
        return reward_array(self.test_quality, self.test_cost_usd, quality_weight, self.tau_usd)


def evaluation_weights(quality_weight: float | None) -> tuple[float, ...]:
    """The preferences a policy is scored at: the fixed one, or (random w) the grid 0, 0.1 … 1."""
    return QUALITY_WEIGHT_GRID if quality_weight is None else (quality_weight,)


def references(data: ReplayData, quality_weight: float | None) -> dict[str, float]:
    """best_single (best fixed model on the test rows), per_task_best (best model per task on the train
    rows, applied to the test rows), oracle; each the mean reward, averaged over the evaluation weights."""
    best_single, per_task, oracle = [], [], []
    train_tasks, test_tasks = np.asarray(data.train_tasks), np.asarray(data.test_tasks)
    for w in evaluation_weights(quality_weight):
        test = data.test_rewards(w)
        train = reward_array(data.train_quality, data.train_cost_usd, w, data.tau_usd)
        best_single.append(float(test.mean(axis=0).max()))
        overall = int(np.argmax(train.mean(axis=0)))
        choice = np.full(len(test_tasks), overall)
        for task in set(data.train_tasks):
            choice[test_tasks == task] = int(np.argmax(train[train_tasks == task].mean(axis=0)))
        per_task.append(float(test[np.arange(len(choice)), choice].mean()))
        oracle.append(float(test.max(axis=1).mean()))
    return {
        "best_single": float(np.mean(best_single)),
        "per_task_best": float(np.mean(per_task)),
        "oracle": float(np.mean(oracle)),
    }


class OnlineRouter(Protocol):
    """A learner under replay: decides with exploration, learns from what it is shown, decides greedily."""

    name: str

    def choose(self, event_index: int, x: np.ndarray, quality_weight: float) -> tuple[int, float]:
        """(arm, propensity) of the serving decision."""
        ...

    def observe(
        self,
        event_index: int,
        x: np.ndarray,
        quality_weight: float,
        arm: int,
        propensity: float,
        quality: float,
        cost_usd: float,
    ) -> None: ...

    def greedy_arms(self, xs: np.ndarray, quality_weight: float) -> np.ndarray:
        """The greedy decision (what would serve without exploration) for each row of ``xs``."""
        ...

    def published_versions(self) -> int: ...

    def change_pool(self, names: tuple[str, ...]) -> None:
        """Serve the arms ``names`` from now on (a pool change); routers that cannot raise ValueError."""
        ...


@dataclass(frozen=True)
class PoolEvent:
    """Arm ``name`` joins (``add``) or leaves (``retire``) the pool before the event numbered ``events``."""

    events: int
    action: str  # "add" or "retire"
    name: str


def starting_pool(names: tuple[str, ...], schedule: Sequence[PoolEvent]) -> tuple[str, ...]:
    """The pool before the schedule runs: every arm but those added later."""
    added = {p.name for p in schedule if p.action == "add"}
    return tuple(n for n in names if n not in added)


@dataclass(frozen=True)
class Checkpoint:
    events: int
    greedy_reward: float
    served_reward: float  # mean reward of the decisions served since the previous checkpoint
    published_versions: int
    share: dict[str, float]  # each arm's share of the greedy decisions, by name
    # With a pool schedule only: per task, each arm's share of the greedy decisions on its test rows.
    task_share: dict[str, dict[str, float]] | None = None

    def to_json(self) -> dict[str, object]:
        document: dict[str, object] = {
            "events": self.events,
            "greedy_reward": self.greedy_reward,
            "served_reward": self.served_reward,
            "published_versions": self.published_versions,
            "model_share": dict(self.share),  # the published key of the replay JSON
        }
        if self.task_share is not None:
            document["task_share"] = {task: dict(s) for task, s in self.task_share.items()}
        return document


@dataclass
class RunResult:
    learner: str
    seed: int
    checkpoints: list[Checkpoint] = field(default_factory=list)
    # Gate decisions (trainer learners only): {"published": n, "rejected": n, "skipped": n}.
    gate: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "learner": self.learner,
            "seed": self.seed,
            "checkpoints": [c.to_json() for c in self.checkpoints],
        }


def event_rows(num_rows: int, passes: int, seed: int) -> np.ndarray:
    """Row indices of the stream: ``passes`` passes, each a fresh permutation (seeded)."""
    rng = np.random.default_rng([seed, 0])
    return np.concatenate([rng.permutation(num_rows) for _ in range(passes)])


def event_quality_weights(num_events: int, quality_weight: float | None, seed: int) -> np.ndarray:
    """The preference of each event: fixed, or (None) w_q ~ U(0, 1) per event (seeded)."""
    if quality_weight is not None:
        return np.full(num_events, quality_weight)
    return np.random.default_rng([seed, 2]).random(num_events)


def score_greedy(
    router: OnlineRouter, data: ReplayData, quality_weight: float | None
) -> tuple[float, dict[str, float], dict[str, dict[str, float]]]:
    """Mean held-out reward of the greedy decisions (averaged over the evaluation weights), each arm's
    share of those decisions by name, and the same shares per task."""
    rewards, counts = [], np.zeros(len(data.names))
    rows = np.arange(len(data.test_tasks))
    tasks = np.asarray(data.test_tasks)
    per_task = {task: np.zeros(len(data.names)) for task in sorted(set(data.test_tasks))}
    for w in evaluation_weights(quality_weight):
        arms = np.asarray(router.greedy_arms(data.test_x, w), dtype=np.int64)
        rewards.append(float(data.test_rewards(w)[rows, arms].mean()))
        counts += np.bincount(arms, minlength=len(data.names))
        for task, task_counts in per_task.items():
            task_counts += np.bincount(arms[tasks == task], minlength=len(data.names))

    def shares(c: np.ndarray) -> dict[str, float]:
        return {name: float(v) for name, v in zip(data.names, c / max(c.sum(), 1), strict=True)}

    return float(np.mean(rewards)), shares(counts), {task: shares(c) for task, c in per_task.items()}


def run_replay(
    router: OnlineRouter,
    data: ReplayData,
    passes: int,
    quality_weight: float | None,
    seed: int,
    every_events: int,
    pool_schedule: Sequence[PoolEvent] = (),
) -> RunResult:
    """Stream the training rows through ``router``; a checkpoint every ``every_events`` and at the end.
    ``pool_schedule``: the router starts with ``starting_pool`` and changes its pool at those events."""
    rows = event_rows(len(data.train_tasks), passes, seed)
    weights = event_quality_weights(len(rows), quality_weight, seed)
    result = RunResult(router.name, seed)
    served: list[float] = []
    pool = list(starting_pool(data.names, pool_schedule))
    changes = {p.events: [q for q in pool_schedule if q.events == p.events] for p in pool_schedule}
    for index, (row, w) in enumerate(zip(rows, weights, strict=True)):
        for change in changes.get(index, []):
            pool = [*pool, change.name] if change.action == "add" else [n for n in pool if n != change.name]
        if index in changes:
            router.change_pool(tuple(pool))
        x = data.train_x[row]
        arm, propensity = router.choose(index, x, float(w))
        quality = float(data.train_quality[row, arm])
        cost = float(data.train_cost_usd[row, arm])
        served.append(float(reward(quality, cost, float(w), data.tau_usd)))
        router.observe(index, x, float(w), arm, propensity, quality, cost)
        events = index + 1
        if events % every_events == 0 or events == len(rows):
            greedy, share, task_share = score_greedy(router, data, quality_weight)
            result.checkpoints.append(
                Checkpoint(
                    events,
                    greedy,
                    float(np.mean(served)),
                    router.published_versions(),
                    share,
                    task_share if pool_schedule else None,
                )
            )
            served = []
    return result


def mean_curve(runs: Sequence[RunResult], key: str) -> tuple[list[int], list[float]]:
    """(events, mean over runs of ``key``) at each checkpoint the runs share."""
    events = [c.events for c in runs[0].checkpoints]
    values = [float(np.mean([getattr(run.checkpoints[i], key) for run in runs])) for i in range(len(events))]
    return events, values
