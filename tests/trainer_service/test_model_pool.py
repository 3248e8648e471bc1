"""Model-pool changes of a running trainer: the rules (check_pool / plan_pool), the network's exploration
shares, and the training loop adding a model (kept statistics, bounded exploration, then competing),
retiring one (masked, then dropped; its late events still accepted and logged), and refusing bad pools."""

from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pytest
import torch

from barp_sidecar.policy.checkpoint import load_checkpoint
from barp_sidecar.policy.network import PolicyArchitecture, PolicyNetwork
from tests.learning_helpers import ARMS, random_event
from tests.trainer_service.test_learner_state import make_loop, settings_for
from trainer.replay.memory_log import MemoryEventLog
from trainer.service.learner import CostImputer, to_batch
from trainer.service.model_pool import PoolChangeError, check_pool, plan_pool
from trainer.service.validation import event_problem

NEW = "fresh"


def test_check_pool_names_each_bad_request():
    assert check_pool(["a", "b"]) == ("a", "b")
    with pytest.raises(PoolChangeError, match="removes every model"):
        check_pool([])
    with pytest.raises(PoolChangeError, match="at least two models"):
        check_pool(["a"])
    with pytest.raises(PoolChangeError, match=r"listed twice.*\['a'\]"):
        check_pool(["a", "b", "a"])
    with pytest.raises(PoolChangeError, match="entry 1 is not a model name"):
        check_pool(["a", "b c"])


def test_plan_pool_appends_new_models_and_retires_missing_ones():
    plan = plan_pool(("a", "b", "c"), [], ("a", "c", "d"))
    assert plan.models == ("a", "b", "c", "d") and plan.added == ("d",) and plan.retired == ("b",)
    again = plan_pool(("a", "b", "c", "d"), ["b"], ("a", "b", "c", "d"))
    assert again.restored == ("b",) and again.changed
    assert not plan_pool(("a", "b"), [], ("b", "a")).changed
    with pytest.raises(PoolChangeError, match="removes every model of the serving pool"):
        plan_pool(("a", "b"), [], ("x", "y"))


def reward_network(shares: tuple[float, ...], exploration: str) -> PolicyNetwork:
    architecture = PolicyArchitecture(
        embedding_dim=4,
        num_models=4,
        head_layers=0,
        kind="reward_model",
        exploration=exploration,
        exploration_share=shares,
    )
    network = PolicyNetwork(architecture).eval()
    with torch.no_grad():
        network.reward_head.weight.zero_()
        network.reward_head.bias.zero_()
        network.reward_head.bias[:4] = torch.tensor([0.5, 0.4, 1.0, 0.9])  # arm 2 predicted best
        network.exploration_scale.fill_(10.0)
    return network


@pytest.mark.parametrize("exploration", ["inverse_gap", "boltzmann"])
def test_a_new_model_gets_exactly_its_share_and_a_retired_one_nothing(exploration):
    network = reward_network((1.0, 1.0, 0.2, 0.0), exploration)
    x, w = torch.randn(5, 4), torch.full((5,), 0.8)
    with torch.inference_mode():
        logits = network(x, w)
        p = network.probabilities(x, w)
    assert torch.isfinite(logits).all()  # sidecars' non-finite check passes
    assert torch.allclose(p[:, 2], torch.full((5,), 0.2))  # the share, although it is predicted best
    assert torch.equal(p[:, 3], torch.zeros(5))  # retired: exactly 0
    assert torch.equal(logits.argmax(dim=1), torch.zeros(5, dtype=torch.long))  # never greedy
    assert torch.allclose(p.sum(dim=1), torch.ones(5))
    # A request that allows only the capped models still gets a distribution over them.
    only = torch.tensor([[False, False, True, True]] * 5)
    with torch.inference_mode():
        restricted = network.probabilities(x, w, only)
    assert torch.allclose(restricted.sum(dim=1), torch.ones(5)) and (restricted[:, :2] == 0).all()


def test_exploration_share_round_trips_and_is_omitted_when_empty():
    plain = PolicyArchitecture(embedding_dim=4, num_models=2, head_layers=0, kind="reward_model")
    assert "exploration_share" not in plain.to_dict()
    capped = dataclasses.replace(plain, exploration_share=(1.0, 0.2))
    assert PolicyArchitecture.from_dict(json.loads(json.dumps(capped.to_dict()))) == capped
    with pytest.raises(ValueError, match="2 values for 3 models"):
        dataclasses.replace(plain, num_models=3, exploration_share=(1.0, 0.2))
    with pytest.raises(ValueError, match="needs kind 'reward_model'"):
        PolicyArchitecture(embedding_dim=4, num_models=2, exploration_share=(1.0, 0.2))


def pool_loop(tmp_path, **learner):
    settings = settings_for(tmp_path, "reward_model")
    settings = dataclasses.replace(
        settings,
        learner=dataclasses.replace(settings.learner, **learner),
    )
    log = MemoryEventLog()
    return make_loop(settings, log), log


def stream(loop, log, rng, count: int, models: tuple[str, ...], start: int) -> None:
    for i in range(count):
        event = random_event(rng, sequence=start + i)
        event.model = rng.choice(models)
        event.policy_version = loop.current_version
        log.append([event])
        loop.step()


def published_manifest(loop) -> dict:
    return json.loads((loop.store.path(loop.current_version) / "manifest.json").read_text())


