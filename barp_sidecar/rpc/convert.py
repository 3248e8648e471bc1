"""Conversion between barp.v1 protobuf messages and domain dataclasses. No decisions, no validation of
ranges (routing/ does that); only what the wire format itself can get wrong (unknown enum numbers).
"""

from __future__ import annotations

from typing import Any

from barp_sidecar.domain import Decision, ExplorationMode, RouteCommand
from barp_sidecar.errors import InvalidArgument
from barp_sidecar.gen.barp.v1 import router_pb2

_MODE_BY_ENUM: dict[int, ExplorationMode] = {
    router_pb2.EXPLORATION_GREEDY: ExplorationMode.GREEDY,
    router_pb2.EXPLORATION_SAMPLE: ExplorationMode.SAMPLE,
    router_pb2.EXPLORATION_EPSILON_GREEDY: ExplorationMode.EPSILON_GREEDY,
}
_ENUM_BY_MODE: dict[ExplorationMode, Any] = {mode: number for number, mode in _MODE_BY_ENUM.items()}


def exploration_from_pb(value: int) -> ExplorationMode | None:
    """None for UNSPECIFIED (use the default); InvalidArgument for a number the contract does not define."""
    if value == router_pb2.EXPLORATION_UNSPECIFIED:
        return None
    try:
        return _MODE_BY_ENUM[value]
    except KeyError:
        raise InvalidArgument(
            "exploration", f"unknown value {value}; expected one of {sorted(router_pb2.Exploration.values())}"
        ) from None


def exploration_to_pb(mode: ExplorationMode) -> Any:
    return _ENUM_BY_MODE[mode]


def quality_weight_from_pb(preference: router_pb2.Preference) -> float | None:
    """The request's w_q, or None (= the configured default) when unset; an absent message reads as unset."""
    return preference.quality_weight if preference.HasField("quality_weight") else None


def route_command(request: router_pb2.RouteRequest, deadline_monotonic_s: float | None) -> RouteCommand:
    return RouteCommand(
        prompt=request.prompt,
        quality_weight=quality_weight_from_pb(request.preference),
        allowed_models=tuple(request.allowed_models),
        exploration=exploration_from_pb(request.exploration),
        request_id=request.request_id,
        deadline_monotonic_s=deadline_monotonic_s,
    )


def route_response(decision: Decision) -> router_pb2.RouteResponse:
    return router_pb2.RouteResponse(
        decision_id=decision.decision_id,
        model=decision.model,
        propensity=decision.propensity,
        probabilities=[
            router_pb2.ModelProbability(model=name, probability=probability)
            for name, probability in zip(decision.models, decision.probabilities, strict=True)
        ],
        policy_version=decision.policy_version,
        encoder=decision.encoder,
        exploration=exploration_to_pb(decision.exploration),
        quality_weight=decision.quality_weight,
    )
