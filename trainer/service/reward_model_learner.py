"""Online learner for ``reward_model`` policies: per-model Bayesian ridge regression of quality and cost.

Owns the sufficient statistics of the regression (the learner's whole state: saving and restoring them
resumes learning exactly), the closed-form update, and the exploration temperature written into the
published network. Knows nothing about files, gRPC or scheduling (the training loop feeds it events).

For each model a, with z = [h(x); 1]:
    A_a = λ·I + Σ z zᵀ          b_a^q = λ·m^q + Σ z·q          b_a^c = λ·m^c + Σ z·min(c/τ, 1)
    θ_a^q = A_a⁻¹ b_a^q         θ_a^c = A_a⁻¹ b_a^c            (m: prior mean, on the bias only)
so q̂_a(x) = θ_a^q·z and ĉ_a(x) = θ_a^c·z, and the policy's logits are β·(w_q·q̂_a − (1 − w_q)·ĉ_a).
Only the logged model's outcome is revealed per event; the regression needs no importance weights (the
regression-oracle view of contextual bandits), so every event counts fully whatever its propensity.

- **Shared slopes (hierarchical):** with ``shared_ridge_lambda`` > 0 the regressions are solved jointly:
  model a predicts θ₀·u + θ_a·[u; 1] (u: the projected embedding), θ₀ shared by every model and penalised
  by ``shared_ridge_lambda``, each θ_a by ``ridge_lambda``. What every model has in common (prompt
  difficulty, prompt length) is learned from all events; each model's own events only fit its deviation.
  θ₀ + θ_a is written into the same linear head, so the network's format does not change.
- **Optimism for untried models:** the prior mean quality ``prior_quality`` (default 1) on the bias makes
  a model nobody has tried look good until a handful of its outcomes arrive (λ is worth λ events).
- **Exploration temperature:** β = ``exploration_scale``·√(1 + events/K). Early on π is flat
  (SAMPLE explores broadly); as the estimates sharpen, π concentrates on the best models (a Boltzmann
  schedule in the spirit of SquareCB's γ ∝ √t). The greedy choice never depends on β.
- **Optimism by region (``exploration_regions`` C ≥ 1 in the architecture):** each model gets a bonus
  per prompt region, b[c, a] = ``exploration_bonus``/√(1 + n[c, a]), n[c, a] its events in region c (the
  nearest of C centroids, fitted by k-means on the first ``region_warmup_events`` embeddings and then
  fixed; before that every region uses the model's overall count). The network narrows the gap
  r̂* − r̂_a by it (never below a floor), so a model rarely tried on one kind of prompt keeps a large share
  there while its estimate is within its uncertainty of the best, and clearly worse ones fade fast.
- **Intercepts by region (architecture ``region_intercepts``):** the features gain the prompt region's
  one-hot next to the projected embedding, z = [u; e_c; 1], so each model also fits one offset per region
  (penalty ``region_intercept_lambda``), served from the network's ``region_intercept`` buffer through
  the same centroids. A model's level on one kind of prompt then comes from all its events there, not
  from slopes fitted on a few noisy outcomes. Warm-up events enter once the centroids are fitted.
- **Pool changes:** ``reindex`` maps the statistics by model name onto a new arm list (a new model starts
  from the priors alone, a dropped one's statistics go) and sets the published per-arm ``exploration_share``.
Deterministic: no randomness at all (same events in the same order → identical weights).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from barp_sidecar.policy.network import PolicyNetwork
from trainer.service.learner import EventBatch


@dataclass(frozen=True)
class RewardModelHyperParameters:
    ridge_lambda: float = 30.0
    prior_events: float = 1.0
    prior_quality: float = 1.0
    prior_cost: float = 0.0
    exploration_scale: float = 60.0
    projection_dim: int = 32
    # Penalty on the slopes every model shares (0 = no shared component: independent per-model ridges).
    shared_ridge_lambda: float = 300.0
    # Optimism by region (architecture exploration_regions ≥ 1): bonus = this / √(1 + events in the region)
    # (reward units), and the events whose embeddings the region centroids are fitted on.
    exploration_bonus: float = 0.0
    region_warmup_events: int = 200
    # Penalty on each (region, model) intercept (architecture region_intercepts; ≤ 0: ridge_lambda).
    region_intercept_lambda: float = 0.0


class RewardModelLearner:
    """Owns the regression statistics and a ``reward_model`` network whose head mirrors their solution."""

    # The regression is exact on all data seen: re-stepping on replayed events would double-count them.
    uses_replay = False

    def __init__(self, network: PolicyNetwork, hyper: RewardModelHyperParameters) -> None:
        architecture = network.architecture
        if architecture.kind != "reward_model" or architecture.head_layers != 0:
            raise ValueError("RewardModelLearner needs a linear 'reward_model' network (head_layers 0)")
        self.network = network.eval()
        self.hyper = hyper
        k, d = architecture.num_models, architecture.embedding_dim + 1
        self.num_arms = k
        # Raw statistics (priors are added when solving): Σ z zᵀ and Σ z·(q, ĉ) per model.
        self.gram = torch.zeros(k, d, d, dtype=torch.float64)
        self.moments = torch.zeros(k, 2, d, dtype=torch.float64)
        self.arm_events = torch.zeros(k, dtype=torch.int64)
        self.steps = 0
        self.events_trained = 0
        self.regions = RegionCounts(architecture.exploration_regions, k, d - 1, hyper.region_warmup_events)
        self.region_intercepts = architecture.region_intercepts
        self._solve()

    def step(self, batch: EventBatch, replayed: bool = False) -> dict[str, float]:
        """Add ``batch`` to the statistics and re-solve (replayed batches are ignored: already counted)."""
        if replayed or len(batch) == 0:
            return {"events": 0.0}
        z = torch.cat([batch.embeddings.double(), torch.ones(len(batch), 1, dtype=torch.float64)], dim=1)
        targets = torch.stack([batch.quality.double(), batch.normalized_cost.double()], dim=1)  # [N, 2]
        for arm in sorted(set(batch.action.tolist())):
            rows = batch.action == arm
            za = z[rows]
            self.gram[arm] += za.T @ za
            self.moments[arm] += targets[rows].T @ za
            self.arm_events[arm] += int(rows.sum())
        self.regions.add(batch.embeddings.double(), batch.action, targets)
        self.steps += 1
        self.events_trained += len(batch)
        self._solve()
        return {"events": float(len(batch)), "exploration_scale": self.current_exploration_scale()}

    def current_exploration_scale(self) -> float:
        return self.hyper.exploration_scale * math.sqrt(1.0 + self.events_trained / self.num_arms)

    def _projection(self) -> torch.Tensor:
        """M [r+1, d]: z = [x; 1] ↦ [Vᵀ(x − μ); 1] with V the top principal directions of every embedding
        seen (from the pooled statistics), or the identity when ``projection_dim`` is 0 or too few events."""
        d = self.gram.shape[1]
        r = self.hyper.projection_dim
        total = self.gram.sum(dim=0)
        n = float(total[-1, -1])
        if r <= 0 or r >= d - 1 or n < 2:
            return torch.eye(d, dtype=torch.float64)
        mean = total[:-1, -1] / n
        covariance = total[:-1, :-1] / n - torch.outer(mean, mean)
        _, vectors = torch.linalg.eigh(covariance)  # ascending eigenvalues
        top = vectors[:, -r:].flip(1)  # [d-1, r]
        # Deterministic signs (eigh's are arbitrary): the largest-magnitude entry of each vector positive.
        signs = torch.sign(top.gather(0, top.abs().argmax(dim=0, keepdim=True)))
        top = top * signs
        projection = torch.zeros(r + 1, d, dtype=torch.float64)
        projection[:r, :-1] = top.T
        projection[:r, -1] = -(top.T @ mean)
        projection[r, -1] = 1.0
        return projection

    def _features(self, projection: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Per model, the statistics of the regression's features v = [u; e_c; 1] (u: the r projected
        slopes, e_c: the prompt region's one-hot, C = 0 without region intercepts): grams [K, p, p] and
        moments [K, 2, p] with p = r + C + 1, and C."""
        grams = projection @ self.gram @ projection.T  # [K, r+1, r+1]
        moments = self.moments @ projection.T  # [K, 2, r+1]
        c = self.regions.count if self.region_intercepts else 0
        if not c:
            return grams, moments, 0
        k, r = self.num_arms, projection.shape[0] - 1
        p = r + c + 1
        position = [*range(r), p - 1]  # where u's slopes and intercept go in v
        full_grams = torch.zeros(k, p, p, dtype=torch.float64)
        full_moments = torch.zeros(k, 2, p, dtype=torch.float64)
        index = torch.tensor(position)
        full_grams[:, index.unsqueeze(1), index.unsqueeze(0)] = grams
        full_moments[:, :, index] = moments
        counts, sums_x, sums_t = self.regions.sums()  # [C, K], [C, K, D+1], [C, K, 2]
        projected = sums_x @ projection.T  # [C, K, r+1]: Σ over the region's events of [u; 1]
        for region in range(c):
            column = r + region
            full_grams[:, index, column] = projected[region]
            full_grams[:, column, index] = projected[region]
            full_grams[:, column, column] = counts[region]
            full_moments[:, :, column] = sums_t[region]
        return full_grams, full_moments, c

    def _solve(self) -> None:
        k = self.num_arms
        projection = self._projection()
        grams, moments, regions = self._features(projection)
        p = grams.shape[1]
        r = projection.shape[0] - 1  # projected slopes (v's last coordinate is the intercept)
        diagonal = torch.full((p,), self.hyper.ridge_lambda, dtype=torch.float64)
        region_lambda = self.hyper.region_intercept_lambda
        diagonal[r : r + regions] = region_lambda if region_lambda > 0 else self.hyper.ridge_lambda
        diagonal[-1] = self.hyper.prior_events  # the intercept's prior, worth prior_events events
        prior = torch.zeros(2, p, dtype=torch.float64)
        prior[0, -1] = self.hyper.prior_events * self.hyper.prior_quality
        prior[1, -1] = self.hyper.prior_events * self.hyper.prior_cost
        shared_lambda = self.hyper.shared_ridge_lambda
        if shared_lambda > 0:
            # One joint ridge: unknowns [θ_0 (r shared slopes); θ_1 … θ_K (p each)], prediction for model a
            # θ_0·v[:r] + θ_a·v; penalties shared_lambda on θ_0, ridge_lambda / prior_events on each θ_a.
            n = r + k * p
            system = torch.zeros(n, n, dtype=torch.float64)
            rhs = torch.zeros(n, 2, dtype=torch.float64)
            system[:r, :r] = grams[:, :r, :r].sum(dim=0) + shared_lambda * torch.eye(r, dtype=torch.float64)
            rhs[:r] = moments[:, :, :r].sum(dim=0).T
            for arm in range(k):
                block = slice(r + arm * p, r + (arm + 1) * p)
                system[block, block] = grams[arm] + torch.diag(diagonal)
                system[:r, block] = grams[arm][:r, :]
                system[block, :r] = grams[arm][:, :r]
                rhs[block] = (moments[arm] + prior).T
            solution = torch.linalg.solve(system, rhs)
            shared = torch.cat([solution[:r], torch.zeros(p - r, 2, dtype=torch.float64)])  # [p, 2]
            thetas = [solution[r + a * p : r + (a + 1) * p] + shared for a in range(k)]
        else:
            thetas = [
                torch.linalg.solve(grams[a] + torch.diag(diagonal), (moments[a] + prior).T) for a in range(k)
            ]
        slopes_and_intercept = [*range(r), p - 1]
        with torch.no_grad():
            weight = self.network.reward_head.weight  # [2K, D]
            bias = self.network.reward_head.bias  # [2K]
            for arm in range(k):
                theta = projection.T @ thetas[arm][slopes_and_intercept]  # [d, 2] in z-space
                for row, column in ((arm, 0), (k + arm, 1)):
                    weight[row] = theta[:-1, column].float()
                    bias[row] = float(theta[-1, column])
                    if regions:
                        self.network.region_intercept[:, row] = thetas[arm][r : r + regions, column].float()
            self.network.exploration_scale.fill_(self.current_exploration_scale())
            if self.regions.count:
                bonus = self.hyper.exploration_bonus / torch.sqrt(1.0 + self.regions.table(self.arm_events))
                self.network.exploration_bonus.copy_(bonus.float())
                self.network.exploration_centroids.copy_(self.regions.centroids.float())

    def reindex(self, old_arms: tuple[str, ...], new_arms: tuple[str, ...]) -> None:
        """Re-order the statistics by name for ``new_arms`` (new names start empty, missing ones are
        dropped) and rebuild the network for that many arms (shares cleared: ``set_exploration_share``)."""
        position = {name: i for i, name in enumerate(old_arms)}
        k, d = len(new_arms), self.gram.shape[1]
        gram = torch.zeros(k, d, d, dtype=torch.float64)
        moments = torch.zeros(k, 2, d, dtype=torch.float64)
        arm_events = torch.zeros(k, dtype=torch.int64)
        for index, name in enumerate(new_arms):
            if name in position:
                gram[index] = self.gram[position[name]]
                moments[index] = self.moments[position[name]]
                arm_events[index] = self.arm_events[position[name]]
        self.gram, self.moments, self.arm_events, self.num_arms = gram, moments, arm_events, k
        self.regions.reindex([position.get(name, -1) for name in new_arms])
        architecture = replace(self.network.architecture, num_models=k, exploration_share=())
        self.network = PolicyNetwork(architecture).eval()
        self._solve()

    def event_counts(self) -> list[int]:
        """Events trained per output of the network, in its order."""
        return [int(n) for n in self.arm_events.tolist()]

    def set_exploration_share(self, exploration_share: tuple[float, ...]) -> None:
        """Per-arm probability caps of the published network (() = none); weights are unchanged."""
        self.network.architecture = replace(self.network.architecture, exploration_share=exploration_share)

    def state(self) -> dict[str, torch.Tensor]:
        """Everything needed to resume (tensors; saved next to a published checkpoint)."""
        return {
            "gram": self.gram.clone(),
            "moments": self.moments.clone(),
            "arm_events": self.arm_events.clone(),
            "counters": torch.tensor([self.steps, self.events_trained], dtype=torch.int64),
            **self.regions.state(),
        }

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore ``state()``; shapes must match this learner's models and embedding size."""
        for name, current in (
            ("gram", self.gram),
            ("moments", self.moments),
            ("arm_events", self.arm_events),
        ):
            if name not in state or tuple(state[name].shape) != tuple(current.shape):
                raise ValueError(f"learner state {name!r} missing or of the wrong shape")
        if "counters" not in state or tuple(state["counters"].shape) != (2,):
            raise ValueError("learner state 'counters' missing or of the wrong shape")
        self.gram = state["gram"].to(torch.float64).clone()
        self.moments = state["moments"].to(torch.float64).clone()
        self.arm_events = state["arm_events"].to(torch.int64).clone()
        self.steps, self.events_trained = (int(v) for v in state["counters"].tolist())
        self.regions.load_state(state, required=self.region_intercepts)
        self._solve()


