"""The one "allowed models" computation: a request's ``allowed_models`` and the disabled models -> a mask.

Owns the rules (DESIGN §3): an empty ``allowed_models`` means every model; a duplicate or unknown name is
INVALID_ARGUMENT naming the field; ``routing.disabled_models`` are never allowed; a mask with nothing left is
FAILED_PRECONDITION. The result is a bool array in the policy's arm order, the shape the network's
``probabilities(..., allowed)`` and ``routing.exploration.choose_arm`` take. Pure; used by the sidecar's
RoutingService, ``barp-sidecar decide`` and the trainer's evaluation, so all three mask alike. Knows nothing
about providers (which models are callable is the caller's further restriction).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from barp_sidecar.errors import FailedPrecondition, InvalidArgument


def allowed_mask(
    arms: Sequence[str], allowed_models: Sequence[str] = (), disabled_models: Collection[str] = frozenset()
) -> np.ndarray:
    """bool [len(arms)]: True where a model may be chosen. Raises InvalidArgument("allowed_models", ...) for
    a duplicate or unknown name and FailedPrecondition when no model is left."""
    index = {name: position for position, name in enumerate(arms)}
    if allowed_models:
        seen: set[str] = set()
        for name in allowed_models:
            if name in seen:
                raise InvalidArgument("allowed_models", f"duplicate model {name!r}")
            seen.add(name)
        unknown = [name for name in allowed_models if name not in index]
        if unknown:
            raise InvalidArgument("allowed_models", f"unknown model(s) {unknown}; known models: {list(arms)}")
        mask = np.zeros(len(arms), dtype=bool)
        mask[[index[name] for name in allowed_models]] = True
    else:
        mask = np.ones(len(arms), dtype=bool)
    if disabled_models:
        mask &= np.array([name not in disabled_models for name in arms], dtype=bool)
    if not mask.any():
        requested = list(allowed_models) if allowed_models else "all models"
        raise FailedPrecondition(
            f"no allowed model is available: allowed_models={requested}, "
            f"disabled (routing.disabled_models)={sorted(disabled_models)}"
        )
    return mask


def models_in(arms: Sequence[str], mask: Sequence[bool] | np.ndarray) -> tuple[str, ...]:
    """The names ``mask`` allows, in arm order."""
    return tuple(name for name, allowed in zip(arms, mask, strict=True) if allowed)
