"""The online trainer's calibration sets: a start from the shipped policy publishes v1 with the shipped set,
later versions carry the events' embeddings, and a candidate that is non-finite on its calibration set is
never published (every sidecar would reject it)."""

from __future__ import annotations

import dataclasses
import random

import structlog
import torch
from structlog.testing import capture_logs

from barp_sidecar.policy.builtin import builtin_policy_dir
from barp_sidecar.policy.calibration import CALIBRATION_FILE
from barp_sidecar.policy.checkpoint import load_checkpoint, sha256_file
from tests.learning_helpers import random_event
from tests.trainer_service.test_learner_state import feed, make_loop, settings_for
from trainer.replay.memory_log import MemoryEventLog
from trainer.service.loop import GateDecision


def test_a_start_from_the_shipped_policy_publishes_its_calibration_set(tmp_path) -> None:
    settings = settings_for(tmp_path, "barp")
    settings = dataclasses.replace(
        settings, learner=dataclasses.replace(settings.learner, initial_policy="builtin")
    )
    loop = make_loop(settings, MemoryEventLog())
    published = loop.store.path(loop.store.latest_version() or 0)
    assert loop.manifest.training["initial_policy"] == "builtin"
    assert sha256_file(published / CALIBRATION_FILE) == sha256_file(builtin_policy_dir() / CALIBRATION_FILE)


def test_versions_carry_the_events_embeddings_and_a_nonfinite_candidate_is_not_published(
    tmp_path, monkeypatch
) -> None:
    settings = settings_for(tmp_path, "barp")
    log = MemoryEventLog()
    loop = make_loop(settings, log)
    assert load_checkpoint(loop.store.path(1)).calibration is None, "cold start: no embedding yet"
    rng = random.Random(5)
    events = [random_event(rng, sequence=i) for i in range(1, 401)]
    feed(loop, log, events)
    latest = loop.store.latest_version()
    assert latest is not None and latest >= 2
    calibration = load_checkpoint(loop.store.path(latest)).calibration
    assert calibration is not None
    sent = torch.tensor([list(e.embedding) for e in events])
    closest = (calibration.embeddings @ sent.T).max(dim=1).values  # unit vectors: cosine similarity
    assert bool((closest > 1 - 1e-5).all()), "every calibration row is one of the events' embeddings"
    # The learner's next candidate overflows (finite weights of 1e38): the gate must not publish it.
    with torch.no_grad():
        for parameter in loop.learner.network.parameters():
            parameter.fill_(1e38)
    # ... even when the off-policy gate itself would let it through (its estimates do not see every prompt).
    monkeypatch.setattr(
        "trainer.service.loop.gate",
        lambda candidate, current, *_: GateDecision(True, candidate, current, "gate passed (test)"),
    )
    # A fresh logger: an in-process `barp-trainer replay` earlier in the session caches this module's logger
    # on its own (closed) stdout, which capture_logs cannot redirect.
    monkeypatch.setattr("trainer.service.loop.log", structlog.get_logger("trainer.service.loop"))
    rejected_before = loop.counters.rejected
    with capture_logs() as logs:
        assert loop.evaluate_and_maybe_publish() is None
    assert loop.store.latest_version() == latest and loop.counters.rejected == rejected_before + 1
    [gate] = [e for e in logs if e["event"] == "policy_gate"]
    assert gate["decision"] == "rejected" and "calibration rows" in gate["reason"]
