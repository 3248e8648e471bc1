"""Research probe: per-prompt routers on cached embeddings, scored on a source's test split.

Owns one comparison only (docs/training.md, "Per-prompt routing"): for one ``--data`` source, estimate
every model's quality and normalised cost per test prompt with full-information routers fitted on the
train split, route greedily at w_q = 1 and 0.5 among each row's observed models, and print score and
reward next to the hindsight per-task best (``evaluate``'s metrics, ``routing_metrics.summarize``):

- ``ridge``: the default ``reward_model`` regression (``fit_ridge``);
- ``task_mean``: the train means of the prompt's *true* task (a deployment that is told the task);
- ``knn<k>``: the mean outcome of the k most cosine-similar train prompts;
- ``eb<k_task>/<k_res>/<β>``: empirical Bayes (``smoothed_targets`` asked about the test prompts): the
  task prior of the k_task nearest prompts plus β × the neighbour residual of the k_res nearest.

The served router (``--regressor smoothed_mlp``) distils the ``eb`` estimate into the policy head; score
it with ``barp-trainer evaluate``. ``--id-tasks`` adds the unweighted mean score over those tasks.
``--encoder-model`` compares encoders on the same rows; ``--rows-per-split N`` probes a seeded sample of
N train and N test rows (an encoder too slow to embed a whole set on this machine, issue 12 item 4).

    python -m trainer.offline.router_probe --data ../shared/data/routerdc7/routerdc7.jsonl \\
        --cache-dir /work/cache/embeddings --id-tasks mmlu gsm8k cmmlu arc_challenge humaneval
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from barp_sidecar.policy.encoder import BUILTIN_MODEL, EncoderSettings
from trainer.offline import routing_metrics as rm
from trainer.offline.datasets import RoutingTable, load_table
from trainer.offline.features import default_cache_dir, embed_table
from trainer.offline.reward_model_fit import (
    RewardModelFitConfig,
    fit_ridge,
    neighbour_means,
    regression_targets,
    smoothed_targets,
)
from trainer.offline.train_command import tau_from_costs

QUALITY_WEIGHTS = (1.0, 0.5)
KNN_K = (25, 50, 100, 200, 400)
EB_SETTINGS = ((25, 25, 0.0), (25, 25, 0.5), (25, 400, 0.5), (100, 200, 0.5), (25, 400, 1.0))


def route(data: rm.EvaluationData, estimates: np.ndarray, tau_usd: float) -> dict[float, dict[str, Any]]:
    """Greedy results at each w_q of ``estimates`` [N, 2K] (q̂ columns, then ĉ)."""
    k = len(data.models)
    results = {}
    for w in QUALITY_WEIGHTS:
        value = np.where(data.allowed, w * estimates[:, :k] - (1 - w) * estimates[:, k:], -np.inf)
        results[w] = rm.summarize(data, rm.one_hot(value.argmax(axis=1), k), w, tau_usd)
    return results


def estimates(
    train: RoutingTable, x_train: np.ndarray, test: RoutingTable, x_test: np.ndarray, tau_usd: float
) -> dict[str, np.ndarray]:
    """Every probed router's [n_test, 2K] estimates."""
    targets = regression_targets(train, tau_usd)
    theta, _ = fit_ridge(x_train, targets, RewardModelFitConfig())
    out = {"ridge": np.concatenate([x_test, np.ones((len(x_test), 1))], axis=1) @ theta.T}
    observed = targets.observed.astype(np.float64)
    means = {}
    for task in set(train.tasks):
        rows = np.asarray(train.tasks) == task
        means[task] = (targets.values * observed)[rows].sum(axis=0) / np.maximum(observed[rows].sum(0), 1)
    overall = (targets.values * observed).sum(axis=0) / np.maximum(observed.sum(axis=0), 1)
    out["task_mean"] = np.stack([means.get(task, overall) for task in test.tasks])
    for k in KNN_K:
        out[f"knn{k}"] = neighbour_means(x_train, targets.values, observed, k, x_test)
    for k_task, k_residual, weight in EB_SETTINGS:
        config = RewardModelFitConfig(
            smoothing_task_k=k_task, smoothing_residual_k=k_residual, smoothing_residual_weight=weight
        )
        smoothed = smoothed_targets(x_train, train.tasks, targets, config, queries=x_test)
        out[f"eb{k_task}/{k_residual}/{weight}"] = smoothed.values
    return out


def sample_rows(table: RoutingTable, rows_per_split: int, seed: int) -> RoutingTable:
    """At most ``rows_per_split`` rows of the train and of the test split, seeded, in table order."""
    if rows_per_split <= 0:
        return table
    rng = np.random.default_rng(seed)
    splits = np.asarray(table.splits)
    keep = []
    for split in ("train", "test"):
        rows = np.flatnonzero(splits == split)
        keep.append(rng.choice(rows, min(rows_per_split, len(rows)), replace=False))
    return table.select(np.sort(np.concatenate(keep)))


def probe(table: RoutingTable, x: np.ndarray, id_tasks: Sequence[str]) -> list[dict[str, Any]]:
    splits = np.asarray(table.splits)
    train_rows, test_rows = np.flatnonzero(splits == "train"), np.flatnonzero(splits == "test")
    train, test = table.select(train_rows), table.select(test_rows)
    tau = tau_from_costs(train.cost_usd, 95.0, train.observed_mask)
    data = rm.EvaluationData(
        test.models, test.quality, test.cost_usd, test.observed_mask, np.asarray(test.tasks)
    )
    routers = {
        "per_task_best (hindsight)": {
            w: rm.summarize(
                data, rm.one_hot(rm.per_task_best_choices(data, w, tau), len(data.models)), w, tau
            )
            for w in QUALITY_WEIGHTS
        }
    }
    for name, estimate in estimates(train, x[train_rows], test, x[test_rows], tau).items():
        routers[name] = route(data, estimate, tau)
    rows = []
    for name, results in routers.items():
        at_one = results[1.0]
        id_scores = [at_one["per_task"][t]["score"] for t in id_tasks if t in at_one["per_task"]]
        rows.append(
            {
                "router": name,
                "score_w1": at_one["score"],
                "reward_w05": results[0.5]["reward"],
                "id_task_mean_w1": float(np.mean(id_scores)) if id_scores else None,
            }
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--id-tasks", nargs="*", default=[])
    parser.add_argument(
        "--encoder-model", default=BUILTIN_MODEL, help="sentence-transformers name/path or hash:<dim>"
    )
    parser.add_argument("--rows-per-split", type=int, default=0, help="seeded sample (0 = every row)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    table = sample_rows(load_table(args.data), args.rows_per_split, args.seed)
    settings = EncoderSettings(model=args.encoder_model, max_seq_length=256, truncation="tail", device="cpu")
    x, _, _ = embed_table(table, settings, args.cache_dir or default_cache_dir(), False)
    print("| router | w_q = 1 score (= reward) | w_q = 0.5 reward | ID task mean at w_q = 1 |")
    print("|---|---:|---:|---:|")
    for row in probe(table, np.asarray(x, dtype=np.float32), args.id_tasks):
        id_mean = "" if row["id_task_mean_w1"] is None else f"{100 * row['id_task_mean_w1']:.2f}"
        print(f"| {row['router']} | {row['score_w1']:.4f} | {row['reward_w05']:.4f} | {id_mean} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