class RegionCounts:
    """Events per (region, model) for the optimism by region: C centroids fitted once by k-means on the first
    ``warmup_events`` embeddings (deterministic: k-means++ from a fixed seed, then Lloyd iterations), and
    each later event counted in its nearest region, with its sums of [x; 1] and of its targets (q, ĉ) for
    the region intercepts. ``count`` 0 = off (every method is a no-op)."""

    KMEANS_ITERATIONS = 30

    def __init__(self, count: int, num_arms: int, dim: int, warmup_events: int) -> None:
        self.count = count
        self.warmup_events = max(warmup_events, count)
        self.centroids = torch.zeros(count, dim, dtype=torch.float64)
        self.counts = torch.zeros(count, num_arms, dtype=torch.int64)
        self.sums_z = torch.zeros(count, num_arms, dim + 1, dtype=torch.float64)
        self.sums_t = torch.zeros(count, num_arms, 2, dtype=torch.float64)
        self.fitted = False
        # Warm-up: the first events' embeddings and arms, until the centroids are fitted.
        self.pending_x = torch.zeros(0, dim, dtype=torch.float64)
        self.pending_arm = torch.zeros(0, dtype=torch.int64)
        self.pending_t = torch.zeros(0, 2, dtype=torch.float64)

    def add(self, embeddings: torch.Tensor, arms: torch.Tensor, targets: torch.Tensor) -> None:
        """Count events (embeddings [N, D], arms [N], targets [N, 2] = (q, ĉ)) in their regions."""
        if not self.count:
            return
        if self.fitted:
            self._count(embeddings, arms.long(), targets.double())
            return
        self.pending_x = torch.cat([self.pending_x, embeddings])
        self.pending_arm = torch.cat([self.pending_arm, arms.long()])
        self.pending_t = torch.cat([self.pending_t, targets.double()])
        if len(self.pending_x) >= self.warmup_events:
            self.centroids = kmeans(self.pending_x, self.count, self.KMEANS_ITERATIONS)
            self.fitted = True
            self._count(self.pending_x, self.pending_arm, self.pending_t)
            self.pending_x = self.pending_x[:0]
            self.pending_arm = self.pending_arm[:0]
            self.pending_t = self.pending_t[:0]

    def _count(self, embeddings: torch.Tensor, arms: torch.Tensor, targets: torch.Tensor) -> None:
        regions = nearest(embeddings, self.centroids)
        known = arms >= 0  # -1: an arm dropped from the pool since (reindex)
        flat = regions[known] * self.counts.shape[1] + arms[known]
        self.counts += torch.bincount(flat, minlength=self.counts.numel()).reshape(self.counts.shape)
        z = torch.cat([embeddings[known], torch.ones(int(known.sum()), 1, dtype=torch.float64)], dim=1)
        self.sums_z.view(-1, z.shape[1]).index_add_(0, flat, z)
        self.sums_t.view(-1, 2).index_add_(0, flat, targets[known])

    def sums(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per (region, model): events [C, K] (float64), Σ [x; 1] [C, K, D+1], Σ (q, ĉ) [C, K, 2]."""
        return self.counts.double(), self.sums_z, self.sums_t

    def table(self, arm_events: torch.Tensor) -> torch.Tensor:
        """n[c, a] (float64): the per-region counts once fitted; before that every region has the model's
        overall count (and the centroids are all equal, so every prompt is in region 0)."""
        if self.fitted:
            return self.counts.double()
        return arm_events.double().expand(self.count, -1).clone()

    def reindex(self, old_index: list[int]) -> None:
        """Columns for a new arm list: ``old_index[i]`` = the new arm i's old index, −1 = new (count 0)."""
        if not self.count:
            return
        counts = torch.zeros(self.count, len(old_index), dtype=torch.int64)
        sums_z = torch.zeros(self.count, len(old_index), self.sums_z.shape[2], dtype=torch.float64)
        sums_t = torch.zeros(self.count, len(old_index), 2, dtype=torch.float64)
        for new, old in enumerate(old_index):
            if old >= 0:
                counts[:, new] = self.counts[:, old]
                sums_z[:, new] = self.sums_z[:, old]
                sums_t[:, new] = self.sums_t[:, old]
        self.counts, self.sums_z, self.sums_t = counts, sums_z, sums_t
        mapping = {old: new for new, old in enumerate(old_index) if old >= 0}
        self.pending_arm = torch.tensor(
            [mapping.get(int(a), -1) for a in self.pending_arm], dtype=torch.int64
        )

    def state(self) -> dict[str, torch.Tensor]:
        if not self.count:
            return {}
        return {
            "region_centroids": self.centroids.clone(),
            "region_counts": self.counts.clone(),
            "region_fitted": torch.tensor([int(self.fitted)], dtype=torch.int64),
            "region_pending_x": self.pending_x.clone(),
            "region_pending_arm": self.pending_arm.clone(),
            "region_sums_z": self.sums_z.clone(),
            "region_sums_t": self.sums_t.clone(),
            "region_pending_t": self.pending_t.clone(),
        }

    def load_state(self, state: dict[str, torch.Tensor], required: bool = True) -> None:
        """Restore ``state()``; ``required``: the intercepts' sums must be there (intercepts on)."""
        if not self.count:
            return
        for name, shape in (
            ("region_centroids", tuple(self.centroids.shape)),
            ("region_counts", tuple(self.counts.shape)),
            ("region_fitted", (1,)),
        ):
            if name not in state or tuple(state[name].shape) != shape:
                raise ValueError(f"learner state {name!r} missing or of the wrong shape")
        pending_x, pending_arm = state.get("region_pending_x"), state.get("region_pending_arm")
        if (
            pending_x is None
            or pending_arm is None
            or pending_x.dim() != 2
            or pending_x.shape[1] != self.centroids.shape[1]
            or tuple(pending_arm.shape) != (len(pending_x),)
        ):
            raise ValueError(
                "learner state 'region_pending_x'/'region_pending_arm' missing or of the wrong shape"
            )
        self.centroids = state["region_centroids"].to(torch.float64).clone()
        self.counts = state["region_counts"].to(torch.int64).clone()
        self.fitted = bool(int(state["region_fitted"][0]))
        self.pending_x = pending_x.to(torch.float64).clone()
        self.pending_arm = pending_arm.to(torch.int64).clone()
        self._load_sums(state, required)

    def _load_sums(self, state: dict[str, torch.Tensor], required: bool) -> None:
        """The intercepts' sums. A state saved before they existed has none: zeros when the intercepts are
        off, else ValueError (the loop then rebuilds the statistics from the retained log, exactly)."""
        sums_z, sums_t, pending_t = (state.get(f"region_{n}") for n in ("sums_z", "sums_t", "pending_t"))
        if not required and sums_z is None and sums_t is None and pending_t is None:
            self.pending_t = torch.zeros(len(self.pending_x), 2, dtype=torch.float64)
            return
        if (
            sums_z is None
            or sums_t is None
            or pending_t is None
            or tuple(sums_z.shape) != tuple(self.sums_z.shape)
            or tuple(sums_t.shape) != tuple(self.sums_t.shape)
            or tuple(pending_t.shape) != (len(self.pending_x), 2)
        ):
            raise ValueError(
                "learner state 'region_sums_z'/'region_sums_t'/'region_pending_t' missing or of a wrong shape"
            )
        self.sums_z = sums_z.to(torch.float64).clone()
        self.sums_t = sums_t.to(torch.float64).clone()
        self.pending_t = pending_t.to(torch.float64).clone()


def nearest(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of each point's nearest centroid (lowest index on ties), as the network computes it."""
    return (2.0 * points @ centroids.T - (centroids * centroids).sum(dim=1)).argmax(dim=1)


def kmeans(points: torch.Tensor, count: int, iterations: int) -> torch.Tensor:
    """Deterministic k-means (k-means++ seeding from a fixed generator, then Lloyd): [count, D] centroids."""
    generator = torch.Generator().manual_seed(0)
    first = int(torch.randint(len(points), (1,), generator=generator))
    centroids = points[first : first + 1]
    for _ in range(1, count):
        distance = torch.cdist(points, centroids).min(dim=1).values ** 2
        if float(distance.sum()) <= 0.0:  # fewer distinct points than regions: repeat one
            pick = first
        else:
            pick = int(torch.multinomial(distance / distance.sum(), 1, generator=generator))
        centroids = torch.cat([centroids, points[pick : pick + 1]])
    for _ in range(iterations):
        assignment = nearest(points, centroids)
        for c in range(count):
            members = points[assignment == c]
            if len(members):
                centroids[c] = members.mean(dim=0)
    return centroids
