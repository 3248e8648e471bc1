"""Hyper-parameter sweep on a validation slice of the TRAIN split (never the test split).

Owns the research-log harness behind docs/training.md: split train 85/15 by task (seed 0), train BaRP
variants on the 85 % and print greedy validation rewards next to the reference routers. Usage:

    python -m trainer.offline.sweep --data ../shared/data/routerbench --cache-dir .cache/embeddings \\
        --references --variants '[{}, {"direct_term": "expectation", "seeds": [0, 1, 2]}]'

Each variant is a JSON object of ``OfflineTrainingConfig`` fields plus an optional ``"seeds"`` list.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from barp_sidecar.policy.encoder import TRUNCATION_SIDES, EncoderSettings
from trainer.offline import baselines
from trainer.offline.datasets import load_table
from trainer.offline.evaluation import evaluate_over_grid, mean_over_seeds
from trainer.offline.features import default_cache_dir, embed_table
from trainer.offline.reinforce import OfflineTrainingConfig, greedy_actions, train_offline
from trainer.offline.simulator import BanditSimulator
from trainer.offline.splits import stratified_split
from trainer.offline.train_command import tau_from_costs

SHOWN = ("0.0", "0.3", "0.5", "0.7", "0.8", "0.9", "1.0")
HIGH = tuple(f"{w / 10:.1f}" for w in range(3, 11))


def summary(name: str, results: dict) -> str:
    rewards = " ".join(f"{results[k]['reward']:.3f}" for k in SHOWN)
    mean = np.mean([results[k]["reward"] for k in HIGH])
    return f"{name[:90]:90s} {rewards} | mean(0.3-1) {mean:.4f} | score@1 {100 * results['1.0']['score']:.1f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--truncation", choices=TRUNCATION_SIDES, default="tail")
    parser.add_argument("--variants", default="[{}]", help="JSON list of config overrides")
    parser.add_argument("--references", action="store_true", help="also print reference routers")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    table = load_table(args.data).where(split="train")
    x, _, _ = embed_table(
        table,
        EncoderSettings(truncation=args.truncation, device="cpu"),
        args.cache_dir or default_cache_dir(),
    )
    train_rows, validation_rows = stratified_split(table, 0.15, 0)
    train, validation = table.select(train_rows), table.select(validation_rows)
    x_train, x_validation = x[train_rows], x[validation_rows]
    tau_usd = tau_from_costs(train.cost_usd)
    print(f"w_q: {' '.join(SHOWN)}")
    if args.references:
        references = {
            "per_task_best": baselines.per_task_best(train, validation.tasks, tau_usd),
            "mlp_full_info": baselines.mlp_full_info(train, x_train, x_validation, tau_usd),
            "knn": baselines.knn(train, x_train, x_validation, tau_usd),
            "oracle": baselines.oracle(validation, tau_usd),
        }
        for name, choose in references.items():
            print(summary(name, evaluate_over_grid(validation, choose, tau_usd)), flush=True)
    for variant in json.loads(args.variants):
        seeds = variant.pop("seeds", [0])
        started = time.monotonic()
        runs = []
        for seed in seeds:
            config = OfflineTrainingConfig(**{**variant, "seed": seed})
            policy = train_offline(x_train, BanditSimulator(train), tau_usd, config)
            choose = functools.partial(greedy_actions, policy, x_validation)
            runs.append(evaluate_over_grid(validation, choose, tau_usd))
        mean, std = mean_over_seeds(runs)
        label = f"{json.dumps(variant)} seeds={seeds} {time.monotonic() - started:.0f}s"
        per_seed = " ".join(f"{np.mean([run[k]['reward'] for k in HIGH]):.4f}" for run in runs)
        print(
            f"{summary(label, mean)} | per seed {per_seed} | std r@0.9 {std['0.9']['reward']:.3f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
