"""The one "allowed models" computation: a request's ``allowed_models`` and the disabled models -> a mask.

Owns the rules (DESIGN §3): an empty ``allowed_models`` means every model; a duplicate or unknown name is
INVALID_ARGUMENT naming the field; ``routing.disabled_models`` are never allowed; a mask with nothing left is
FAILED_PRECONDITION. The result is a bool array in the policy's model order, the shape the network's
``probabilities(..., allowed)`` and ``routing.exploration.choose_model`` take. Pure; used by the sidecar's
RoutingService, ``barp-sidecar decide`` and the trainer's evaluation, so all three mask alike. Knows nothing
about providers (which models are callable is the caller's further restriction).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from barp_sidecar.bounded_text import preview_items
from barp_sidecar.errors import InvalidArgument, NoAllowedModel


def allowed_mask(
    models: Sequence[str], allowed_models: Sequence[str] = (), disabled_models: Collection[str] = frozenset()
) -> np.ndarray:
    """bool [len(models)]: True where a model may be chosen. Raises InvalidArgument("allowed_models", ...) for
    a duplicate or unknown name and NoAllowedModel (FAILED_PRECONDITION) when no model is left. Names are
    echoed bounded (``preview_items``)."""
    index = {name: position for position, name in enumerate(models)}
    if allowed_models:
        seen: set[str] = set()
        for name in allowed_models:
            if name in seen:
                raise InvalidArgument("allowed_models", f"duplicate model {preview_items([name])[1:-1]}")
            seen.add(name)
        unknown = [name for name in allowed_models if name not in index]
        if unknown:
            # Bounded: a caller may send 20,000 names; the status and the access log must not grow with it.
            raise InvalidArgument(
                "allowed_models",
                f"{len(unknown)} unknown model(s) {preview_items(unknown)}; "
                f"known models: {preview_items(models, max_items=64)}",
            )
        mask = np.zeros(len(models), dtype=bool)
        mask[[index[name] for name in allowed_models]] = True
    else:
        mask = np.ones(len(models), dtype=bool)
    if disabled_models:
        mask &= np.array([name not in disabled_models for name in models], dtype=bool)
    if not mask.any():
        requested = preview_items(allowed_models) if allowed_models else "all models"
        raise NoAllowedModel(
            f"no allowed model is available: allowed_models={requested}, "
            f"disabled (routing.disabled_models)={sorted(disabled_models)}"
        )
    return mask


def models_in(models: Sequence[str], mask: Sequence[bool] | np.ndarray) -> tuple[str, ...]:
    """The names ``mask`` allows, in model order."""
    return tuple(name for name, allowed in zip(models, mask, strict=True) if allowed)
