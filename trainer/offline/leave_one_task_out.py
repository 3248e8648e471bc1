"""Research harness: leave-one-task-out per-prompt routing (train without task T, evaluate on T's test rows).

Owns the loop only: for each task T of each ``--data`` source, train a policy with ``offline``'s code on
that source's train split minus T, then score it on T's test split with ``evaluate``'s code, and print
APGR / CPT for the pair (best single model on T, the cheapest model within 0.15 of it) — where a random
mix scores 0.5 — and the worst shortfall below the random-mix line. Writes ``loto.json`` into ``--out``.

    python -m trainer.offline.leave_one_task_out --data ../shared/data/routerbench --out out/loto \\
        --cache-dir /work/cache/embeddings [--steps 1500] [--architecture reward_model]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from barp_sidecar.policy.calibration import select_calibration
from barp_sidecar.policy.checkpoint import load_checkpoint
from trainer.offline.datasets import load_table
from trainer.offline.evaluate_command import evaluate_table
from trainer.offline.features import default_cache_dir, embed_table
from trainer.offline.train_command import (
    add_architecture_arguments,
    add_training_arguments,
    build_manifest,
    encoder_settings,
    tau_from_costs,
    train_network,
    write_checkpoint,
)


def run_task(args: argparse.Namespace, source: Path, task: str, work: Path) -> dict[str, Any]:
    table = load_table(source)
    train = table.where(split="train")
    train = train.select([i for i, t in enumerate(train.tasks) if t != task])
    test = table.where(split="test", tasks=[task])
    settings = encoder_settings(args)
    x, encoder_id, dim = embed_table(train, settings, args.cache_dir or default_cache_dir(), False)
    tau = tau_from_costs(train.cost_usd, args.tau_percentile, train.observed_mask)
    torch.set_num_threads(args.threads)
    network, config, _ = train_network(args, x, train, tau, args.seed, False)
    manifest = build_manifest(network, train, settings, encoder_id, dim, tau, config, {"left_out": task})
    policy_dir = work / task
    write_checkpoint(policy_dir, network, manifest, force=True, calibration=select_calibration(x))
    report = evaluate_table(
        load_checkpoint(policy_dir),
        policy_dir,
        test,
        source,
        split="test",
        cache_dir=args.cache_dir or default_cache_dir(),
        weights=[0.0, 0.5, 1.0],
    )
    (pair,) = report["pairs"]
    return {
        "source": str(source),
        "task": task,
        "train_rows": len(train),
        "test_rows": len(test),
        "strong": pair["strong"],
        "cheap": pair["cheap"],
        "apgr": pair["apgr"],
        "cpt50": pair["cpt50"],
        "cpt80": pair["cpt80"],
        "apgr_expected": pair["expected"]["apgr"],
        "apgr_oracle_ranking": pair["oracle_ranking"]["apgr"],
        "max_below_random_mix": pair["max_below_random_mix"],
        "score_at_w1": report["results"]["1.0"]["policy"]["score"],
        "per_task_best_score_at_w1": report["results"]["1.0"]["per_task_best"]["score"],
    }


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def describe(row: dict[str, Any]) -> str:
    return (
        f"{row['task']}: {row['strong']} / {row['cheap']}: APGR {_fmt(row['apgr'])} "
        f"(expected {_fmt(row['apgr_expected'])}, oracle ranking {_fmt(row['apgr_oracle_ranking'])}), "
        f"below random {row['max_below_random_mix']:+.4f}, score@1 {row['score_at_w1']:.3f} "
        f"(per-task best {row['per_task_best_score_at_w1']:.3f})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_training_arguments(parser)
    add_architecture_arguments(parser)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", nargs="+", default=None, help="only these tasks (default: every task)")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="loto-") as scratch:
        for source in args.data:
            table = load_table(source)
            for task in table.task_names:
                if args.tasks and task not in args.tasks:
                    continue
                if not table.where(split="test", tasks=[task]).prompts:
                    continue
                started = time.monotonic()
                row = run_task(args, source, task, Path(scratch))
                row["seconds"] = round(time.monotonic() - started, 1)
                rows.append(row)
                print(describe(row), flush=True)
    apgrs = [r["apgr"] for r in rows if r["apgr"] is not None]
    summary = {
        "tasks": rows,
        "mean_apgr": float(np.mean(apgrs)) if apgrs else None,
        "worst_below_random_mix": max((r["max_below_random_mix"] for r in rows), default=None),
    }
    (args.out / "loto.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"mean APGR {summary['mean_apgr']}, worst below random {summary['worst_below_random_mix']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
