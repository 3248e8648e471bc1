"""Which held-out events the gate compares on (``publish.gate_fresh_holdout_events``): the events that
chose the serving version never defend it once enough fresh ones arrived, and the gate still refuses a
worse candidate on them."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import torch

from tests.learning_helpers import ARMS, TAU_USD, random_event
from tests.trainer_service.test_learner_state import make_loop, settings_for
from trainer.replay.memory_log import MemoryEventLog
from trainer.service.learner import is_holdout


def loop_with(tmp_path, **publish):
    settings = settings_for(tmp_path, "reward_model")
    settings = dataclasses.replace(settings, publish=dataclasses.replace(settings.publish, **publish))
    log = MemoryEventLog()
    return make_loop(settings, log), log, settings


def held_out(rng: random.Random, settings, count: int, sequence: int):
    """``count`` random events that the loop holds out (never trained on)."""
    events = []
    while len(events) < count:
        event = random_event(rng, sequence=sequence + len(events) + 1)
        if is_holdout(event.event_id, settings.learner.holdout_every):
            events.append(event)
    return events


def test_the_gate_compares_on_events_since_the_publication_once_there_are_enough(tmp_path):
    loop, log, settings = loop_with(tmp_path, gate_fresh_holdout_events=8, every_events=10**6)
    rng = random.Random(3)
    before = held_out(rng, settings, 30, 0)
    log.append(before)
    loop.step()
    assert [e.event_id for e in loop.gate_events()] == [e.event_id for e in before]  # v1 chose nothing
    assert loop.evaluate_and_maybe_publish() is not None  # margin 1.0: published v2 on all 30 events
    assert loop.holdout_since_publication == 0
    fresh = held_out(rng, settings, 7, 100)
    log.append(fresh)
    loop.step()
    # 7 < 8 fresh events: still the whole slice, the ones that chose v2 included.
    assert len(loop.gate_events()) == 37
    one_more = held_out(rng, settings, 1, 200)
    log.append(one_more)
    loop.step()
    assert [e.event_id for e in loop.gate_events()] == [e.event_id for e in [*fresh, *one_more]]
    assert loop.evaluate_and_maybe_publish() is not None
    assert loop.counters.last_candidate["events"] == 8
    assert len(loop.gate_events()) == 38  # a new serving version: the whole slice again


def test_off_by_default_the_gate_uses_the_whole_slice(tmp_path):
    loop, log, settings = loop_with(tmp_path, every_events=10**6)
    assert settings.publish.gate_fresh_holdout_events == 0
    rng = random.Random(4)
    log.append(held_out(rng, settings, 20, 0))
    loop.step()
    loop.evaluate_and_maybe_publish()
    log.append(held_out(rng, settings, 20, 100))
    loop.step()
    assert len(loop.gate_events()) == 40


def outcome_event(rng: random.Random, sequence: int, model: str):
    """Arm 0 is always right (quality 1), every other arm wrong (0); uniform logging."""
    event = random_event(rng, sequence=sequence)
    event.model = model
    event.quality = 1.0 if model == ARMS[0] else 0.0
    event.cost_usd = 0.1 * TAU_USD
    event.quality_weight = 0.8
    return event


def test_a_worse_candidate_is_refused_on_the_fresh_events(tmp_path):
    loop, log, _ = loop_with(tmp_path, gate_fresh_holdout_events=40, every_events=10**6, gate_margin=0.01)
    rng = random.Random(5)
    log.append([outcome_event(rng, i + 1, ARMS[i % len(ARMS)]) for i in range(600)])
    for _ in range(100):
        if not loop.step()["events"]:
            break
    assert loop.evaluate_and_maybe_publish() is not None  # the learner found arm 0: published
    serving = loop.current_version
    log.append([outcome_event(rng, 1000 + i, ARMS[i % len(ARMS)]) for i in range(600)])
    for _ in range(100):
        if not loop.step()["events"]:
            break
    assert len(loop.gate_events()) >= 40 and len(loop.gate_events()) < len(loop.holdout)
    # A candidate that prefers a wrong arm: its own critic says so, the fresh held-out events say otherwise.
    k = len(ARMS)
    with torch.no_grad():
        head = loop.learner.network.reward_head
        head.weight.zero_()
        head.bias.copy_(torch.tensor([0.0, 1.0, *[0.0] * (k - 2), *[0.0] * k]))
    assert loop.evaluate_and_maybe_publish() is None
    assert loop.current_version == serving and loop.counters.rejected == 1
    candidate, current = loop.counters.last_candidate, loop.counters.last_current
    assert candidate["events"] == len(loop.gate_events())
    assert candidate["value"] < current["value"] - 0.01
    assert np.isfinite(candidate["value"])
