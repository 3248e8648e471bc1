"""Research script: does fine-tuning MiniLM-L6 for routing beat the frozen encoder? (issue 12, item 4)

Owns one measurement (docs/training.md, "A fine-tuned encoder"): fine-tune the shipped MiniLM-L6 end to
end on a source's TRAIN split — mean pooling, L2 normalisation (as served) and a linear head predicting
every model's quality, masked squared error over the observed (row, model) outcomes — early-stopped on a
validation slice of the train split (stratified by task, ``--seed``; never the test split), then score on
the TEST split with ``evaluate``'s metrics (``routing_metrics.summarize``), side by side:

- ``ridge (frozen)``: the served regression (``fit_ridge``) on the frozen encoder's embeddings;
- ``head (fine-tuned)``: the fine-tuned head's q̂ (ĉ from the ridge on the fine-tuned embeddings);
- ``ridge (fine-tuned)``: ``fit_ridge`` on the fine-tuned encoder's embeddings (the served head type);
- ``per_task_best`` and ``best_single`` (hindsight references).

The head starts as the frozen ridge's quality columns (fitted on the fit slice), so step 0 *is* the
frozen router and the validation check can keep it. Bounded by ``--max-epochs`` and ``--max-train-s``;
CPU, ``--threads`` torch threads. It changes nothing that is served: shipping a fine-tuned encoder would
need policies that carry their encoder weights (see docs/training.md).

    python -m trainer.offline.encoder_finetune --data ../shared/data/alpacaeval/alpacaeval.jsonl \\
        --out out/finetune-alpacaeval
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from barp_sidecar.errors import DataError
from barp_sidecar.policy.encoder import EncoderSettings, builtin_model_path, padded_batch, truncated_token_ids
from barp_sidecar.policy.minilm import MiniLMSentenceModel, load_minilm
from trainer.offline import routing_metrics as rm
from trainer.offline.datasets import RoutingTable, load_table
from trainer.offline.reward_model_fit import (
    RegressionTargets,
    RewardModelFitConfig,
    fit_ridge,
    regression_targets,
)
from trainer.offline.router_probe import sample_rows
from trainer.offline.splits import stratified_split
from trainer.offline.train_command import tau_from_costs

QUALITY_WEIGHTS = (1.0, 0.5)
INFERENCE_BATCH = 64


@dataclass(frozen=True)
class FineTuneConfig:
    """Hyper-parameters of one fine-tuning run (recorded in the result JSON)."""

    max_seq_length: int = 128
    batch_size: int = 32
    encoder_learning_rate: float = 2e-5
    head_learning_rate: float = 1e-3
    weight_decay: float = 0.01
    max_epochs: int = 3
    # Validation checks: every this many optimiser steps (0 = once per epoch); stop after this many
    # checks without a better validation score.
    check_every_steps: int = 0
    patience_checks: int = 2
    max_train_s: float = 1800.0
    validation_fraction: float = 0.15
    threads: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if not 8 <= self.max_seq_length <= 512:
            raise ValueError("max_seq_length must be in [8, 512]")
        if min(self.batch_size, self.max_epochs, self.patience_checks, self.threads) <= 0:
            raise ValueError("batch_size, max_epochs, patience_checks and threads must be positive")
        if self.check_every_steps < 0 or not self.max_train_s > 0:
            raise ValueError("check_every_steps must be ≥ 0 and max_train_s positive")


@dataclass
class Outcomes:
    """What the router is trained to predict: quality [N, K] and its observed mask [N, K]."""

    quality: np.ndarray
    observed: np.ndarray


class RoutingEncoder(nn.Module):
    """The sentence model, L2-normalised embeddings (as the sidecar serves them) and a linear q̂ head."""

    def __init__(self, encoder: MiniLMSentenceModel, num_models: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.get_embedding_dimension(), num_models)

    def embed(self, input_ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        features = {
            "input_ids": input_ids,
            "attention_mask": attention,
            "token_type_ids": torch.zeros_like(input_ids),
        }
        pooled = self.encoder(features)["sentence_embedding"]
        return nn.functional.normalize(pooled, p=2, dim=1)

    def forward(self, input_ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(input_ids, attention))


def length_batches(lengths: Sequence[int], batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of similar length (little padding): sort each 16-batch pool by length, cut."""
    order = rng.permutation(len(lengths))
    pool = batch_size * 16
    batches: list[np.ndarray] = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort([lengths[i] for i in chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def _tensors(token_ids: Sequence[Sequence[int]], tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = padded_batch(token_ids, tokenizer)
    return torch.from_numpy(ids), torch.from_numpy(mask)


def embed_and_predict(
    model: RoutingEncoder, token_ids: Sequence[Sequence[int]], tokenizer: Any
) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings [N, dim], head outputs [N, K]) in the caller's row order, length-sorted passes."""
    order = np.argsort([len(ids) for ids in token_ids], kind="stable")
    dim, k = model.head.in_features, model.head.out_features
    embeddings, outputs = np.zeros((len(order), dim), np.float32), np.zeros((len(order), k), np.float32)
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), INFERENCE_BATCH):
            rows = order[start : start + INFERENCE_BATCH]
            embedding = model.embed(*_tensors([token_ids[i] for i in rows], tokenizer))
            embeddings[rows] = embedding.numpy()
            outputs[rows] = model.head(embedding).numpy()
    return embeddings, outputs


