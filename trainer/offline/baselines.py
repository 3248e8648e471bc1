"""Baseline routers for the offline evaluation (DESIGN §8). Each returns a ``Chooser``: w_q -> arm per row.

Full-information routers (see every model's score and cost on the training rows): ``oracle`` (on the
evaluated rows themselves: an upper bound), ``knn``, ``mlp_full_info``, ``per_task_best`` (uses the task
label). Bandit learners under the same simulated feedback as BaRP (one revealed arm per event):
``linucb``, ``lin_ts``, ``eps_greedy``; they fit per-arm ridge models of q and min(c/τ, 1) on PCA-reduced
embeddings and combine them linearly in w (legitimate: r is linear in w given q and c).
Owns no files and no report formatting.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from barp_sidecar.policy.reward import normalized_cost, reward, reward_from_normalized_cost
from trainer.offline.datasets import RoutingTable
from trainer.offline.evaluation import Chooser
from trainer.offline.simulator import BanditSimulator


def fixed_action(arm: int, num_rows: int) -> Chooser:
    return lambda w: np.full(num_rows, arm, dtype=np.int64)


def random_router(num_rows: int, num_arms: int, seed: int) -> Chooser:
    def choose(w: float) -> np.ndarray:
        return np.random.default_rng([seed, round(w * 10)]).integers(0, num_arms, num_rows)

    return choose


def oracle(table: RoutingTable, tau_usd: float) -> Chooser:
    """Per-prompt best arm, knowing the outcomes of the evaluated rows (an upper bound, not a router)."""
    return lambda w: np.argmax(reward(table.quality, table.cost_usd, w, tau_usd), axis=1)


def best_single_action(table: RoutingTable, quality_weight: float, tau_usd: float) -> int:
    """The arm with the best unweighted-over-tasks mean reward on ``table``."""
    rewards = reward(table.quality, table.cost_usd, quality_weight, tau_usd)
    tasks = np.asarray(table.tasks)
    per_task = np.stack([rewards[tasks == t].mean(axis=0) for t in table.task_names])
    return int(np.argmax(per_task.mean(axis=0)))


def per_task_best(train: RoutingTable, test_tasks: tuple[str, ...], tau_usd: float) -> Chooser:
    """Best fixed arm per task on train (uses the task label); an unseen task gets the overall best arm."""
    tasks = np.asarray(train.tasks)
    test = np.asarray(test_tasks)

    def choose(w: float) -> np.ndarray:
        rewards = reward(train.quality, train.cost_usd, w, tau_usd)
        fallback = best_single_action(train, w, tau_usd)
        out = np.full(test.size, fallback, dtype=np.int64)
        for task in train.task_names:
            out[test == task] = int(np.argmax(rewards[tasks == task].mean(axis=0)))
        return out

    return choose


def knn(
    train: RoutingTable, train_x: np.ndarray, test_x: np.ndarray, tau_usd: float, neighbours: int = 25
) -> Chooser:
    """Mean score and normalised cost of the k most similar training prompts (cosine), per arm."""
    similarity = np.asarray(test_x, dtype=np.float32) @ np.asarray(train_x, dtype=np.float32).T
    k = min(neighbours, train_x.shape[0])
    nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    q_hat = train.quality[nearest].mean(axis=1)
    c_hat = normalized_cost(train.cost_usd, tau_usd)[nearest].mean(axis=1)
    return lambda w: np.argmax(reward_from_normalized_cost(q_hat, c_hat, w), axis=1)


def mlp_full_info(
    train: RoutingTable,
    train_x: np.ndarray,
    test_x: np.ndarray,
    tau_usd: float,
    seed: int = 0,
    steps: int = 1500,
    hidden: int = 256,
) -> Chooser:
    """An MLP predicting every arm's score (BCE) and log cost (MSE) from the full table; pick the best r̂."""
    torch.manual_seed(seed)
    x = torch.as_tensor(np.asarray(train_x, dtype=np.float32))
    quality = torch.as_tensor(train.quality, dtype=torch.float32)
    log_cost = torch.as_tensor(np.log(np.maximum(train.cost_usd, 1e-9)), dtype=torch.float32)
    k = quality.shape[1]
    regressor = nn.Sequential(
        nn.Linear(x.shape[1], hidden),
        nn.GELU(),
        nn.Dropout(0.1),
        nn.Linear(hidden, hidden),
        nn.GELU(),
        nn.Linear(hidden, 2 * k),
    )
    optimizer = torch.optim.AdamW(regressor.parameters(), lr=1e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        rows = torch.randint(0, x.shape[0], (256,), generator=generator)
        out = regressor(x[rows])
        loss = nn.functional.binary_cross_entropy_with_logits(out[:, :k], quality[rows])
        loss = loss + nn.functional.mse_loss(out[:, k:], log_cost[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    regressor.eval()
    with torch.inference_mode():
        out = regressor(torch.as_tensor(np.asarray(test_x, dtype=np.float32)))
    q_hat = torch.sigmoid(out[:, :k]).numpy()
    c_hat = normalized_cost(np.exp(out[:, k:].numpy()), tau_usd)
    return lambda w: np.argmax(reward_from_normalized_cost(q_hat, c_hat, w), axis=1)


def pca_projection(train_x: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, components [D, dim]) of the training embeddings (unsupervised: uses no outcomes)."""
    mean = train_x.mean(axis=0)
    _, _, vt = np.linalg.svd(train_x - mean, full_matrices=False)
    return mean, vt[:dim].T


class LinearBandit:
    """Per-arm ridge regressions of q and min(c/τ, 1) on features, updated one revealed event at a time."""

    def __init__(self, dim: int, num_arms: int, ridge: float = 1.0) -> None:
        self.inverse = np.stack([np.eye(dim) / ridge for _ in range(num_arms)])
        self.b_quality = np.zeros((num_arms, dim))
        self.b_cost = np.zeros((num_arms, dim))

    def estimates(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        theta_q = np.einsum("kij,kj->ki", self.inverse, self.b_quality)
        theta_c = np.einsum("kij,kj->ki", self.inverse, self.b_cost)
        return features @ theta_q.T, features @ theta_c.T

    def update(self, arm: int, feature: np.ndarray, quality: float, cost_norm: float) -> None:
        inv = self.inverse[arm]
        v = inv @ feature
        self.inverse[arm] = inv - np.outer(v, v) / (1.0 + feature @ v)
        self.b_quality[arm] += quality * feature
        self.b_cost[arm] += cost_norm * feature


def train_linear_bandit(
    kind: str,
    train_x: np.ndarray,
    simulator: BanditSimulator,
    tau_usd: float,
    seed: int,
    events: int = 12000,
    pca_dim: int = 32,
    alpha: float = 0.5,
    epsilon: float = 0.1,
) -> tuple[LinearBandit, np.ndarray, np.ndarray]:
    """Run ``kind`` ∈ {linucb, lin_ts, eps_greedy} on simulated bandit feedback; returns model + PCA."""
    rng = np.random.default_rng(seed)
    mean, components = pca_projection(train_x, pca_dim)
    features = np.hstack([(train_x - mean) @ components, np.ones((train_x.shape[0], 1))])
    k = simulator.num_arms
    bandit = LinearBandit(features.shape[1], k)
    theta_q = np.zeros((k, features.shape[1]))
    theta_c = np.zeros((k, features.shape[1]))
    for event in range(events):
        if event % 50 == 0:  # refresh point estimates periodically (cheap, and exact enough)
            theta_q = np.einsum("kij,kj->ki", bandit.inverse, bandit.b_quality)
            theta_c = np.einsum("kij,kj->ki", bandit.inverse, bandit.b_cost)
        row = int(rng.integers(0, features.shape[0]))
        w = float(rng.uniform())
        f = features[row]
        if kind == "eps_greedy" and rng.uniform() < epsilon:
            arm = int(rng.integers(0, k))
        else:
            if kind == "lin_ts":
                noise = rng.standard_normal((k, f.size))
                # Sample θ ~ N(θ̂, α² A⁻¹) along f only: f·θ ~ N(f·θ̂, α² fᵀA⁻¹f).
                spread = np.sqrt(np.einsum("i,kij,j->k", f, bandit.inverse, f))
                q = theta_q @ f + alpha * spread * noise[:, 0]
                c = theta_c @ f + alpha * spread * noise[:, 1]
                score = reward_from_normalized_cost(q, c, w)
            else:
                score = reward_from_normalized_cost(theta_q @ f, theta_c @ f, w)
                if kind == "linucb":
                    score = score + alpha * np.sqrt(np.einsum("i,kij,j->k", f, bandit.inverse, f))
            arm = int(np.argmax(score))
        quality, cost = simulator.reveal(np.array([row]), np.array([arm]))
        bandit.update(arm, f, float(quality[0]), float(normalized_cost(cost[0], tau_usd)))
    return bandit, mean, components


def linear_bandit_router(
    kind: str,
    train_x: np.ndarray,
    test_x: np.ndarray,
    simulator: BanditSimulator,
    tau_usd: float,
    seed: int,
    events: int = 12000,
) -> Chooser:
    bandit, mean, components = train_linear_bandit(kind, train_x, simulator, tau_usd, seed, events=events)
    features = np.hstack([(test_x - mean) @ components, np.ones((test_x.shape[0], 1))])
    q_hat, c_hat = bandit.estimates(features)
    return lambda w: np.argmax(reward_from_normalized_cost(q_hat, c_hat, w), axis=1)
