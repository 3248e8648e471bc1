"""Research probe: how much per-prompt signal do the embeddings carry, with full information and no bandit?

Owns one measurement only: on a source's train split, fit full-information per-model outcome predictors
(kNN on cosine similarity, and ``baselines.mlp_full_info``) restricted to one strong/cheap pair, then
score them on the test split with ``evaluate``'s pair metrics (APGR, CPT, below random mix). If these
ceilings sit at APGR ≈ 0.5, the encoder/data limit per-prompt routing, not the bandit learner.

    python -m trainer.offline.signal_probe --data ../shared/data/alpacaeval/alpacaeval.jsonl \\
        --cache-dir /work/cache/embeddings [--pair STRONG CHEAP]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from barp_sidecar.policy.encoder import BUILTIN_MODEL, EncoderSettings
from trainer.offline import baselines
from trainer.offline import routing_metrics as rm
from trainer.offline.datasets import RoutingTable, load_table
from trainer.offline.evaluate_command import PAIR_SWEEP
from trainer.offline.features import default_cache_dir, embed_table


def pair_table(table: RoutingTable, strong: str, cheap: str) -> RoutingTable:
    """The rows that observed both models, with only those two columns (strong first)."""
    columns = [table.models.index(strong), table.models.index(cheap)]
    rows = np.flatnonzero(table.observed_mask[:, columns].all(axis=1))
    part = table.select(rows)
    return RoutingTable(
        prompts=part.prompts,
        tasks=part.tasks,
        splits=part.splits,
        models=(strong, cheap),
        quality=part.quality[:, columns],
        cost_usd=part.cost_usd[:, columns],
        source=table.source,
    )


def curve(choose: baselines.Chooser, test: RoutingTable) -> list[dict[str, float]]:
    points = []
    for w in PAIR_SWEEP:
        to_strong = choose(w) == 0
        points.append(
            {
                "strong_share": float(to_strong.mean()),
                "score": float(np.where(to_strong, test.quality[:, 0], test.quality[:, 1]).mean()),
            }
        )
    return points


def probe(table: RoutingTable, x: np.ndarray, strong: str, cheap: str, seed: int) -> dict[str, Any]:
    splits = np.asarray(table.splits)
    train_rows, test_rows = np.flatnonzero(splits == "train"), np.flatnonzero(splits == "test")
    train, test = table.select(train_rows), table.select(test_rows)
    x_train, x_test = x[train_rows], x[test_rows]
    tau = float(np.percentile(train.cost_usd, 95))
    strong_score, cheap_score = float(test.quality[:, 0].mean()), float(test.quality[:, 1].mean())
    routers = {
        "knn25": baselines.knn(train, x_train, x_test, tau),
        "mlp_full_info": baselines.mlp_full_info(train, x_train, x_test, tau, seed=seed),
        "per_task_best": baselines.per_task_best(train, test.tasks, tau),
    }
    out: dict[str, Any] = {
        "strong": strong,
        "cheap": cheap,
        "train_rows": len(train),
        "test_rows": len(test),
        "strong_score": strong_score,
        "cheap_score": cheap_score,
    }
    for name, choose in routers.items():
        out[name] = rm.pair_summary(curve(choose, test), strong_score, cheap_score)
    oracle = [
        {"strong_share": s, "score": v}
        for s, v in rm.oracle_ranking_points(test.quality[:, 0], test.quality[:, 1])
    ]
    out["oracle_ranking"] = rm.pair_summary(oracle, strong_score, cheap_score)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--pair", nargs=2, metavar=("STRONG", "CHEAP"), default=None)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--encoder-model", default=BUILTIN_MODEL, help="sentence-transformers name/path or hash:<dim>"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the result to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    table = load_table(args.data)
    if args.pair:
        strong, cheap = args.pair
    else:  # the evaluate default on the test split: best single, cheapest within 0.15
        test = table.where(split="test")
        data = rm.EvaluationData(
            test.models, test.quality, test.cost_usd, test.observed_mask, np.asarray(test.tasks)
        )
        pair = rm.automatic_pair(data)
        assert pair is not None
        strong, cheap = test.models[pair[0]], test.models[pair[1]]
    part = pair_table(table, strong, cheap)
    settings = EncoderSettings(model=args.encoder_model, max_seq_length=256, truncation="tail", device="cpu")
    x, _, _ = embed_table(part, settings, args.cache_dir or default_cache_dir(), False)
    text = json.dumps(probe(part, x, strong, cheap, args.seed), indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