def masked_squared_error(predicted: torch.Tensor, outcomes: Outcomes, rows: np.ndarray) -> torch.Tensor:
    target = torch.from_numpy(outcomes.quality[rows]).float()
    mask = torch.from_numpy(outcomes.observed[rows]).float()
    return ((predicted - target) ** 2 * mask).sum() / mask.sum().clamp(min=1.0)


def validation_score(quality_hat: np.ndarray, outcomes: Outcomes, tasks: np.ndarray) -> float:
    """Task-mean quality of the greedy (w_q = 1) choice among each row's observed models."""
    value = np.where(outcomes.observed, quality_hat, -np.inf)
    chosen = outcomes.quality[np.arange(len(value)), value.argmax(axis=1)]
    return float(np.mean([chosen[tasks == t].mean() for t in sorted(set(tasks.tolist()))]))


def initialise_head_from_ridge(model: RoutingEncoder, x_fit: np.ndarray, outcomes: Outcomes) -> None:
    """The head = ``fit_ridge``'s quality columns on the frozen fit-slice embeddings (step 0 = ridge)."""
    targets = RegressionTargets(
        values=np.where(outcomes.observed, outcomes.quality, 0.0), observed=outcomes.observed
    )
    theta, _ = fit_ridge(x_fit, targets, RewardModelFitConfig())
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(theta[:, :-1]).float())
        model.head.bias.copy_(torch.from_numpy(theta[:, -1]).float())


