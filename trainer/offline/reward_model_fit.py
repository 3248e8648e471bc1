"""Offline fit of a ``reward_model`` policy from full-information logs (``--architecture reward_model``).

Owns the regression only: given frozen embeddings x, a routing table and τ, predict every model's
quality q_a(x) and normalised cost ĉ_a(x) = min(c/τ, 1) and write the result into the issue-11
``reward_model`` network (``barp_sidecar.policy.network``; its logits are s·(w_q·q̂ − (1 − w_q)·ĉ)), so one
policy serves every trade-off w_q: r is linear in w given (q, c), and calibrated regressions of q and ĉ
rank models correctly at every w at once. Knows nothing about files, encoders or the CLI.

Observed masks are respected: a row trains only the models it observed (``RoutingTable.observed``).
Two regressors (measured in docs/training.md):

- ``ridge`` (default): per model and per target, closed-form ridge on [x; 1] (intercept not penalised),
  λ chosen per (model, target) from ``RIDGE_LAMBDAS`` on a deterministic validation slice of the training
  rows, then refitted on all of them. The network is linear (``head_layers`` 0).
- ``mlp``: a shared GELU trunk (``head_layers`` 1, ``hidden`` units) with the 2K-output head, trained
  with masked squared error (Adam, mini-batches), early-stopped on the same validation slice.
- ``smoothed_mlp``: the same MLP, fitted to empirical-Bayes kNN estimates instead of the raw outcomes
  (``smoothed_targets``): each training prompt's target, for each model it observed, is its task prior
  (the train means of the tasks of its ``smoothing_task_k`` nearest other prompts that observed the
  model) plus ``smoothing_residual_weight`` × the mean residual (outcome − its task's mean) of its
  ``smoothing_residual_k`` nearest other prompts. The kNN router is distilled into the served head, so
  the sidecar serves it unchanged (no stored neighbours).

``mean_of_reward_models`` folds a ridge and a one-hidden-layer network into one servable network that
predicts their mean (measured by ``trainer.offline.ensemble_probe``; not a ``--regressor``: it did not
win on the validation slices, docs/training.md).

Deterministic for a given seed.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from barp_sidecar.policy.network import PolicyArchitecture, PolicyNetwork
from barp_sidecar.policy.reward import normalized_cost
from trainer.offline.datasets import RoutingTable

REGRESSORS = ("ridge", "mlp", "smoothed_mlp")
RIDGE_LAMBDAS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
VALIDATION_FRACTION = 0.15


@dataclass(frozen=True)
class RewardModelFitConfig:
    """Hyper-parameters of one fit; stored in the checkpoint manifest."""

    regressor: str = "ridge"
    # "mlp" only: the shared trunk's width, and AdamW on mini-batches, early-stopped on the validation slice.
    hidden: int = 256
    epochs: int = 200
    patience_epochs: int = 10
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    # "smoothed_mlp" only: neighbours (cosine) for the task prior and for the per-prompt residual, and
    # the weight of the residual (0 = task prior only).
    smoothing_task_k: int = 25
    smoothing_residual_k: int = 400
    smoothing_residual_weight: float = 0.5
    # π ∝ exp(s·r̂) when the sidecar samples; the greedy choice (argmax r̂) never depends on s.
    exploration_scale: float = 100.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.regressor not in REGRESSORS:
            raise ValueError(f"regressor must be one of {REGRESSORS}, not {self.regressor!r}")
        if self.hidden <= 0 or self.epochs <= 0 or self.batch_size <= 0 or self.patience_epochs <= 0:
            raise ValueError("hidden, epochs, batch_size and patience_epochs must be positive")
        if self.smoothing_task_k <= 0 or self.smoothing_residual_k <= 0:
            raise ValueError("smoothing_task_k and smoothing_residual_k must be positive")
        if not 0.0 <= self.smoothing_residual_weight <= 1.0:
            raise ValueError("smoothing_residual_weight must be in [0, 1]")
        if not self.exploration_scale > 0:
            raise ValueError("exploration_scale must be positive")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class RegressionTargets:
    """[N, 2K] targets (quality columns, then normalised cost) and the [N, 2K] mask of observed ones."""

    values: np.ndarray
    observed: np.ndarray


def regression_targets(table: RoutingTable, tau_usd: float) -> RegressionTargets:
    observed = table.observed_mask
    values = np.concatenate([table.quality, normalized_cost(table.cost_usd, tau_usd)], axis=1)
    values = np.where(np.concatenate([observed, observed], axis=1), values, 0.0)
    return RegressionTargets(values=values, observed=np.concatenate([observed, observed], axis=1))


def validation_rows(n: int, seed: int) -> np.ndarray:
    """[N] bool: a deterministic ``VALIDATION_FRACTION`` of the rows (none when there are too few)."""
    held = np.zeros(n, dtype=bool)
    count = round(n * VALIDATION_FRACTION)
    if n >= 20 and count > 0:
        held[np.random.default_rng(seed).permutation(n)[:count]] = True
    return held


def _ridge_solutions(z: np.ndarray, y: np.ndarray, lambdas: tuple[float, ...]) -> np.ndarray:
    """θ [len(lambdas), D+1] minimising Σ(zθ − y)² + λ‖θ[:-1]‖² for each λ (z ends with the 1 column)."""
    gram = z.T @ z
    moment = z.T @ y
    penalty = np.ones(z.shape[1])
    penalty[-1] = 1e-8  # the intercept is (almost) free; keeps the system regular on tiny columns
    return np.stack([np.linalg.solve(gram + lam * np.diag(penalty), moment) for lam in lambdas])


def fit_ridge(
    x: np.ndarray, targets: RegressionTargets, config: RewardModelFitConfig
) -> tuple[np.ndarray, dict[str, list[float]]]:
    """θ [2K, D+1] per output column, and the λ chosen per column (keyed "quality"/"cost")."""
    z = np.concatenate([np.asarray(x, dtype=np.float64), np.ones((len(x), 1))], axis=1)
    held = validation_rows(len(x), config.seed)
    outputs = targets.values.shape[1]
    theta = np.zeros((outputs, z.shape[1]))
    chosen = np.zeros(outputs)
    for column in range(outputs):
        rows = targets.observed[:, column]
        if not rows.any():
            continue  # a model no training row observed: q̂ = ĉ = 0 (never reached via load_tables)
        y = targets.values[:, column]
        fit_rows, check_rows = rows & ~held, rows & held
        lam = RIDGE_LAMBDAS[len(RIDGE_LAMBDAS) // 2]
        if fit_rows.sum() >= 2 and check_rows.any():
            candidates = _ridge_solutions(z[fit_rows], y[fit_rows], RIDGE_LAMBDAS)
            errors = ((z[check_rows] @ candidates.T - y[check_rows, None]) ** 2).mean(axis=0)
            lam = RIDGE_LAMBDAS[int(np.argmin(errors))]
        theta[column] = _ridge_solutions(z[rows], y[rows], (lam,))[0]
        chosen[column] = lam
    k = outputs // 2
    return theta, {"quality": chosen[:k].tolist(), "cost": chosen[k:].tolist()}


def neighbour_means(
    x: np.ndarray,
    values: np.ndarray,
    weights: np.ndarray,
    k: int,
    queries: np.ndarray | None = None,
    chunk_rows: int = 1024,
) -> np.ndarray:
    """Per query row: the weighted mean of ``values`` [N, C] over its k most cosine-similar rows of ``x``.

    ``x`` (and ``queries``) rows are unit-norm embeddings; ``weights`` [N, C] (0 = no outcome there). A
    column none of the neighbours has gets 0. Without ``queries`` the rows of ``x`` query themselves,
    leave-one-out, so a row's own outcome never enters its estimate.
    """
    base = np.asarray(x, dtype=np.float32)
    leave_one_out = queries is None
    asking = base if queries is None else np.asarray(queries, dtype=np.float32)
    k = min(k, len(base) - 1 if leave_one_out else len(base))
    out = np.zeros((len(asking), values.shape[1]), dtype=np.float64)
    if k <= 0:
        return out
    for start in range(0, len(asking), chunk_rows):
        similarity = asking[start : start + chunk_rows] @ base.T
        rows = np.arange(start, min(start + chunk_rows, len(asking)))
        if leave_one_out:
            similarity[np.arange(rows.size), rows] = -np.inf
        nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        w = weights[nearest]
        total = (w * values[nearest]).sum(axis=1)
        out[rows] = np.where(w.sum(axis=1) > 0, total / np.maximum(w.sum(axis=1), 1e-12), 0.0)
    return out


def smoothed_targets(
    x: np.ndarray,
    tasks: tuple[str, ...],
    targets: RegressionTargets,
    config: RewardModelFitConfig,
    queries: np.ndarray | None = None,
) -> RegressionTargets:
    """Empirical-Bayes kNN estimates of the targets (module docstring).

    For the training rows themselves (leave-one-out; marked observed where the row observed the outcome,
    so a model a row's source lacks stays absent, as in every fit here) unless ``queries`` asks for other
    prompts (the kNN router itself, as measured by ``trainer.offline.router_probe``; all marked observed).
    The task prior of a model averages only the neighbouring tasks that observed it (in a log of several
    sources a task of one source has no outcome for another source's models: counting those as 0 pulled
    every estimate of a model toward 0 near prompts of other sources); where none did, it is the model's
    mean over every observed row.
    """
    observed = targets.observed.astype(np.float64)
    task_array = np.asarray(tasks)
    names = sorted(set(tasks))
    membership = np.stack([task_array == name for name in names], axis=1).astype(np.float64)
    sums = np.stack([(targets.values * observed)[task_array == name].sum(axis=0) for name in names])
    counts = np.stack([observed[task_array == name].sum(axis=0) for name in names])  # [T, 2K]
    task_means = sums / np.maximum(counts, 1.0)
    overall = sums.sum(axis=0) / np.maximum(counts.sum(axis=0), 1.0)  # [2K]
    task_share = neighbour_means(x, membership, np.ones_like(membership), config.smoothing_task_k, queries)
    seen_share = task_share @ (counts > 0).astype(np.float64)  # [Q, 2K]: neighbour tasks that observed it
    prior = np.where(
        seen_share > 0, (task_share @ task_means) / np.maximum(seen_share, 1e-12), overall[None, :]
    )
    values = prior
    if config.smoothing_residual_weight > 0:
        residual = (targets.values - membership @ task_means) * observed
        local = neighbour_means(x, residual, observed, config.smoothing_residual_k, queries)
        values = prior + config.smoothing_residual_weight * local
    marked = targets.observed if queries is None else np.ones(values.shape, dtype=bool)
    return RegressionTargets(values=values, observed=marked.copy())


def _masked_mse(predicted: torch.Tensor, values: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    weights = observed.to(predicted.dtype)
    return ((predicted - values) ** 2 * weights).sum() / weights.sum().clamp_min(1.0)


def fit_mlp(
    network: PolicyNetwork, x: np.ndarray, targets: RegressionTargets, config: RewardModelFitConfig
) -> dict[str, float]:
    """Train ``network`` (head_layers ≥ 1) in place; returns {"epochs", "validation_mse"}."""
    generator = torch.Generator().manual_seed(config.seed)
    held = validation_rows(len(x), config.seed)
    features = torch.from_numpy(np.asarray(x, dtype=np.float32))
    values = torch.from_numpy(targets.values.astype(np.float32))
    observed = torch.from_numpy(targets.observed)
    train_index = torch.from_numpy(np.flatnonzero(~held))
    check_index = torch.from_numpy(np.flatnonzero(held))
    optimizer = torch.optim.AdamW(
        network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )

    def outputs(rows: torch.Tensor) -> torch.Tensor:
        quality, cost = network.predicted_outcomes(features[rows])
        return torch.cat([quality, cost], dim=1)

    best_error, best_state, best_epoch, epoch = float("inf"), copy.deepcopy(network.state_dict()), 0, 0
    for epoch in range(1, config.epochs + 1):
        network.train()
        order = train_index[torch.randperm(train_index.numel(), generator=generator)]
        for start in range(0, order.numel(), config.batch_size):
            rows = order[start : start + config.batch_size]
            loss = _masked_mse(outputs(rows), values[rows], observed[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if check_index.numel() == 0:
            best_state, best_epoch = copy.deepcopy(network.state_dict()), epoch
            continue
        network.eval()
        with torch.no_grad():
            error = float(_masked_mse(outputs(check_index), values[check_index], observed[check_index]))
        if error < best_error:
            best_error, best_state, best_epoch = error, copy.deepcopy(network.state_dict()), epoch
        elif epoch - best_epoch >= config.patience_epochs:
            break
    network.load_state_dict(best_state)
    return {"epochs": float(epoch), "best_epoch": float(best_epoch), "validation_mse": best_error}


def mean_of_reward_models(linear: PolicyNetwork, mlp: PolicyNetwork) -> PolicyNetwork:
    """One ``reward_model`` network whose q̂ and ĉ are the mean of a linear one's (``head_layers`` 0) and a
    one-hidden-layer one's, so the sidecar serves the ensemble unchanged.

    The hidden layer is the MLP's H units followed by 2D units computing +x and −x: GELU(z) − GELU(−z) =
    z·Φ(z) + z·Φ(−z) = z exactly, so the output layer reads the linear model through them.
    """
    a, b = linear.architecture, mlp.architecture
    if a.kind != "reward_model" or b.kind != "reward_model" or a.head_layers != 0 or b.head_layers != 1:
        raise ValueError("need a linear reward_model network and a one-hidden-layer one")
    if (a.embedding_dim, a.num_models) != (b.embedding_dim, b.num_models):
        raise ValueError("the two networks differ in embedding_dim or num_models")
    d, h = b.embedding_dim, b.head_hidden
    combined = PolicyNetwork(replace(b, head_hidden=h + 2 * d))
    identity = torch.eye(d)
    hidden, trunk = combined.hidden_layers[0], mlp.hidden_layers[0]
    assert isinstance(hidden, torch.nn.Linear) and isinstance(trunk, torch.nn.Linear)
    head = combined.reward_head
    with torch.no_grad():
        hidden.weight.copy_(torch.cat([trunk.weight, identity, -identity]))
        hidden.bias.copy_(torch.cat([trunk.bias, torch.zeros(2 * d)]))
        w_linear = linear.reward_head.weight
        head.weight.copy_(0.5 * torch.cat([mlp.reward_head.weight, w_linear, -w_linear], dim=1))
        head.bias.copy_(0.5 * (mlp.reward_head.bias + linear.reward_head.bias))
        combined.exploration_scale.copy_(mlp.exploration_scale)
    return combined.eval()


def fit_reward_model(
    embeddings: np.ndarray, table: RoutingTable, tau_usd: float, config: RewardModelFitConfig
) -> tuple[PolicyNetwork, dict[str, object]]:
    """A ``reward_model`` network for ``table``'s models and facts about the fit (for the manifest)."""
    if len(table) == 0:
        raise ValueError("no training rows")
    torch.manual_seed(config.seed)
    targets = regression_targets(table, tau_usd)
    architecture = PolicyArchitecture(
        embedding_dim=int(embeddings.shape[1]),
        num_models=len(table.models),
        head_hidden=config.hidden,
        head_layers=0 if config.regressor == "ridge" else 1,
        kind="reward_model",
    )
    network = PolicyNetwork(architecture)
    facts: dict[str, object] = {}
    if config.regressor == "ridge":
        theta, lambdas = fit_ridge(embeddings, targets, config)
        with torch.no_grad():
            network.reward_head.weight.copy_(torch.from_numpy(theta[:, :-1]).float())
            network.reward_head.bias.copy_(torch.from_numpy(theta[:, -1]).float())
        facts["ridge_lambda"] = lambdas
    elif config.regressor == "smoothed_mlp":
        smoothed = smoothed_targets(embeddings, table.tasks, targets, config)
        facts.update(fit_mlp(network, embeddings, smoothed, config))
    else:
        facts.update(fit_mlp(network, embeddings, targets, config))
    with torch.no_grad():
        network.exploration_scale.fill_(config.exploration_scale)
    return network.eval(), facts
