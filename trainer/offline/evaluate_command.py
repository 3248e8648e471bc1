"""``barp-trainer evaluate``: score a trained policy on a log (e.g. a user's own) against simple alternatives.

Owns the command: arguments, input checks, the composition load policy -> load log -> embed (cached) ->
decisions at every w_q (greedy and probability-weighted) -> metrics -> ``report.json`` / ``report.md`` /
``quality_vs_cost.png``. The metrics live in ``routing_metrics``, the files in ``evaluate_report``.

Decisions go through the sidecar's own code: ``policy.mask.allowed_mask`` for ``--models`` (the rules
of a request's allowed_models), ``PolicyNetwork.probabilities(x, w, allowed)`` (masked logits, what
``PolicyInference.run_batch`` calls) and the greedy rule of ``routing.exploration.choose_model`` (vectorised
here, pinned equal to it by a test), with ``allowed`` per row = the models the log observed there ∩
``--models``. Every input error raises ``DataError`` naming the file:line, the models or the option, and
then nothing is written to ``--out``: the report is written to a staging directory renamed at the end.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from barp_sidecar.errors import DataError, InvalidArgument
from barp_sidecar.model_names import canonical_model_name
from barp_sidecar.policy.builtin import builtin_policy_dir
from barp_sidecar.policy.checkpoint import LoadedPolicy, load_checkpoint
from barp_sidecar.policy.loading import encoder_model_for
from barp_sidecar.policy.mask import allowed_mask, models_in
from barp_sidecar.policy.network import PolicyNetwork
from trainer.offline import routing_metrics as rm
from trainer.offline.datasets import RoutingTable, load_table
from trainer.offline.evaluate_report import write_report
from trainer.offline.evaluation import QUALITY_WEIGHT_GRID, grid_key
from trainer.offline.features import default_cache_dir, embed_prompts, progress_bar

SPLITS = ("test", "train", "all")
# Strong-model shares of a pair are traced over this finer w_q grid (plus the report's own grid).
PAIR_SWEEP = tuple(round(0.02 * i, 2) for i in range(51))
INFERENCE_BATCH_ROWS = 4096


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy", type=Path, default=None, help="checkpoint directory (default: the shipped policy)"
    )
    parser.add_argument("--data", type=Path, required=True, help="RouterBench CSV dir, .pkl or .jsonl log")
    parser.add_argument("--split", choices=SPLITS, default="test", help="which rows to evaluate")
    parser.add_argument(
        "--models", nargs="+", default=None, help="restrict every router to these models (default: all)"
    )
    parser.add_argument(
        "--quality-weights",
        type=float,
        nargs="+",
        default=list(QUALITY_WEIGHT_GRID),
        help="w_q values to report (default 0.0 0.1 … 1.0)",
    )
    parser.add_argument(
        "--pair",
        nargs=2,
        action="append",
        metavar=("STRONG", "CHEAP"),
        default=None,
        help="a strong/cheap pair for APGR/CPT (repeatable; default: the best single model and the "
        "cheapest model within 0.15 of its score, or the two --models)",
    )
    parser.add_argument("--out", type=Path, required=True, help="directory for report.{md,json} and the plot")
    parser.add_argument("--force", action="store_true", help="replace an existing --out directory")
    parser.add_argument("--cache-dir", type=Path, default=None, help="embedding cache (default ~/.cache/…)")
    parser.add_argument(
        "--encoder-model", default=None, help="override the manifest's encoder (same model family!)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


class PolicyScorer:
    """π(·|x, w) of one policy on fixed embeddings, masked per row, through the sidecar's functions."""

    def __init__(self, network: PolicyNetwork, embeddings: np.ndarray) -> None:
        self._network = network.eval()
        self._embeddings = np.asarray(embeddings, dtype=np.float32)
        self._x = torch.from_numpy(self._embeddings)

    def subset(self, rows: np.ndarray) -> PolicyScorer:
        return PolicyScorer(self._network, self._embeddings[rows])

    def probabilities(self, quality_weight: float, allowed: np.ndarray) -> np.ndarray:
        """[N, K] float64; exactly 0 on models not allowed on a row."""
        out = []
        with torch.inference_mode():
            for start in range(0, self._x.shape[0], INFERENCE_BATCH_ROWS):
                x = self._x[start : start + INFERENCE_BATCH_ROWS]
                mask = torch.from_numpy(np.ascontiguousarray(allowed[start : start + INFERENCE_BATCH_ROWS]))
                weights = torch.full((x.shape[0],), float(quality_weight))
                out.append(self._network.probabilities(x, weights, mask).numpy().astype(np.float64))
        if not out:
            return np.zeros((0, allowed.shape[1]))
        return np.concatenate(out)

    @staticmethod
    def greedy(probabilities: np.ndarray, allowed: np.ndarray) -> np.ndarray:
        """The sidecar's greedy choice (``routing.exploration.choose_model``, GREEDY: the most probable
        allowed model, lowest index on ties) on all rows at once; pinned equal to it by a test. The trainer
        may not import the sidecar's request path (tests/test_import_layers.py), hence the vectorised twin."""
        return np.argmax(np.where(allowed, probabilities, -1.0), axis=1).astype(np.int64)


