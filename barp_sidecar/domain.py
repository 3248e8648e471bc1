"""Plain dataclasses that flow between the transport (rpc/), routing/ and the policy: no gRPC, no torch.

Owns only the shapes of a routing request (``RouteCommand``) and its answer (``Decision``). Validation
lives in ``barp_sidecar.routing``; conversion from/to protobuf lives in ``barp_sidecar.rpc.convert``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np


class ExplorationMode(StrEnum):
    """How a model is chosen from the policy's probabilities (see router.proto ``Exploration``)."""

    GREEDY = "greedy"
    SAMPLE = "sample"
    EPSILON_GREEDY = "epsilon_greedy"


@dataclass(frozen=True)
class RouteCommand:
    """One routing request as the caller stated it; ``None`` means "use the configured default"."""

    prompt: str
    quality_weight: float | None = None
    # Empty = every model. Names as in the policy's model list.
    allowed_models: tuple[str, ...] = ()
    exploration: ExplorationMode | None = None
    request_id: str = ""
    # Absolute deadline on the ``time.monotonic()`` clock; ``None`` = no deadline.
    deadline_monotonic_s: float | None = None


@dataclass(frozen=True)
class Decision:
    """The routing answer. ``probabilities`` follow ``models`` (the policy's order); masked models are 0."""

    decision_id: str
    model: str
    propensity: float
    models: tuple[str, ...]
    probabilities: tuple[float, ...]
    policy_version: int
    encoder: str
    exploration: ExplorationMode
    quality_weight: float
    # h(x), float32 [dim]: what a reward event carries instead of the prompt (DESIGN §1).
    embedding: np.ndarray = field(repr=False, compare=False)
    request_id: str = ""
    # The mask the choice was made under (policy model order; disabled/unlisted models False). The learner
    # needs it to know which models the logged propensity was spread over.
    allowed: tuple[bool, ...] = ()
