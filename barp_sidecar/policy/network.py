"""The BaRP policy network π(a|x,w) = softmax(g([h(x); φ(w)])) with an action mask. Pure torch.

Owns the architecture and its hyper-parameters (``PolicyArchitecture``); knows nothing about encoders,
files, gRPC or training. ``h(x)`` arrives as a precomputed embedding. Two kinds (manifest
``architecture.kind``):

- ``"barp"`` (the paper's, the default): φ is a small MLP over the preference w = (w_q, 1 − w_q); g is an
  MLP decision head producing one logit per model.
- ``"reward_model"``: g predicts each model's quality q̂_a(x) and normalised cost ĉ_a(x) = E[min(c/τ, 1)]
  from h(x) alone (``head_layers`` hidden layers, 0 = linear), and the preference enters exactly as the
  reward does: r̂_a = w_q·q̂_a − (1 − w_q)·ĉ_a. One network ranks models for every trade-off at once (r is
  linear in w given (q, c)). π over r̂ is shaped by ``exploration`` with the stored scale s
  (``exploration_scale``, which the trainer raises as evidence accumulates): "boltzmann" π ∝ exp(s·r̂);
  "inverse_gap" (SquareCB's inverse-gap weighting) π_a = 1 / (K + s·(r̂* − r̂_a)) for every model but the
  best one r̂*, which takes the rest. Either way the greedy choice is argmax r̂, whatever s.
  ``exploration_regions`` C ≥ 1 (optional, "inverse_gap" only): an optimism bonus per prompt region and
  model, buffer ``exploration_bonus`` [C, K] (reward units), looked up by the prompt's region (the nearest
  of C stored centroids, buffer ``exploration_centroids`` [C, D]): the gap becomes
  max(r̂* − r̂_a − bonus, ``GAP_FLOOR_FRACTION``·(r̂* − r̂_a)), so a model whose estimate on this kind of
  prompt is uncertain (the trainer sets the bonus from how often it was tried there) keeps being explored
  while its gap is within that uncertainty. The floor keeps every other model below the best one, so the
  greedy choice is still argmax r̂.
  ``region_intercepts`` (optional, needs ``exploration_regions``): buffer ``region_intercept`` [C, 2K] adds
  a per-(region, model) offset to q̂ and ĉ for the prompt's region (the same nearest centroid), so a
  model's level on one kind of prompt is one number fitted from all its events there, not a slope.
  ``exploration_share`` (optional, one value per model, set by a model-pool change): a model with a share
  below 1 is served with that probability (forced exploration of a model new to the pool, whatever its
  prediction; the other models share the rest as π over them alone) and is never the most probable one;
  a share of 0 masks a retired model (probability exactly 0, a finite logit).

Invariants: deterministic given the weights and inputs (no dropout at eval); masked models get logit −inf
and probability exactly 0; callers guarantee every row allows at least one model (the routing layer turns an
all-masked request into FAILED_PRECONDITION before inference).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from barp_sidecar.policy.reward import reward_from_normalized_cost

ARCHITECTURE_KINDS = ("barp", "reward_model")
# With exploration regions, an optimism bonus lowers a model's gap to at most this fraction of it, never to 0.
GAP_FLOOR_FRACTION = 0.125
EXPLORATION_SHAPES = ("boltzmann", "inverse_gap")


@dataclass(frozen=True)
class PolicyArchitecture:
    """Shape of the network; stored in the checkpoint manifest and used to rebuild it."""

    embedding_dim: int
    num_models: int
    preference_hidden: int = 64
    preference_dim: int = 32
    head_hidden: int = 256
    head_layers: int = 2
    dropout: float = 0.0
    # "concat": g([h; φ(w)]) as in the paper. "film": additionally scales/shifts every hidden layer of g by
    # φ(w), which lets the preference switch the decision more sharply (helps the ends of the simplex).
    conditioning: str = "concat"
    # "barp" (softmax(g([h; φ(w)]))) or "reward_model" (logits from predicted quality and cost; see above).
    kind: str = "barp"
    # "reward_model" only: how π spreads over the predicted rewards ("boltzmann" or "inverse_gap").
    exploration: str = "boltzmann"
    # "reward_model" only, optional, per model: 1 = it competes normally; s < 1 = served with probability
    # s as exploration, never greedily (a model new to the pool, until it has data); 0 = a retired model,
    # masked. Empty = none (omitted from manifests, so older ones stay byte-identical).
    exploration_share: tuple[float, ...] = ()
    # "reward_model" + "inverse_gap" only: 0 = none; C >= 1 = C prompt regions (centroid buffer [C, D]) and
    # an optimism bonus per (region, model) (buffer [C, K]) that narrows the gaps (omitted when 0).
    exploration_regions: int = 0
    # "reward_model" with exploration_regions >= 1 only: a per-(region, model) offset of q̂ and ĉ (buffer
    # [C, 2K]) added for the prompt's region (omitted when false).
    region_intercepts: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "exploration_share", tuple(float(v) for v in self.exploration_share))
        if self.embedding_dim <= 0 or self.num_models <= 0:
            raise ValueError("embedding_dim and num_models must be positive")
        if self.kind not in ARCHITECTURE_KINDS:
            raise ValueError(f"kind must be one of {ARCHITECTURE_KINDS}, not {self.kind!r}")
        if self.exploration not in EXPLORATION_SHAPES:
            raise ValueError(f"exploration must be one of {EXPLORATION_SHAPES}, not {self.exploration!r}")
        if self.head_layers < (0 if self.kind == "reward_model" else 1):
            raise ValueError(f"head_layers must be >= {0 if self.kind == 'reward_model' else 1}")
        if self.conditioning not in ("concat", "film"):
            raise ValueError(f"conditioning must be 'concat' or 'film', not {self.conditioning!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        if self.exploration_share:
            if self.kind != "reward_model":
                raise ValueError("exploration_share needs kind 'reward_model'")
            if len(self.exploration_share) != self.num_models:
                raise ValueError(
                    f"exploration_share has {len(self.exploration_share)} values for {self.num_models} models"
                )
            if not all(0.0 <= v <= 1.0 for v in self.exploration_share):
                raise ValueError("exploration_share values must be in [0, 1]")
        if self.exploration_regions < 0:
            raise ValueError("exploration_regions must be >= 0")
        if self.exploration_regions and (self.kind != "reward_model" or self.exploration != "inverse_gap"):
            raise ValueError("exploration_regions needs kind 'reward_model' with exploration 'inverse_gap'")
        if self.region_intercepts and not self.exploration_regions:
            raise ValueError("region_intercepts needs exploration_regions >= 1")

    def to_dict(self) -> dict[str, Any]:
        # Persisted (manifest.json "architecture") under the key "num_arms": the one place that maps it.
        data = asdict(self)
        data["num_arms"] = data.pop("num_models")
        if not self.exploration_share:
            del data["exploration_share"]  # byte-identical manifests for policies without shares
        else:
            data["exploration_share"] = list(self.exploration_share)
        if not self.exploration_regions:
            del data["exploration_regions"]  # byte-identical manifests for policies without regions
        if not self.region_intercepts:
            del data["region_intercepts"]
        return data

    @property
    def capped(self) -> bool:
        """True when some model has an ``exploration_share`` below 1."""
        return any(v < 1.0 for v in self.exploration_share)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PolicyArchitecture:
        fields = dict(data)
        if "num_arms" in fields:
            fields["num_models"] = fields.pop("num_arms")  # the persisted key, see to_dict
        unknown = set(fields) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown architecture keys: {sorted(unknown)}")
        return cls(**fields)


class PolicyNetwork(nn.Module):
    """π(a|x,w). ``forward`` returns masked logits; ``probabilities`` the softmax."""

    exploration_scale: torch.Tensor  # "reward_model" only (a buffer [1])
    exploration_centroids: torch.Tensor  # "reward_model" with exploration_regions C >= 1 only: [C, D]
    exploration_bonus: torch.Tensor  # "reward_model" with exploration_regions C >= 1 only: [C, K]
    region_intercept: torch.Tensor  # "reward_model" with region_intercepts only: [C, 2K]
    reward_head: nn.Linear  # "reward_model" only
    output: nn.Linear  # "barp" only

    def __init__(self, architecture: PolicyArchitecture) -> None:
        super().__init__()
        self.architecture = architecture
        a = architecture
        self.dropout = nn.Dropout(a.dropout)
        self.hidden_layers = nn.ModuleList()
        self.film: nn.Linear | None = None
        if a.kind == "reward_model":
            in_dim = a.embedding_dim
            for _ in range(a.head_layers):
                self.hidden_layers.append(nn.Linear(in_dim, a.head_hidden))
                in_dim = a.head_hidden
            # Rows 0..K-1: quality; K..2K-1: normalised cost.
            self.reward_head = nn.Linear(in_dim, 2 * a.num_models)
            self.register_buffer("exploration_scale", torch.ones(1))
            if a.exploration_regions:
                self.register_buffer(
                    "exploration_centroids", torch.zeros(a.exploration_regions, a.embedding_dim)
                )
                self.register_buffer("exploration_bonus", torch.zeros(a.exploration_regions, a.num_models))
            if a.region_intercepts:
                self.register_buffer("region_intercept", torch.zeros(a.exploration_regions, 2 * a.num_models))
            return
        self.preference_mlp = nn.Sequential(
            nn.Linear(2, a.preference_hidden),
            nn.GELU(),
            nn.Linear(a.preference_hidden, a.preference_dim),
        )
        in_dim = a.embedding_dim + a.preference_dim
        for _ in range(a.head_layers):
            self.hidden_layers.append(nn.Linear(in_dim, a.head_hidden))
            in_dim = a.head_hidden
        if a.conditioning == "film":
            self.film = nn.Linear(a.preference_dim, 2 * a.head_hidden * a.head_layers)
            # Start as the identity modulation so "film" begins exactly like "concat".
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)
        self.output = nn.Linear(in_dim, a.num_models)

    def predicted_outcomes(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """("reward_model" only) predicted quality and normalised cost per model, each [B, K]."""
        if self.architecture.kind != "reward_model":
            raise ValueError(f"predicted_outcomes needs kind 'reward_model', not {self.architecture.kind!r}")
        x = embeddings
        for layer in self.hidden_layers:
            x = self.dropout(torch.nn.functional.gelu(layer(x)))
        outcomes = self.reward_head(x)
        if self.architecture.region_intercepts:
            offsets = self.region_intercept.to(outcomes.dtype)
            outcomes = outcomes + offsets[self.exploration_region(embeddings)]
        k = self.architecture.num_models
        return outcomes[:, :k], outcomes[:, k:]

    def exploration_region(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Each row's region [B]: its nearest centroid (lowest index on ties)."""
        centroids = self.exploration_centroids.to(embeddings.dtype)
        # argmin ‖x − μ_c‖² = argmax (2·x·μ_c − ‖μ_c‖²)
        closeness = 2.0 * embeddings @ centroids.T - (centroids * centroids).sum(dim=1)
        return closeness.argmax(dim=1)

    def _bonus(self, embeddings: torch.Tensor) -> torch.Tensor | None:
        """The optimism bonus for each row and model [B, K] (by region), None without regions."""
        if not self.architecture.exploration_regions:
            return None
        return self.exploration_bonus[self.exploration_region(embeddings)]

    def _reward_model_logits(
        self, predicted: torch.Tensor, allowed: torch.Tensor | None, bonus: torch.Tensor | None
    ) -> torch.Tensor:
        if allowed is not None:
            predicted = predicted.masked_fill(~allowed, float("-inf"))
        if self.architecture.capped:
            return self._capped_logits(predicted, bonus)
        return self._spread(predicted, bonus)

    def _spread(self, predicted: torch.Tensor, bonus: torch.Tensor | None) -> torch.Tensor:
        """Logits of π over ``predicted`` rewards (−inf = masked) by the architecture's exploration shape;
        ``bonus`` [B, K] (inverse_gap with regions) narrows each model's gap, never below its floor."""
        if self.architecture.exploration == "boltzmann":
            return self.exploration_scale * predicted
        # Inverse-gap weighting: log-probabilities, so softmax(logits) is exactly the IGW distribution.
        count = predicted.isfinite().sum(dim=1, keepdim=True).to(predicted.dtype)
        best = predicted.argmax(dim=1, keepdim=True)
        gap = predicted.gather(1, best) - predicted  # ≥ 0; +inf for masked models
        if bonus is not None:
            bonus = bonus.to(predicted.dtype)
            gap = torch.maximum(gap - bonus, GAP_FLOOR_FRACTION * gap)
        others = 1.0 / (count + self.exploration_scale * gap)
        others = others.scatter(1, best, 0.0)
        probabilities = others.scatter(1, best, 1.0 - others.sum(dim=1, keepdim=True))
        return torch.log(probabilities)

    def _capped_logits(self, predicted: torch.Tensor, bonus: torch.Tensor | None) -> torch.Tensor:
        """π with each capped model a (share s_a < 1) at min(s_a, ½·(1 − Σ shares)·max π_rest): the other
        models share the rest as π over them alone, so a capped model is never the most probable one. Rows
        whose every allowed model is capped keep the uncapped π (the request allowed nothing else)."""
        shares = self.architecture.exploration_share
        caps = torch.tensor(shares, dtype=predicted.dtype, device=predicted.device)
        capped = caps < 1.0
        full = torch.softmax(self._spread(predicted, bonus), dim=1)
        uncapped_rewards = predicted.masked_fill(capped, float("-inf"))
        has_rest = uncapped_rewards.isfinite().any(dim=1, keepdim=True)
        rest = torch.softmax(self._spread(torch.where(has_rest, uncapped_rewards, predicted), bonus), dim=1)
        rest = torch.where(has_rest & capped, torch.zeros_like(rest), rest)
        share = caps.expand_as(full).masked_fill(~capped | ~predicted.isfinite(), 0.0)
        remainder = 1.0 - share.sum(dim=1, keepdim=True)
        share = torch.minimum(share, 0.5 * remainder * rest.max(dim=1, keepdim=True).values)
        probabilities = share + (1.0 - share.sum(dim=1, keepdim=True)) * rest
        probabilities = torch.where(has_rest, probabilities, full)
        # Zero probability: −inf for models the request masked, the smallest finite logit for a capped one at
        # 0 (a retired model): softmax gives it exactly 0 and the policy's outputs stay finite.
        lowest = torch.finfo(probabilities.dtype).min
        logits = torch.log(probabilities).masked_fill((probabilities <= 0) & predicted.isfinite(), lowest)
        return logits

    def forward(
        self,
        embeddings: torch.Tensor,
        quality_weight: torch.Tensor,
        allowed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Masked logits [B, K].

        embeddings: [B, D] float; quality_weight: [B] in [0, 1]; allowed: [B, K] bool or None (all allowed).
        """
        w_q = quality_weight.to(embeddings.dtype).reshape(-1, 1)
        if self.architecture.kind == "reward_model":
            quality, cost = self.predicted_outcomes(embeddings)
            rewards = reward_from_normalized_cost(quality, cost, w_q)
            return self._reward_model_logits(rewards, allowed, self._bonus(embeddings))
        preference = torch.cat([w_q, 1.0 - w_q], dim=1)
        phi = self.preference_mlp(preference)
        x = torch.cat([embeddings, phi], dim=1)
        modulation = None
        if self.film is not None:
            modulation = self.film(phi).chunk(2 * len(self.hidden_layers), dim=1)
        for index, layer in enumerate(self.hidden_layers):
            x = layer(x)
            if modulation is not None:
                scale, shift = modulation[2 * index], modulation[2 * index + 1]
                x = x * (1.0 + scale) + shift
            x = self.dropout(torch.nn.functional.gelu(x))
        logits = self.output(x)
        if allowed is not None:
            logits = logits.masked_fill(~allowed, float("-inf"))
        return logits

    def probabilities(
        self,
        embeddings: torch.Tensor,
        quality_weight: torch.Tensor,
        allowed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Softmax over allowed models, computed in float32 even for half-precision weights."""
        return torch.softmax(self.forward(embeddings, quality_weight, allowed).float(), dim=-1)