def resolve_models(requested: list[str] | None, policy_models: tuple[str, ...]) -> set[str]:
    """Canonical names of ``--models`` (all policy models when None), through the sidecar's mask rules
    (``barp_sidecar.policy.mask.allowed_mask``: duplicates and unknown names are errors)."""
    names = tuple(canonical_model_name(m) for m in requested or ())
    try:
        mask = allowed_mask(policy_models, names)
    except InvalidArgument as exc:
        raise DataError(f"--models: {str(exc).removeprefix(f'{exc.field}: ')}") from exc
    return set(models_in(policy_models, mask))


def evaluation_data(
    table: RoutingTable, policy_models: tuple[str, ...], selected: set[str], data: Path
) -> tuple[rm.EvaluationData, np.ndarray, dict[str, Any]]:
    """(data in the policy's model order, indices of the table rows kept, facts for the report)."""
    log_models = set(table.models)
    shared = [m for m in policy_models if m in log_models]
    if not shared:
        raise DataError(
            f"{data}: the log shares no model with the policy (log models {sorted(log_models)}; "
            f"policy models {list(policy_models)})"
        )
    chosen = [m for m in shared if m in selected]
    if not chosen:
        raise DataError(
            f"{data}: none of --models {sorted(selected)} is in the log (log models {sorted(log_models)})"
        )
    column = {m: i for i, m in enumerate(table.models)}
    k = len(policy_models)
    quality = np.zeros((len(table), k))
    cost = np.zeros((len(table), k))
    allowed = np.zeros((len(table), k), dtype=bool)
    observed = table.observed_mask
    for j, model in enumerate(policy_models):
        if model in chosen:
            quality[:, j] = table.quality[:, column[model]]
            cost[:, j] = table.cost_usd[:, column[model]]
            allowed[:, j] = observed[:, column[model]]
    keep = np.flatnonzero(allowed.any(axis=1))
    if keep.size == 0:
        raise DataError(f"{data}: no row has an outcome for any of the models {chosen}")
    evaluation = rm.EvaluationData(
        models=policy_models,
        quality=quality[keep],
        cost_usd=cost[keep],
        allowed=allowed[keep],
        tasks=np.asarray(table.tasks)[keep],
    )
    facts = {
        "models_evaluated": chosen,
        "log_models_unknown_to_policy": sorted(log_models - set(policy_models)),
        "rows_without_an_allowed_model": int(len(table) - keep.size),
    }
    return evaluation, keep, facts


