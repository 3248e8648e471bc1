"""The gate's cadence (sooner while the learner is young, then every ``every_events``) and its exposition:
manifest keys and the ``barp_trainer_gate_estimate`` metric name the estimator that produced them."""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
from types import SimpleNamespace

from prometheus_client import CollectorRegistry, generate_latest

from tests.learning_helpers import random_event
from tests.trainer_service.test_learner_state import make_loop, settings_for
from trainer.replay.memory_log import MemoryEventLog
from trainer.service.metrics import TrainerCollector


def evaluation_points(tmp_path, publish: dict[str, float], events: int) -> list[int]:
    """events_trained at every gate evaluation while ``events`` events stream in one by one."""
    tmp_path.mkdir()
    settings = settings_for(tmp_path, "reward_model")
    settings = dataclasses.replace(settings, publish=dataclasses.replace(settings.publish, **publish))
    log = MemoryEventLog()
    loop = make_loop(settings, log)
    rng = random.Random(0)
    points = []
    for i in range(events):
        log.append([random_event(rng, sequence=i + 1)])
        before = loop.counters.evaluations
        loop.step()
        if loop.counters.evaluations > before:
            points.append(loop.learner.events_trained)
    return points


def test_young_learner_is_evaluated_sooner_then_every_events(tmp_path):
    early = evaluation_points(
        tmp_path / "a", {"every_events": 400, "min_every_events": 50, "every_fraction": 0.5}, 1400
    )
    gaps = [b - a for a, b in zip([0, *early], early, strict=False)]
    # Intervals of max(50, events_trained/2), never above 400; whole batches of 16 round them up.
    assert gaps[:2] == [64, 64]
    assert max(gaps) <= 400 + 16 and gaps[-1] >= 400
    assert all(b >= a - 16 for a, b in itertools.pairwise(gaps))  # the interval only grows
    fixed = evaluation_points(tmp_path / "b", {"every_events": 400, "min_every_events": 0}, 1400)
    assert len(fixed) == 3 and len(early) > len(fixed)


def test_manifest_and_metrics_name_the_gate_estimator(tmp_path):
    settings = settings_for(tmp_path, "reward_model")
    log = MemoryEventLog()
    loop = make_loop(settings, log)
    rng = random.Random(1)
    for i in range(400):
        log.append([random_event(rng, sequence=i + 1)])
        loop.step()
    assert loop.counters.published >= 1
    manifest = json.loads((loop.store.path(loop.current_version) / "manifest.json").read_text())
    assert manifest["metrics"]["estimator"] == "doubly_robust"
    assert {"gate_candidate", "gate_parent"} <= set(manifest["metrics"])
    registry = CollectorRegistry()
    registry.register(
        TrainerCollector(
            SimpleNamespace(
                servicer=None, ingestor=None, event_log=None, loop=loop, reloader=None, lease_keeper=None
            )
        )
    )  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    assert 'barp_trainer_gate_estimate{estimator="doubly_robust",policy="candidate"}' in text
    assert 'barp_trainer_gate_estimate{estimator="doubly_robust",policy="current"}' in text
    assert "snips" not in text
