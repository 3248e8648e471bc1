"""``barp-trainer reproduce``: train BaRP and every baseline, evaluate in- and out-of-distribution, report.

Owns the evaluation protocol of DESIGN §8 as one command: in-distribution = train split -> test split;
out-of-distribution = train on arc_challenge + winogrande (train split) -> mbpp (test split). Writes
``report.json``, ``report.md`` and ``pareto.png`` into ``--out``. Deterministic under ``--seeds``.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from barp_sidecar.errors import DataError
from barp_sidecar.policy.network import PolicyNetwork
from trainer.offline import baselines
from trainer.offline.datasets import RoutingTable, load_tables
from trainer.offline.evaluation import (
    QUALITY_WEIGHT_GRID,
    Chooser,
    evaluate_over_grid,
    grid_key,
    mean_over_seeds,
)
from trainer.offline.features import default_cache_dir, embed_table
from trainer.offline.plots import write_pareto_png
from trainer.offline.reinforce import greedy_actions
from trainer.offline.report import add_headroom, check_targets, write_markdown
from trainer.offline.simulator import BanditSimulator
from trainer.offline.train_command import (
    add_training_arguments,
    encoder_settings,
    fit_policy,
    tau_from_costs,
    training_config,
)

OOD_TRAIN_TASKS = ("arc_challenge", "winogrande")
OOD_TEST_TASKS = ("mbpp",)
BANDIT_BASELINES = ("linucb", "lin_ts", "eps_greedy")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser)
    parser.add_argument(
        "--out", type=Path, required=True, help="directory for report.{md,json} and pareto.png"
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="BaRP seeds (≥ 3 for the report)"
    )
    parser.add_argument("--bandit-events", type=int, default=12000, help="events per LinUCB/TS/ε-greedy run")
    parser.add_argument(
        "--mlp-steps", type=int, default=1500, help="training steps of the mlp_full_info baseline"
    )


def _greedy(network: PolicyNetwork, embeddings: np.ndarray, quality_weight: float) -> np.ndarray:
    return greedy_actions(network, embeddings, quality_weight)


def _choices(actions: np.ndarray, names: tuple[str, ...]) -> dict[str, float]:
    counts = np.bincount(actions, minlength=len(names)) / max(1, actions.size)
    return {names[i]: round(float(c), 4) for i, c in enumerate(counts) if c > 0}


def evaluate_setting(
    name: str,
    train: RoutingTable,
    train_x: np.ndarray,
    test: RoutingTable,
    test_x: np.ndarray,
    tau_usd: float,
    args: argparse.Namespace,
    show_progress: bool,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """({router: {W_Q: metrics}}, extras) for one train -> test setting."""
    results: dict[str, Any] = {}
    extras: dict[str, Any] = {"train_rows": len(train), "test_rows": len(test), "tau": tau_usd}
    runs = []
    for seed in args.seeds:
        network, reveals = fit_policy(
            train_x, train, tau_usd, training_config(args, seed), show_progress, f"{name} barp seed {seed}"
        )
        runs.append(evaluate_over_grid(test, functools.partial(_greedy, network, test_x), tau_usd))
        if seed == args.seeds[0]:
            extras["barp_choices_seed0"] = {
                grid_key(w): _choices(greedy_actions(network, test_x, w), test.models)
                for w in QUALITY_WEIGHT_GRID
            }
            extras["bandit_reveals_per_run"] = reveals
    results["barp"], results["barp_std"] = mean_over_seeds(runs)
    choosers: dict[str, Chooser] = {
        "oracle": baselines.oracle(test, tau_usd),
        "random": baselines.random_router(len(test), len(test.models), args.seeds[0]),
        "knn": baselines.knn(train, train_x, test_x, tau_usd),
        "mlp_full_info": baselines.mlp_full_info(
            train, train_x, test_x, tau_usd, seed=args.seeds[0], steps=args.mlp_steps
        ),
        "per_task_best": baselines.per_task_best(train, test.tasks, tau_usd),
        "best_single_on_train": lambda w: np.full(
            len(test), baselines.best_single_action(train, w, tau_usd), dtype=np.int64
        ),
    }
    for kind in tqdm(BANDIT_BASELINES, desc=f"{name} bandit baselines", disable=not show_progress):
        choosers[kind] = baselines.linear_bandit_router(
            kind, train_x, test_x, BanditSimulator(train), tau_usd, args.seeds[0], args.bandit_events
        )
    for action, model in enumerate(test.models):
        choosers[f"model:{model}"] = baselines.fixed_action(action, len(test))
    for router, choose in choosers.items():
        results[router] = evaluate_over_grid(test, choose, tau_usd)
    return results, extras


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    started = time.monotonic()
    show = not args.no_progress
    args.out.mkdir(parents=True, exist_ok=True)
    table = load_tables(args.data)
    if not table.fully_observed:
        raise DataError(
            f"{table.source}: reproduce's full-information baselines need every model on every row, and "
            "these sources do not share one model set; train with `offline` (several --data) and compare "
            "with `evaluate` on each source"
        )
    settings = encoder_settings(args)
    embeddings, encoder_id, _ = embed_table(table, settings, args.cache_dir or default_cache_dir(), show)
    torch.set_num_threads(args.threads)
    splits = np.asarray(table.splits)
    tasks = np.asarray(table.tasks)
    report: dict[str, Any] = {}
    extras: dict[str, Any] = {}

    train_rows = np.flatnonzero(splits == "train")
    test_rows = np.flatnonzero(splits == "test")
    tau_usd = tau_from_costs(table.cost_usd[train_rows], args.tau_percentile)
    report["in_distribution"], extras["in_distribution"] = evaluate_setting(
        "in-dist",
        table.select(train_rows),
        embeddings[train_rows],
        table.select(test_rows),
        embeddings[test_rows],
        tau_usd,
        args,
        show,
    )
    ood_train = np.flatnonzero((splits == "train") & np.isin(tasks, OOD_TRAIN_TASKS))
    ood_test = np.flatnonzero((splits == "test") & np.isin(tasks, OOD_TEST_TASKS))
    if ood_train.size and ood_test.size:
        tau_ood = tau_from_costs(table.cost_usd[ood_train], args.tau_percentile)
        report["out_of_distribution"], extras["out_of_distribution"] = evaluate_setting(
            "ood",
            table.select(ood_train),
            embeddings[ood_train],
            table.select(ood_test),
            embeddings[ood_test],
            tau_ood,
            args,
            show,
        )
    else:
        report["out_of_distribution"], extras["out_of_distribution"] = {}, {"skipped": "tasks not in data"}
    report["tau"] = tau_usd
    report["tau_percentile"] = args.tau_percentile
    report["tau_out_of_distribution"] = extras["out_of_distribution"].get("tau")
    report["seeds"] = list(args.seeds)
    report["headroom_captured"] = add_headroom(report)
    report["targets"] = check_targets(report)
    report["details"] = {
        **extras,
        "data": [str(p) for p in args.data],
        "rows": len(table),
        "skipped_rows": table.skipped_rows,
        "encoder": {"id": encoder_id, **{k: v for k, v in vars(settings).items() if k != "device"}},
        "training_config": training_config(args, args.seeds[0]).to_dict(),
        "runtime_s": round(time.monotonic() - started, 1),
    }
    (args.out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    write_markdown(report, args.out / "report.md")
    if report["out_of_distribution"]:
        write_pareto_png(report, args.out / "pareto.png")
    print(f"wrote {args.out}/report.md, report.json, pareto.png in {time.monotonic() - started:.0f}s")
    for name, target in report["targets"].items():
        print(f"  {'MET ' if target['met'] else 'MISS'} {name}: {target['detail']}")
    return 0