def resolve_pairs(
    requested: list[list[str]] | None, data: rm.EvaluationData, selected: set[str]
) -> list[tuple[int, int]]:
    index = {m: i for i, m in enumerate(data.models)}
    if requested:
        pairs = []
        for strong, cheap in requested:
            names = (canonical_model_name(strong), canonical_model_name(cheap))
            unknown = [n for n in names if n not in index or n not in selected]
            if unknown:
                raise DataError(f"--pair: unknown or unselected model(s) {unknown}")
            if names[0] == names[1]:
                raise DataError(f"--pair: strong and cheap are the same model {names[0]!r}")
            pairs.append((index[names[0]], index[names[1]]))
        return pairs
    available = [m for m in range(len(data.models)) if data.allowed[:, m].any()]
    if len(available) == 2:
        a, b = available
        score_a, score_b = (rm.mean_score_and_cost(data, m)[0] for m in (a, b))
        return [(a, b) if score_a >= score_b else (b, a)]
    pair = rm.automatic_pair(data)
    return [] if pair is None else [pair]


def evaluate_pair(
    scorer: PolicyScorer,
    data: rm.EvaluationData,
    strong: int,
    cheap: int,
    weights: list[float],
) -> dict[str, Any]:
    """The policy masked to {strong, cheap} on the rows that observed both, over a fine w_q sweep."""
    rows = np.flatnonzero(data.allowed[:, strong] & data.allowed[:, cheap])
    result: dict[str, Any] = {
        "strong": data.models[strong],
        "cheap": data.models[cheap],
        "rows": int(rows.size),
    }
    if rows.size == 0:
        result["skipped"] = "no row observed both models"
        return result
    mask = np.zeros((rows.size, len(data.models)), dtype=bool)
    mask[:, [strong, cheap]] = True
    q_strong, q_cheap = data.quality[rows, strong], data.quality[rows, cheap]
    c_strong, c_cheap = data.cost_usd[rows, strong], data.cost_usd[rows, cheap]
    strong_score, cheap_score = float(q_strong.mean()), float(q_cheap.mean())
    result.update(
        strong_score=strong_score,
        cheap_score=cheap_score,
        strong_cost_usd=float(c_strong.mean()),
        cheap_cost_usd=float(c_cheap.mean()),
    )
    pair_scorer = scorer.subset(rows)
    greedy_curve, expected_curve = [], []
    for w in sorted(set(PAIR_SWEEP) | {round(w, 6) for w in weights}):
        probabilities = pair_scorer.probabilities(w, mask)
        choices = PolicyScorer.greedy(probabilities, mask)
        to_strong = choices == strong
        greedy_curve.append(
            {
                "quality_weight": w,
                "strong_share": float(to_strong.mean()),
                "score": float(np.where(to_strong, q_strong, q_cheap).mean()),
                "cost_usd": float(np.where(to_strong, c_strong, c_cheap).mean()),
            }
        )
        p_strong = probabilities[:, strong]
        expected_curve.append(
            {
                "quality_weight": w,
                "strong_share": float(p_strong.mean()),
                "score": float((p_strong * q_strong + (1 - p_strong) * q_cheap).mean()),
                "cost_usd": float((p_strong * c_strong + (1 - p_strong) * c_cheap).mean()),
            }
        )
    for curve in (greedy_curve, expected_curve):
        for point in curve:
            point["random_mix_score"] = cheap_score + point["strong_share"] * (strong_score - cheap_score)
    result.update(rm.pair_summary(greedy_curve, strong_score, cheap_score))
    result["expected"] = rm.pair_summary(expected_curve, strong_score, cheap_score)
    oracle_points = rm.oracle_ranking_points(q_strong, q_cheap)
    oracle_curve = [{"strong_share": s, "score": v} for s, v in oracle_points]
    result["oracle_ranking"] = rm.pair_summary(oracle_curve, strong_score, cheap_score)
    result["curve"] = greedy_curve
    result["expected_curve"] = expected_curve
    return result


