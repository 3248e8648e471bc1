"""Validation of incoming reward events. Pure: returns the reason (naming the field) or None.

Owns what a well-formed ``barp.v1.RewardEvent`` is for a given policy (model list and embedding size);
the servicer rejects malformed events in the ack with these reasons and keeps the stream going.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from barp_sidecar.gen.barp.v1 import trainer_pb2


def event_problem(
    event: trainer_pb2.RewardEvent,
    models: tuple[str, ...],
    embedding_dim: int,
    decided_with: Callable[[int], tuple[str, ...]] | None = None,
) -> str | None:
    """INVALID_ARGUMENT semantics: a message naming the bad field, or None when the event is valid.
    ``decided_with(policy_version)``: the model list of the version that decided (after a model-pool change
    an event may name a retired model and carry the older list's ``allowed`` mask); default ``models``."""
    if decided_with is not None:
        models = decided_with(event.policy_version)
    if not event.event_id:
        return "event_id: is required"
    if len(event.event_id) > 256:
        return "event_id: longer than 256 characters"
    if len(event.embedding) != embedding_dim:
        return f"embedding: has {len(event.embedding)} values, the policy expects {embedding_dim}"
    # One copy into float32 and one vectorised check (half the time of a Python sum over the values).
    if not np.isfinite(np.asarray(event.embedding, dtype=np.float32)).all():
        return "embedding: contains NaN or infinity"
    if not (math.isfinite(event.quality_weight) and 0.0 <= event.quality_weight <= 1.0):
        return f"quality_weight: must be in [0, 1], not {event.quality_weight!r}"
    if event.model not in models:
        return f"model: unknown model {event.model!r} (known: {list(models)})"
    if len(event.allowed) not in (0, len(models)):
        return f"allowed: has {len(event.allowed)} entries, the policy has {len(models)} models"
    if event.allowed and not event.allowed[models.index(event.model)]:
        return f"allowed: the chosen model {event.model!r} is masked out"
    if not (math.isfinite(event.propensity) and 0.0 < event.propensity <= 1.0):
        return f"propensity: must be in (0, 1], not {event.propensity!r}"
    if not (math.isfinite(event.quality) and 0.0 <= event.quality <= 1.0):
        return f"quality: must be in [0, 1], not {event.quality!r}"
    if event.HasField("cost_usd") and not (math.isfinite(event.cost_usd) and event.cost_usd >= 0.0):
        return f"cost_usd: must be a finite number >= 0, not {event.cost_usd!r}"
    return None
