"""Research probe: per-prompt routers on cached embeddings, scored on a source's test or validation split.

Owns one comparison only (docs/training.md, "Per-prompt routing"): for one ``--data`` source, estimate
every model's quality and normalised cost per test prompt with full-information routers fitted on the
train split, route greedily at w_q = 1 and 0.5 among each row's observed models, and print score and
reward next to the hindsight per-task best (``evaluate``'s metrics, ``routing_metrics.summarize``):

- ``ridge``: the default ``reward_model`` regression (``fit_ridge``);
- ``logistic``: per model, an L2-regularised logistic regression of the quality on [x; 1] (λ per model from
  ``LOGISTIC_LAMBDAS`` on ``fit_ridge``'s validation slice; soft labels for scores in (0, 1)); the cost
  estimate is ridge's. Not a served regressor (measured in docs/training.md);
- ``task_mean``: the train means of the prompt's *true* task (a deployment that is told the task);
- ``knn<k>``: the mean outcome of the k most cosine-similar train prompts;
- ``eb<k_task>/<k_res>/<β>``: empirical Bayes (``smoothed_targets`` asked about the test prompts): the
  task prior of the k_task nearest prompts plus β × the neighbour residual of the k_res nearest.

The served router (``--regressor smoothed_mlp``) distils the ``eb`` estimate into the policy head; score
it with ``barp-trainer evaluate``. ``--id-tasks`` adds the unweighted mean score over those tasks.
``--encoder-model`` compares encoders on the same rows; ``--rows-per-split N`` probes a seeded sample of
N train and N test rows (an encoder too slow to embed a whole set on this machine, issue 12 item 4).
``--split validation`` never reads a test row: the routers fit on 85 % of the train split and are scored
on the other 15 % (``splits.stratified_split``, seed 0), for choosing between routers before the test
split is looked at.

    python -m trainer.offline.router_probe --data ../shared/data/routerdc7/routerdc7.jsonl \\
        --cache-dir /work/cache/embeddings --id-tasks mmlu gsm8k cmmlu arc_challenge humaneval
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

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
    validation_rows,
)
from trainer.offline.splits import stratified_split
from trainer.offline.train_command import tau_from_costs

QUALITY_WEIGHTS = (1.0, 0.5)
KNN_K = (25, 50, 100, 200, 400)
EB_SETTINGS = ((25, 25, 0.0), (25, 25, 0.5), (25, 400, 0.5), (100, 200, 0.5), (25, 400, 1.0))
LOGISTIC_LAMBDAS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
SPLITS = ("test", "validation")


def _logistic_column(z: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """θ minimising mean BCE(zθ, y) + λ‖θ[:-1]‖² (z ends with the 1 column; y in [0, 1]), by L-BFGS."""
    theta = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    penalty = torch.ones(z.shape[1], dtype=torch.float64)
    penalty[-1] = 0.0
    optimizer = torch.optim.LBFGS([theta], max_iter=200, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = torch.nn.functional.binary_cross_entropy_with_logits(z @ theta, y)
        value = value + lam * (penalty * theta * theta).sum()
        value.backward()
        return value

    optimizer.step(loss)
    return theta.detach()


def fit_logistic(x: np.ndarray, quality: np.ndarray, observed: np.ndarray, seed: int = 0) -> np.ndarray:
    """θ [K, D+1]: per model, q̂(x) = sigmoid([x; 1] θ_a) fitted on the rows that observed it, λ chosen on
    ``fit_ridge``'s validation slice (log loss), then refitted on all of them."""
    z = torch.from_numpy(np.concatenate([np.asarray(x, dtype=np.float64), np.ones((len(x), 1))], axis=1))
    held = validation_rows(len(x), seed)
    theta = np.zeros((quality.shape[1], z.shape[1]))
    for model in range(quality.shape[1]):
        rows = observed[:, model]
        if not rows.any():
            continue
        y = torch.from_numpy(np.clip(quality[:, model], 0.0, 1.0).astype(np.float64))
        fit, check = rows & ~held, rows & held
        lam = LOGISTIC_LAMBDAS[len(LOGISTIC_LAMBDAS) // 2]
        if fit.sum() >= 2 and check.any():
            losses = []
            for candidate in LOGISTIC_LAMBDAS:
                column = _logistic_column(z[fit], y[fit], candidate)
                check_loss = torch.nn.functional.binary_cross_entropy_with_logits(z[check] @ column, y[check])
                losses.append(float(check_loss))
            lam = LOGISTIC_LAMBDAS[int(np.argmin(losses))]
        theta[model] = _logistic_column(z[rows], y[rows], lam).numpy()
    return theta


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
    z_test = np.concatenate([x_test, np.ones((len(x_test), 1))], axis=1)
    out = {"ridge": z_test @ theta.T}
    k = len(train.models)
    quality = 1.0 / (1.0 + np.exp(-(z_test @ fit_logistic(x_train, train.quality, train.observed_mask).T)))
    out["logistic"] = np.concatenate([quality, out["ridge"][:, k:]], axis=1)
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


def fit_and_scored_rows(table: RoutingTable, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(rows the routers fit on, rows they are scored on): the train and test splits, or for
    ``validation`` 85 % and 15 % of each task's train rows (``stratified_split``, seed 0)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    splits = np.asarray(table.splits)
    train_rows = np.flatnonzero(splits == "train")
    if split == "test":
        return train_rows, np.flatnonzero(splits == "test")
    fit, scored = stratified_split(table.select(train_rows), 0.15, 0)
    return train_rows[fit], train_rows[scored]


def probe(
    table: RoutingTable, x: np.ndarray, id_tasks: Sequence[str], split: str = "test"
) -> list[dict[str, Any]]:
    train_rows, test_rows = fit_and_scored_rows(table, split)
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
    parser.add_argument(
        "--split", choices=SPLITS, default="test", help="validation: fit on 85%% of train, score the rest"
    )
    args = parser.parse_args(argv)
    table = sample_rows(load_table(args.data), args.rows_per_split, args.seed)
    settings = EncoderSettings(model=args.encoder_model, max_seq_length=256, truncation="tail", device="cpu")
    x, _, _ = embed_table(table, settings, args.cache_dir or default_cache_dir(), False)
    print("| router | w_q = 1 score (= reward) | w_q = 0.5 reward | ID task mean at w_q = 1 |")
    print("|---|---:|---:|---:|")
    for row in probe(table, np.asarray(x, dtype=np.float32), args.id_tasks, args.split):
        id_mean = "" if row["id_task_mean_w1"] is None else f"{100 * row['id_task_mean_w1']:.2f}"
        print(f"| {row['router']} | {row['score_w1']:.4f} | {row['reward_w05']:.4f} | {id_mean} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