def evaluate_network(
    network: PolicyNetwork,
    tau: float,
    embeddings: np.ndarray,
    data: rm.EvaluationData,
    weights: list[float],
    pairs: list[tuple[int, int]],
    show_progress: bool,
) -> dict[str, Any]:
    """{"results": {W_Q: {router: metrics}}, "pairs": [...]} for one policy network (τ = its manifest's)
    on one set of rows; research harnesses pass networks that are not in a checkpoint."""
    scorer = PolicyScorer(network, embeddings)
    k = len(data.models)
    results: dict[str, Any] = {}
    with progress_bar(
        total=len(weights) + len(pairs), desc="evaluate", unit="step", enabled=show_progress
    ) as bar:
        for w in weights:
            probabilities = scorer.probabilities(w, data.allowed)
            greedy = PolicyScorer.greedy(probabilities, data.allowed)
            entry: dict[str, Any] = {
                "policy": rm.summarize(data, rm.one_hot(greedy, k), w, tau),
                "policy_expected": rm.summarize(data, probabilities, w, tau),
            }
            for model in range(k):
                rows = np.flatnonzero(data.allowed[:, model])
                if rows.size:
                    choices = np.full(rows.size, model)
                    entry[f"model:{data.models[model]}"] = rm.summarize(
                        data, rm.one_hot(choices, k), w, tau, rows
                    )
            entry["best_single"] = rm.summarize(
                data, rm.one_hot(rm.best_single_choices(data, w, tau), k), w, tau
            )
            entry["per_task_best"] = rm.summarize(
                data, rm.one_hot(rm.per_task_best_choices(data, w, tau), k), w, tau
            )
            entry["oracle"] = rm.summarize(data, rm.one_hot(rm.oracle_choices(data, w, tau), k), w, tau)
            results[weight_key(w)] = entry
            bar.update(1)
        pair_results = []
        for strong, cheap in pairs:
            pair_results.append(evaluate_pair(scorer, data, strong, cheap, weights))
            bar.update(1)
    return {"results": results, "pairs": pair_results}


def weight_key(quality_weight: float) -> str:
    """report.json's key of a w_q: "0.0" … "1.0" on the 0.1 grid, else the shortest form ("0.25")."""
    return grid_key(quality_weight) if round(quality_weight, 1) == quality_weight else f"{quality_weight:g}"


def _check_weights(weights: list[float]) -> list[float]:
    bad = [w for w in weights if not 0.0 <= w <= 1.0]
    if bad:
        raise DataError(f"--quality-weights: {bad} outside [0, 1]")
    return sorted(set(weights))


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise DataError(f"--out {out} exists and is not empty; pass --force to replace it")


def _publish(staging: Path, out: Path) -> None:
    """Move the finished report directory into place (replacing ``out``)."""
    if out.exists():
        if out.is_dir():
            shutil.rmtree(out)
        else:
            out.unlink()
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(staging), str(out))


