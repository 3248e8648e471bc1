"""Research probe: ridge, smoothed_mlp and their mean, side by side on item 4's numbers (issue 12).

Owns one comparison only (docs/training.md, "Per-prompt routing"): for each ``--data`` source, fit the
``ridge`` and ``smoothed_mlp`` regressors of ``offline --architecture reward_model`` once per training set
and score three routers with ``evaluate``'s code (``evaluate_network``: the sidecar's masking and greedy
rule): each regressor alone and ``mean`` = the mean of their predicted quality and cost per model, built
as one servable network (``mean_of_reward_models``). Two measurements per source:

- in distribution: score at w_q = 1, reward at w_q = 0.5, the default pair's APGR, the unweighted task
  mean at w_q = 1 over ``--id-tasks`` and the row mean over ``--ood-tasks``;
- leave-one-task-out (as ``leave_one_task_out``): for every task T, fit on the train split without T and
  score T's rows: APGR of the pair (best single on T, the cheapest model within 0.15 of it) and the
  worst shortfall below the random-mix line.

``--split validation`` never reads a test row: in distribution it fits on 85 % of the train split
(``splits.stratified_split``, seed 0) and scores the other 15 %; leave-one-task-out scores T's
*train*-split rows, which the fit without T never saw. ``--split test`` fits on the whole train split
and scores the test split (run it once, after choosing on validation). Writes ``probe.json`` into
``--out``.

    python -m trainer.offline.ensemble_probe --data ../shared/data/alpacaeval/alpacaeval.jsonl \\
        --cache-dir /work/cache/embeddings --split validation --out out/ensemble-val
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from barp_sidecar.model_names import canonical_model_name
from barp_sidecar.policy.encoder import BUILTIN_MODEL, EncoderSettings
from barp_sidecar.policy.network import PolicyNetwork
from trainer.offline.datasets import RoutingTable, load_table
from trainer.offline.evaluate_command import evaluate_network, evaluation_data, resolve_pairs
from trainer.offline.features import default_cache_dir, embed_table
from trainer.offline.reward_model_fit import RewardModelFitConfig, fit_reward_model, mean_of_reward_models
from trainer.offline.splits import stratified_split
from trainer.offline.train_command import tau_from_costs

ROUTERS = ("ridge", "smoothed_mlp", "mean")
WEIGHTS = [0.0, 0.5, 1.0]


def fit_routers(x: np.ndarray, train: RoutingTable, tau_usd: float, seed: int) -> dict[str, PolicyNetwork]:
    ridge, _ = fit_reward_model(x, train, tau_usd, RewardModelFitConfig(regressor="ridge", seed=seed))
    smoothed, _ = fit_reward_model(
        x, train, tau_usd, RewardModelFitConfig(regressor="smoothed_mlp", seed=seed)
    )
    return {"ridge": ridge, "smoothed_mlp": smoothed, "mean": mean_of_reward_models(ridge, smoothed)}


def score(
    networks: dict[str, PolicyNetwork],
    tau_usd: float,
    models: tuple[str, ...],
    rows: RoutingTable,
    x: np.ndarray,
) -> dict[str, dict[str, Any]]:
    """Per router: {"results", "pairs"} of ``evaluate`` on ``rows`` (x = their embeddings)."""
    policy_models = tuple(canonical_model_name(m) for m in models)
    data, keep, _ = evaluation_data(rows, policy_models, set(policy_models), Path(rows.source or "data"))
    pairs = resolve_pairs(None, data, set(policy_models))
    return {
        name: evaluate_network(network, tau_usd, x[keep], data, WEIGHTS, pairs, False)
        for name, network in networks.items()
    }


def in_distribution(
    report: dict[str, Any], id_tasks: Sequence[str], ood_tasks: Sequence[str]
) -> dict[str, float | None]:
    at_one = report["results"]["1.0"]["policy"]
    per_task = at_one["per_task"]
    id_scores = [per_task[t]["score"] for t in id_tasks if t in per_task]
    ood = [(per_task[t]["score"], per_task[t]["rows"]) for t in ood_tasks if t in per_task]
    pair = report["pairs"][0] if report["pairs"] else {}
    return {
        "rows": at_one["rows"],
        "score_w1": at_one["score"],
        "reward_w05": report["results"]["0.5"]["policy"]["reward"],
        "per_task_best_score_w1": report["results"]["1.0"]["per_task_best"]["score"],
        "per_task_best_reward_w05": report["results"]["0.5"]["per_task_best"]["reward"],
        "pair": f"{pair.get('strong')} / {pair.get('cheap')}",
        "pair_apgr": pair.get("apgr"),
        "pair_below_random": pair.get("max_below_random_mix"),
        "id_task_mean_w1": float(np.mean(id_scores)) if id_scores else None,
        "ood_row_mean_w1": float(sum(s * n for s, n in ood) / sum(n for _, n in ood)) if ood else None,
    }


def probe_source(args: argparse.Namespace, source: Path, settings: EncoderSettings) -> dict[str, Any]:
    table = load_table(source)
    x_all, _, _ = embed_table(table, settings, args.cache_dir or default_cache_dir(), False)
    x_all = np.asarray(x_all, dtype=np.float32)
    splits = np.asarray(table.splits)
    train_rows = np.flatnonzero(splits == "train")
    train = table.select(train_rows)
    if args.split == "validation":
        fit_index, check_index = stratified_split(train, 0.15, 0)
        fit_rows, check_rows = train_rows[fit_index], train_rows[check_index]
    else:
        fit_rows, check_rows = train_rows, np.flatnonzero(splits == "test")
    fit = table.select(fit_rows)
    tau = tau_from_costs(fit.cost_usd, args.tau_percentile, fit.observed_mask)
    networks = fit_routers(x_all[fit_rows], fit, tau, args.seed)
    reports = score(networks, tau, fit.models, table.select(check_rows), x_all[check_rows])
    result: dict[str, Any] = {
        "source": str(source),
        "in_distribution": {
            name: in_distribution(report, args.id_tasks, args.ood_tasks) for name, report in reports.items()
        },
        "loto": {name: [] for name in ROUTERS},
    }
    tasks = np.asarray(table.tasks)
    evaluated_split = "train" if args.split == "validation" else "test"
    for task in table.task_names:
        held = np.flatnonzero((splits == evaluated_split) & (tasks == task))
        fit_rows = np.flatnonzero((splits == "train") & (tasks != task))
        if held.size == 0 or fit_rows.size == 0:
            continue
        started = time.monotonic()
        fit = table.select(fit_rows)
        tau = tau_from_costs(fit.cost_usd, args.tau_percentile, fit.observed_mask)
        networks = fit_routers(x_all[fit_rows], fit, tau, args.seed)
        reports = score(networks, tau, fit.models, table.select(held), x_all[held])
        for name, report in reports.items():
            (pair,) = report["pairs"]
            result["loto"][name].append(
                {
                    "task": task,
                    "rows": int(held.size),
                    "strong": pair["strong"],
                    "cheap": pair["cheap"],
                    "apgr": pair["apgr"],
                    "max_below_random_mix": pair["max_below_random_mix"],
                }
            )
        line = ", ".join(f"{name} {result['loto'][name][-1]['apgr']}" for name in ROUTERS)
        print(f"{source.name} LOTO {task} ({time.monotonic() - started:.0f} s): {line}", flush=True)
    return result


def summary_lines(results: list[dict[str, Any]]) -> list[str]:
    lines = [f"| source | router | {' | '.join(next(iter(results[0]['in_distribution'].values())))} |"]
    for result in results:
        for name, row in result["in_distribution"].items():
            values = [
                "–" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v)) for v in row.values()
            ]
            lines.append(f"| {Path(result['source']).name} | {name} | {' | '.join(values)} |")
    lines.append("")
    lines.append(
        "| router | " + " | ".join(Path(r["source"]).name for r in results) + " | all tasks | worst below |"
    )
    for name in ROUTERS:
        cells, everything = [], []
        for result in results:
            apgrs = [t["apgr"] for t in result["loto"][name] if t["apgr"] is not None]
            everything.extend(apgrs)
            cells.append(f"{np.mean(apgrs):.3f} ({len(apgrs)})" if apgrs else "–")
        worst = max((t["max_below_random_mix"] for r in results for t in r["loto"][name]), default=0.0)
        mean_all = f"{np.mean(everything):.3f}" if everything else "–"
        lines.append(f"| {name} | {' | '.join(cells)} | {mean_all} | {worst:.3f} |")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, nargs="+", required=True)
    parser.add_argument("--split", choices=("validation", "test"), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--id-tasks", nargs="*", default=[], help="routerdc7: its in-distribution tasks")
    parser.add_argument("--ood-tasks", nargs="*", default=[], help="routerdc7: its out-of-distribution tasks")
    parser.add_argument("--tau-percentile", type=float, default=95.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--encoder-model", default=BUILTIN_MODEL, help="default: the shipped MiniLM-L6")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = EncoderSettings(model=args.encoder_model, max_seq_length=256, truncation="tail", device="cpu")
    results = []
    for source in args.data:
        results.append(probe_source(args, source, settings))
        (args.out / "probe.json").write_text(
            json.dumps({"split": args.split, "sources": results}, indent=2) + "\n"
        )
    print("\n".join(summary_lines(results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
