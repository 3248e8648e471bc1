"""RoutingService over a real MicroBatcher and a fake scorer: validation, defaults, masks, deadlines."""

from __future__ import annotations

import time

import numpy as np
import pytest

from barp_sidecar.batching.batcher import MicroBatcher
from barp_sidecar.domain import ExplorationMode, RouteCommand
from barp_sidecar.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument
from barp_sidecar.policy.inference import InferenceRequest, InferenceResult
from barp_sidecar.routing.service import RoutingService
from barp_sidecar.settings import RoutingSettings

ARMS = ("a", "b", "c")


class FakeScorer:
    """Prefers model ``len(prompt) % 3``; applies the mask like the network does; records what it saw."""

    def __init__(self) -> None:
        self.seen: list[InferenceRequest] = []

    def __call__(self, requests: list[InferenceRequest]) -> list[InferenceResult]:
        self.seen.extend(requests)
        results = []
        for request in requests:
            logits = np.zeros(3)
            logits[len(request.prompt) % 3] = 3.0
            if request.allowed is not None:
                logits[~np.array(request.allowed)] = -np.inf
            probs = np.exp(logits - logits.max())
            results.append(InferenceResult(probs / probs.sum(), np.zeros(4, np.float32), 9, False))
        return results


@pytest.fixture
async def service_and_scorer():
    scorer = FakeScorer()
    batcher = MicroBatcher(scorer, max_batch_size=8, max_wait_ms=1.0, max_pending=16)
    batcher.start()
    service = RoutingService(
        models=ARMS,
        encoder_id="fake",
        batcher=batcher,
        settings=RoutingSettings(default_quality_weight=0.25, disabled_models=("c",)),
        max_prompt_bytes=64,
        rng=np.random.default_rng(0),
    )
    yield service, scorer
    await batcher.close()


async def test_route_applies_defaults_and_returns_a_decision(service_and_scorer) -> None:
    service, scorer = service_and_scorer
    decision = await service.route(RouteCommand(prompt="abcd", request_id="r1"))  # prefers "b"
    assert decision.model == "b" and decision.propensity == 1.0
    assert decision.quality_weight == 0.25 and decision.exploration is ExplorationMode.GREEDY
    assert decision.policy_version == 9 and decision.encoder == "fake" and decision.request_id == "r1"
    assert decision.probabilities[2] == 0.0  # "c" is disabled
    assert scorer.seen[-1].allowed == (True, True, False)


async def test_no_mask_is_sent_when_everything_is_allowed() -> None:
    scorer = FakeScorer()
    batcher = MicroBatcher(scorer, max_batch_size=8, max_wait_ms=0.0, max_pending=16)
    batcher.start()
    service = RoutingService(
        models=ARMS,
        encoder_id="fake",
        batcher=batcher,
        settings=RoutingSettings(),
        max_prompt_bytes=1 << 20,
        rng=np.random.default_rng(0),
    )
    await service.route(RouteCommand(prompt="abc", quality_weight=1.0))
    await batcher.close()
    assert scorer.seen[-1].allowed is None and scorer.seen[-1].quality_weight == 1.0


@pytest.mark.parametrize(
    ("command", "field"),
    [
        (RouteCommand(prompt=""), "prompt"),
        (RouteCommand(prompt="x" * 65), "prompt"),
        (RouteCommand(prompt="é" * 33), "prompt"),  # 66 UTF-8 bytes
        (RouteCommand(prompt="x", quality_weight=float("nan")), "preference.quality_weight"),
        (RouteCommand(prompt="x", quality_weight=float("inf")), "preference.quality_weight"),
        (RouteCommand(prompt="x", quality_weight=-0.01), "preference.quality_weight"),
        (RouteCommand(prompt="x", quality_weight=1.01), "preference.quality_weight"),
        (RouteCommand(prompt="x", allowed_models=("a", "zz")), "allowed_models"),
        (RouteCommand(prompt="x", allowed_models=("a", "a")), "allowed_models"),
        (RouteCommand(prompt="x", request_id="r" * 129), "request_id"),
    ],
)
async def test_invalid_commands_name_the_field_and_never_reach_inference(
    service_and_scorer, command, field
) -> None:
    service, scorer = service_and_scorer
    with pytest.raises(InvalidArgument) as caught:
        await service.route(command)
    assert caught.value.field == field
    assert scorer.seen == []


async def test_unknown_model_message_names_it(service_and_scorer) -> None:
    service, _ = service_and_scorer
    with pytest.raises(InvalidArgument, match="'zz'"):
        await service.route(RouteCommand(prompt="x", allowed_models=("zz",)))


async def test_all_allowed_models_disabled_is_failed_precondition(service_and_scorer) -> None:
    service, scorer = service_and_scorer
    with pytest.raises(FailedPrecondition, match=r"routing\.disabled_models"):
        await service.route(RouteCommand(prompt="x", allowed_models=("c",)))
    assert scorer.seen == []


async def test_restrict_to_limits_the_choice_for_callers_like_complete(service_and_scorer) -> None:
    service, _ = service_and_scorer
    decision = await service.route(RouteCommand(prompt="abcd"), restrict_to={"a"})
    assert decision.model == "a"
    with pytest.raises(FailedPrecondition):
        await service.route(RouteCommand(prompt="abcd", allowed_models=("b",)), restrict_to={"a"})


async def test_expired_deadline_is_not_computed(service_and_scorer) -> None:
    service, scorer = service_and_scorer
    with pytest.raises(DeadlineExceeded):
        await service.route(RouteCommand(prompt="x", deadline_monotonic_s=time.monotonic() - 0.5))
    assert scorer.seen == []


async def test_decision_ids_are_unique(service_and_scorer) -> None:
    service, _ = service_and_scorer
    ids = {(await service.route(RouteCommand(prompt=f"p{i}"))).decision_id for i in range(30)}
    assert len(ids) == 30


def test_disabled_models_must_be_arms() -> None:
    with pytest.raises(ValueError, match="not models"):
        RoutingService(
            models=ARMS,
            encoder_id="fake",
            batcher=MicroBatcher(FakeScorer(), max_batch_size=1, max_wait_ms=0, max_pending=1),
            settings=RoutingSettings(disabled_models=("zz",)),
            max_prompt_bytes=1 << 20,
            rng=np.random.default_rng(0),
        )