def evaluate_table(
    policy: LoadedPolicy,
    policy_path: Path,
    table: RoutingTable,
    source: Path,
    *,
    split: str,
    cache_dir: Path,
    models: list[str] | None = None,
    pairs: list[list[str]] | None = None,
    weights: list[float] | None = None,
    encoder_model: str | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """The report dict of ``policy`` on the rows of ``table`` (already restricted to ``split``)."""
    started = time.monotonic()
    weights = _check_weights(list(QUALITY_WEIGHT_GRID) if weights is None else weights)
    policy_models = tuple(canonical_model_name(a) for a in policy.manifest.models)
    selected = resolve_models(models, policy_models)
    if len(table) == 0:
        raise DataError(f"{source}: the {split!r} split has no rows")
    data, keep, facts = evaluation_data(table, policy_models, selected, source)
    pair_indices = resolve_pairs(pairs, data, selected)
    identity = policy.manifest.encoder
    settings = identity.settings(encoder_model_for(identity, encoder_model), "cpu")
    prompts = [table.prompts[i] for i in keep]
    embeddings, encoder_id, dim = embed_prompts(prompts, settings, cache_dir, show_progress)
    if dim != identity.dim:
        raise DataError(f"--encoder-model: dim {dim} != the policy's {identity.dim}")
    evaluated = evaluate_network(
        policy.network, policy.manifest.tau_usd, embeddings, data, weights, pair_indices, show_progress
    )
    tasks, counts = np.unique(data.tasks, return_counts=True)
    return {
        "policy": {
            "path": str(policy_path),
            "version": policy.version,
            "weights_sha256": policy.manifest.weights_sha256,
            "models": list(policy_models),
            "tau_usd": policy.manifest.tau_usd,
            "encoder": {
                "id": encoder_id,
                "max_seq_length": identity.max_seq_length,
                "truncation": identity.truncation,
            },
        },
        "data": {
            "path": str(source),
            "split": split,
            "rows": len(data),
            "tasks": {str(t): int(c) for t, c in zip(tasks, counts, strict=True)},
            **facts,
        },
        "quality_weights": weights,
        **evaluated,
        "runtime_s": round(time.monotonic() - started, 1),
    }


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """The report dict of ``barp-trainer evaluate`` (no files written)."""
    weights = _check_weights(list(args.quality_weights))
    policy_path = args.policy or builtin_policy_dir()
    policy = load_checkpoint(policy_path)
    resolve_models(args.models, tuple(canonical_model_name(a) for a in policy.manifest.models))
    table = load_table(args.data)
    if args.split != "all":
        table = table.where(split=args.split)
    return evaluate_table(
        policy,
        policy_path,
        table,
        args.data,
        split=args.split,
        cache_dir=args.cache_dir or default_cache_dir(),
        models=args.models,
        pairs=args.pair,
        weights=weights,
        encoder_model=args.encoder_model,
        show_progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    _check_out(args.out, args.force)
    report = evaluate(args)
    staging_root = Path(
        tempfile.mkdtemp(
            prefix=f".{args.out.name}.", dir=args.out.parent if args.out.parent.exists() else None
        )
    )
    try:
        staging = staging_root / "report"
        staging.mkdir()
        write_report(report, staging)
        _publish(staging, args.out)
    finally:
        shutil.rmtree(staging_root, ignore_errors=True)
    print(f"wrote {args.out}/report.md, report.json, quality_vs_cost.png ({report['runtime_s']:.0f}s)")
    print(summary_lines(report))
    return 0


def summary_lines(report: dict[str, Any], weights: tuple[str, ...] = ("0.5", "1.0")) -> str:
    """A few lines for the console: policy vs best single vs per-task best at some w_q, and the pairs."""
    data = report["data"]
    lines = [
        f"{data['path']} ({data['split']} split, {data['rows']} rows, {len(data['tasks'])} tasks); "
        "hindsight baselines on these rows:",
        f"{'w_q':>4} {'router':<16} {'score':>7} {'cost_usd':>10} {'reward':>8}",
    ]
    for key in (k for k in weights if k in report["results"]):
        for router in ("policy", "policy_expected", "best_single", "per_task_best", "oracle"):
            entry = report["results"][key][router]
            score, cost, reward = entry["score"], entry["cost_usd"], entry["reward"]
            lines.append(f"{key:>4} {router:<16} {score:7.4f} {cost:10.3g} {reward:8.4f}")
    for pair in report["pairs"]:
        if pair.get("apgr") is not None:
            lines.append(
                f"pair {pair['strong']} / {pair['cheap']}: APGR {pair['apgr']:.3f} (random 0.500, "
                f"oracle ranking {pair['oracle_ranking']['apgr']:.3f}), CPT(50%) {pair['cpt50']:.3f}, "
                f"CPT(80%) {pair['cpt80']:.3f}"
            )
    return "\n".join(lines)