def fine_tune(
    model: RoutingEncoder,
    tokenizer: Any,
    token_ids: Sequence[Sequence[int]],
    outcomes: Outcomes,
    tasks: np.ndarray,
    fit_rows: np.ndarray,
    check_rows: np.ndarray,
    config: FineTuneConfig,
    log: Any = None,
) -> dict[str, Any]:
    """Train on ``fit_rows``, keep the state with the best validation score on ``check_rows`` (step 0
    included), load it back into ``model``; returns the history and the stop reason."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    optimiser = torch.optim.AdamW(
        [
            {"params": model.encoder.parameters(), "lr": config.encoder_learning_rate},
            {"params": model.head.parameters(), "lr": config.head_learning_rate},
        ],
        weight_decay=config.weight_decay,
    )
    check_ids = [token_ids[i] for i in check_rows]
    check_outcomes = Outcomes(outcomes.quality[check_rows], outcomes.observed[check_rows])

    def check() -> float:
        _, quality_hat = embed_and_predict(model, check_ids, tokenizer)
        return validation_score(quality_hat, check_outcomes, tasks[check_rows])

    started = time.monotonic()
    best = check()
    best_state, best_step = copy.deepcopy(model.state_dict()), 0
    history: list[dict[str, float]] = [{"step": 0, "epoch": 0.0, "validation_score": best, "elapsed_s": 0.0}]
    lengths = [len(token_ids[i]) for i in fit_rows]
    step, stale, stop = 0, 0, "max_epochs"
    for epoch in range(config.max_epochs):
        batches = length_batches(lengths, config.batch_size, rng)
        every = config.check_every_steps or len(batches)
        for number, batch in enumerate(batches, start=1):
            rows = fit_rows[batch]
            model.train()
            loss = masked_squared_error(
                model(*_tensors([token_ids[i] for i in rows], tokenizer)), outcomes, rows
            )
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            step += 1
            out_of_time = time.monotonic() - started > config.max_train_s
            if number % every and number != len(batches) and not out_of_time:
                continue
            score = check()
            elapsed = time.monotonic() - started
            history.append(
                {
                    "step": step,
                    "epoch": epoch + number / len(batches),
                    "validation_score": score,
                    "loss": loss.item(),
                    "elapsed_s": round(elapsed, 1),
                }
            )
            if log is not None:
                print(
                    f"step {step} epoch {epoch + number / len(batches):.2f} loss {loss.item():.4f} "
                    f"validation {score:.4f} (best {best:.4f}) {elapsed:.0f} s",
                    file=log,
                    flush=True,
                )
            if score > best:
                best, best_state, best_step, stale = score, copy.deepcopy(model.state_dict()), step, 0
            else:
                stale += 1
            if out_of_time or stale >= config.patience_checks:
                stop = "max_train_s" if out_of_time else "patience"
                break
        if stop != "max_epochs":
            break
    model.load_state_dict(best_state)
    return {
        "best_step": best_step,
        "best_validation_score": best,
        "steps": step,
        "stop": stop,
        "train_s": round(time.monotonic() - started, 1),
        "history": history,
    }


def _ridge_estimates(x_train: np.ndarray, train: RoutingTable, x_test: np.ndarray, tau: float) -> np.ndarray:
    theta, _ = fit_ridge(x_train, regression_targets(train, tau), RewardModelFitConfig())
    return np.concatenate([x_test, np.ones((len(x_test), 1))], axis=1) @ theta.T


def score_routers(
    test: RoutingTable,
    estimates: dict[str, np.ndarray],
    tau: float,
    id_tasks: Sequence[str],
    ood_tasks: Sequence[str],
) -> dict[str, dict[str, Any]]:
    """Per router: w_q = 1 score, task mean, ID task mean, OOD row mean; reward at each w_q."""
    data = rm.EvaluationData(
        test.models, test.quality, test.cost_usd, test.observed_mask, np.asarray(test.tasks)
    )
    k = len(test.models)
    choices: dict[str, dict[float, np.ndarray]] = {
        "per_task_best": {w: rm.per_task_best_choices(data, w, tau) for w in QUALITY_WEIGHTS},
        "best_single": {w: rm.best_single_choices(data, w, tau) for w in QUALITY_WEIGHTS},
    }
    for name, estimate in estimates.items():
        choices[name] = {
            w: np.where(data.allowed, w * estimate[:, :k] - (1 - w) * estimate[:, k:], -np.inf).argmax(axis=1)
            for w in QUALITY_WEIGHTS
        }
    ood_rows = np.isin(data.tasks, list(ood_tasks))
    out = {}
    for name, by_weight in choices.items():
        summaries = {w: rm.summarize(data, rm.one_hot(c, k), w, tau) for w, c in by_weight.items()}
        at_one = summaries[1.0]
        id_scores = [at_one["per_task"][t]["score"] for t in id_tasks if t in at_one["per_task"]]
        chosen = data.quality[np.arange(len(data)), by_weight[1.0]]
        out[name] = {
            "score_w1": at_one["score"],
            "score_task_mean_w1": at_one["score_task_mean"],
            "id_task_mean_w1": float(np.mean(id_scores)) if id_scores else None,
            "ood_row_mean_w1": float(chosen[ood_rows].mean()) if ood_rows.any() else None,
            "reward": {str(w): s["reward"] for w, s in summaries.items()},
            "per_task_w1": {t: v["score"] for t, v in at_one["per_task"].items()},
        }
    if ood_rows.any():
        out["best_single"]["ood_row_mean_w1"] = float(test.quality[ood_rows].mean(axis=0).max())
    return out


def run(
    table: RoutingTable,
    model: RoutingEncoder,
    tokenizer: Any,
    config: FineTuneConfig,
    id_tasks: Sequence[str] = (),
    ood_tasks: Sequence[str] = (),
    log: Any = None,
) -> dict[str, Any]:
    """The whole measurement on one table (its ``train``/``test`` splits); returns the result JSON."""
    torch.set_num_threads(config.threads)
    splits = np.asarray(table.splits)
    train, test = (
        table.select(np.flatnonzero(splits == "train")),
        table.select(np.flatnonzero(splits == "test")),
    )
    if not len(train) or not len(test):
        raise ValueError(f"{table.source}: needs rows in both the train and the test split")
    tau = tau_from_costs(train.cost_usd, 95.0, train.observed_mask)
    settings = EncoderSettings(max_seq_length=config.max_seq_length, truncation="tail")
    train_ids = truncated_token_ids(tokenizer, list(train.prompts), settings)
    test_ids = truncated_token_ids(tokenizer, list(test.prompts), settings)
    fit_rows, check_rows = stratified_split(train, config.validation_fraction, config.seed)
    outcomes = Outcomes(train.quality.astype(np.float32), train.observed_mask)
    started = time.monotonic()
    frozen_train, _ = embed_and_predict(model, train_ids, tokenizer)
    frozen_test, _ = embed_and_predict(model, test_ids, tokenizer)
    frozen_s = time.monotonic() - started
    if log is not None:
        print(
            f"frozen embeddings of {len(train)} train + {len(test)} test rows: {frozen_s:.0f} s",
            file=log,
            flush=True,
        )
    initialise_head_from_ridge(
        model, frozen_train[fit_rows], Outcomes(outcomes.quality[fit_rows], outcomes.observed[fit_rows])
    )
    training = fine_tune(
        model, tokenizer, train_ids, outcomes, np.asarray(train.tasks), fit_rows, check_rows, config, log
    )
    started = time.monotonic()
    tuned_train, _ = embed_and_predict(model, train_ids, tokenizer)
    tuned_test, head_quality = embed_and_predict(model, test_ids, tokenizer)
    tuned_s = time.monotonic() - started
    tuned_ridge = _ridge_estimates(tuned_train, train, tuned_test, tau)
    k = len(table.models)
    estimates = {
        "ridge (frozen)": _ridge_estimates(frozen_train, train, frozen_test, tau),
        "head (fine-tuned)": np.concatenate([head_quality, tuned_ridge[:, k:]], axis=1),
        "ridge (fine-tuned)": tuned_ridge,
    }
    return {
        "source": table.source,
        "rows": {
            "train": len(train),
            "fit": int(fit_rows.size),
            "validation": int(check_rows.size),
            "test": len(test),
        },
        "config": asdict(config),
        "tau_usd": tau,
        "training": training,
        "embed_s": {"frozen": round(frozen_s, 1), "fine_tuned": round(tuned_s, 1)},
        "routers": score_routers(test, estimates, tau, id_tasks, ood_tasks),
    }


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def markdown(result: dict[str, Any]) -> str:
    """The routers' table (scores; ID/OOD means in %) and one line about the training run."""
    lines = [
        "| router | w_q = 1 score | task mean | ID task mean | OOD row mean | w_q = 0.5 reward |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in result["routers"].items():
        lines.append(
            f"| {name} | {r['score_w1']:.4f} | {r['score_task_mean_w1']:.4f} | "
            f"{_percent(r['id_task_mean_w1'])} | {_percent(r['ood_row_mean_w1'])} | "
            f"{r['reward']['0.5']:.4f} |"
        )
    t, embed_s = result["training"], result["embed_s"]
    lines.append(
        f"\nfine-tuning: {t['steps']} steps, best step {t['best_step']} "
        f"(validation {t['best_validation_score']:.4f}, step 0 {t['history'][0]['validation_score']:.4f}), "
        f"stop {t['stop']}, {t['train_s']} s; embedding train+test: frozen {embed_s['frozen']} s, "
        f"fine-tuned {embed_s['fine_tuned']} s"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="directory for result.json and result.md")
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="sentence-transformers BERT dir (default: shipped MiniLM)",
    )
    parser.add_argument("--id-tasks", nargs="*", default=[])
    parser.add_argument("--ood-tasks", nargs="*", default=[])
    parser.add_argument(
        "--rows-per-split", type=int, default=0, help="seeded sample of N train and N test rows (0 = all)"
    )
    defaults = FineTuneConfig()
    for field, value in asdict(defaults).items():
        parser.add_argument("--" + field.replace("_", "-"), type=type(value), default=value)
    args = parser.parse_args(argv)
    try:
        config = FineTuneConfig(**{f: getattr(args, f) for f in asdict(defaults)})
        table = sample_rows(load_table(args.data), args.rows_per_split, args.seed)
        encoder, tokenizer = load_minilm(args.model_dir or builtin_model_path())
        model = RoutingEncoder(encoder, len(table.models))
        result = run(table, model, tokenizer, config, args.id_tasks, args.ood_tasks, log=sys.stderr)
    except (DataError, OSError, ValueError) as exc:
        print(f"encoder_finetune: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (args.out / "result.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