def test_adding_a_model_keeps_what_was_learned_and_bounds_its_share(tmp_path):
    loop, log = pool_loop(tmp_path, new_model_min_events=40, new_model_share=0.25)
    rng = random.Random(0)
    stream(loop, log, rng, 200, ARMS, 1)
    gram_before = loop.learner.gram.clone()
    before = loop.current_version

    assert loop.request_pool((*ARMS, NEW)) is True
    result = loop.step()
    assert result["published"] is not None and loop.current_version == before + 1
    manifest = published_manifest(loop)
    assert manifest["arms"] == [*ARMS, NEW]
    assert manifest["architecture"]["exploration_share"] == [1.0, 1.0, 1.0, 0.25]
    assert manifest["training"]["model_pool"]["new_models"] == [NEW]
    assert torch.equal(loop.learner.gram[:3], gram_before)  # the known models' statistics are kept
    assert int(loop.learner.arm_events[3]) == 0
    served = load_checkpoint(loop.store.path(loop.current_version))  # what a sidecar loads
    x = torch.nn.functional.normalize(torch.randn(8, served.manifest.architecture.embedding_dim), dim=1)
    with torch.inference_mode():
        p = served.network.probabilities(x, torch.full((8,), 0.5))
    assert (p[:, 3] > 0.1).all() and (p[:, 3] <= 0.25 + 1e-6).all()  # explored, within its share
    assert (p.argmax(dim=1) != 3).all()  # never the greedy choice while untested

    stream(loop, log, rng, 400, (*ARMS, NEW), 201)  # the new model gets data
    assert int(loop.learner.arm_events[3]) >= 40
    latest = published_manifest(loop)
    assert "exploration_share" not in latest["architecture"]  # competing like the others now
    assert latest["arms"] == [*ARMS, NEW]


def test_retiring_masks_then_drops_and_late_events_are_kept(tmp_path):
    loop, log = pool_loop(tmp_path, retire_after_events=64)
    rng = random.Random(1)
    stream(loop, log, rng, 150, ARMS, 1)
    old_version = loop.current_version
    loop.request_pool(("mid", "strong"))
    loop.step()
    masked = published_manifest(loop)
    assert masked["arms"] == list(ARMS)  # still listed: events decided before the change stay valid
    assert masked["architecture"]["exploration_share"] == [0.0, 1.0, 1.0]

    stream(loop, log, rng, 120, ("mid", "strong"), 151)
    dropped = published_manifest(loop)
    assert dropped["arms"] == ["mid", "strong"]
    assert "exploration_share" not in dropped["architecture"]
    assert loop.learner.gram.shape[0] == 2

    # A sidecar still on the old version reports an outcome of the retired model, with the old mask.
    late = random_event(rng, sequence=999)
    late.model, late.policy_version = "cheap", old_version
    late.allowed[:] = [True, True, False]
    assert event_problem(late, loop.history.current, len(late.embedding), loop.history.decided_with) is None
    assert event_problem(late, loop.history.current, len(late.embedding)) is not None  # without history
    trained = loop.learner.events_trained
    not_trained = loop.events_not_trained
    log.append([late])
    for _ in range(20):
        loop.step()
    assert log.end_offset > 0 and late.event_id in {e.event_id for _, e in log.read_from(0, 10**6)}
    assert loop.events_not_trained >= not_trained  # kept in the log, never trained into a dropped row
    assert loop.learner.events_trained >= trained

    # The old version's mask maps by name onto the current arm list.
    kept = random_event(rng, sequence=1000)
    kept.model, kept.policy_version = "mid", old_version
    kept.allowed[:] = [True, True, False]
    batch = to_batch([kept], loop.models, 0.01, CostImputer(2), decided_with=loop.history.decided_with)
    assert batch.allowed.tolist() == [[True, False]]


@pytest.mark.parametrize(
    ("pool", "message"),
    [
        ((), "removes every model"),
        (("mid",), "at least two models"),
        (("other-a", "other-b"), "removes every model of the serving pool"),
        (("mid", "mid", "strong"), "listed twice"),
    ],
)
def test_a_bad_pool_is_refused_and_nothing_changes(tmp_path, pool, message):
    loop, log = pool_loop(tmp_path)
    rng = random.Random(2)
    stream(loop, log, rng, 120, ARMS, 1)
    version, arms, offset = loop.current_version, loop.models, log.end_offset
    with pytest.raises(PoolChangeError, match=message):
        loop.request_pool(pool)
    loop.step()
    assert (loop.current_version, loop.models) == (version, arms)
    assert log.end_offset == offset  # nothing logged is touched


def test_a_barp_policy_refuses_a_pool_change(tmp_path):
    settings = settings_for(tmp_path, "barp")
    loop = make_loop(settings, MemoryEventLog())
    assert loop.request_pool(ARMS) is False  # unchanged: fine for any kind
    with pytest.raises(PoolChangeError, match="needs a 'reward_model' policy"):
        loop.request_pool((*ARMS, NEW))


def test_a_restart_continues_the_pool_schedule(tmp_path):
    loop, log = pool_loop(tmp_path, new_model_min_events=10_000)
    rng = random.Random(3)
    stream(loop, log, rng, 100, ARMS, 1)
    loop.request_pool((*ARMS, NEW))
    loop.step()
    stream(loop, log, rng, 150, (*ARMS, NEW), 101)
    settings = settings_for(tmp_path, "reward_model")
    restarted = make_loop(dataclasses.replace(settings, learner=loop.learner_settings), log)
    assert restarted.models == (*ARMS, NEW)
    assert restarted.pool.new_models == [NEW]
    np.testing.assert_array_equal(restarted.learner.arm_events.numpy(), loop.learner.arm_events.numpy())
