"""The BaRP policy network π(a|x,w) = softmax(g([h(x); φ(w)])) with an action mask. Pure torch.

Owns the architecture and its hyper-parameters (``PolicyArchitecture``); knows nothing about encoders,
files, gRPC or training. ``h(x)`` arrives as a precomputed embedding; φ is a small MLP over the
preference w = (w_q, 1 − w_q); g is an MLP decision head producing one logit per arm.

Invariants: deterministic given the weights and inputs (no dropout at eval); masked arms get logit −inf
and probability exactly 0; callers guarantee every row allows at least one arm (the routing layer turns an
all-masked request into FAILED_PRECONDITION before inference).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class PolicyArchitecture:
    """Shape of the network; stored in the checkpoint manifest and used to rebuild it."""

    embedding_dim: int
    num_arms: int
    preference_hidden: int = 64
    preference_dim: int = 32
    head_hidden: int = 256
    head_layers: int = 2
    dropout: float = 0.0
    # "concat": g([h; φ(w)]) as in the paper. "film": additionally scales/shifts every hidden layer of g by
    # φ(w), which lets the preference switch the decision more sharply (helps the ends of the simplex).
    conditioning: str = "concat"

    def __post_init__(self) -> None:
        if self.embedding_dim <= 0 or self.num_arms <= 0:
            raise ValueError("embedding_dim and num_arms must be positive")
        if self.head_layers < 1:
            raise ValueError("head_layers must be >= 1")
        if self.conditioning not in ("concat", "film"):
            raise ValueError(f"conditioning must be 'concat' or 'film', not {self.conditioning!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PolicyArchitecture:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown architecture keys: {sorted(unknown)}")
        return cls(**data)


class PolicyNetwork(nn.Module):
    """π(a|x,w). ``forward`` returns masked logits; ``probabilities`` the softmax."""

    def __init__(self, architecture: PolicyArchitecture) -> None:
        super().__init__()
        self.architecture = architecture
        a = architecture
        self.preference_mlp = nn.Sequential(
            nn.Linear(2, a.preference_hidden),
            nn.GELU(),
            nn.Linear(a.preference_hidden, a.preference_dim),
        )
        self.hidden_layers = nn.ModuleList()
        in_dim = a.embedding_dim + a.preference_dim
        for _ in range(a.head_layers):
            self.hidden_layers.append(nn.Linear(in_dim, a.head_hidden))
            in_dim = a.head_hidden
        self.film = (
            nn.Linear(a.preference_dim, 2 * a.head_hidden * a.head_layers)
            if a.conditioning == "film"
            else None
        )
        if self.film is not None:
            # Start as the identity modulation so "film" begins exactly like "concat".
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)
        self.dropout = nn.Dropout(a.dropout)
        self.output = nn.Linear(in_dim, a.num_arms)

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
        """Softmax over allowed arms, computed in float32 even for half-precision weights."""
        return torch.softmax(self.forward(embeddings, quality_weight, allowed).float(), dim=-1)
