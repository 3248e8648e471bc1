"""A failover standby follows the active replica's model pool (docs/learning.md §10), against a real
``nats-server -js``: the standby started when v1 (three models) was the latest; the active then added a
model and published v2. Events decided by v2 (naming the new model, a four-entry ``allowed`` mask) are
stored by the standby, because its consumer learns v2's model list from v2's manifest in the Object Store
before validating them; truly invalid events are still dead-lettered. Without that (the behaviour before)
the same events are dead-lettered. A standby also keeps a pool re-read from its config file for its
takeover (``TrainerApp.apply_settings``), so taking over never reverts a pool change.
"""

from __future__ import annotations

import dataclasses
import functools
import random

import nats
import pytest

from barp_sidecar.broker.nats_connection import NatsConnector, ensure_event_streams
from barp_sidecar.broker.settings import EventsBackend, EventsSettings
from barp_sidecar.policy.checkpoint import CheckpointStore, read_manifest
from barp_sidecar.policy.nats_policies import LATEST_KEY
from tests.learning_helpers import ARMS, DIM, publish_tiny, random_event, trainer_settings_yaml
from tests.support.waiting import wait_until
from trainer.service.app import TrainerApp
from trainer.service.eventlog import SegmentedEventLog
from trainer.service.failover import learn_model_list
from trainer.service.model_pool import PoolChangeError, PoolHistory
from trainer.service.nats_ingest import MSG_ID_HEADER, NatsEventIngestor
from trainer.service.nats_policy_mirror import NatsPolicyMirror
from trainer.service.policy_source import PolicyAnnouncer, announcement_for
from trainer.service.settings import load_trainer_settings

POOL_V2 = (*ARMS, "added-model")


def settings(url: str) -> EventsSettings:
    return EventsSettings(
        backend=EventsBackend.NATS, nats_urls=(url,), reconnect_initial_backoff_s=0.05, connect_timeout_s=1.0
    )


async def publish_versions_like_the_active(tmp_path, s: EventsSettings) -> None:
    """The active replica's store (v1, then v2 with a model added) mirrored into the Object Store + KV."""
    store = CheckpointStore(tmp_path / "active" / "checkpoints")
    publish_tiny(store, 1)
    publish_tiny(store, 2, models=POOL_V2)
    announcer = PolicyAnnouncer()
    await announcer.publish(announcement_for(store, read_manifest(store.path(2))))
    mirror = NatsPolicyMirror(NatsConnector(s, {}, "active"), store, announcer)
    await mirror.start()
    try:
        await wait_until(lambda: mirror.mirrored_version == 2, what="v2 mirrored")
    finally:
        await mirror.close()


def events(rng: random.Random) -> tuple[list, list]:
    """(valid events: decided by v1, by v2 naming the added model, and by a version no manifest exists of,
    validated against the newest known list; an invalid one: a model no version has)."""
    by_v1 = [random_event(rng) for _ in range(20)]
    by_v2 = []
    for _ in range(20):
        event = random_event(rng)
        event.policy_version = 2
        event.model = "added-model"
        event.allowed.extend([True] * len(POOL_V2))
        by_v2.append(event)
    unknown_model = random_event(rng)
    unknown_model.policy_version, unknown_model.model = 2, "no-such-model"
    unknown_version = random_event(rng)
    unknown_version.policy_version, unknown_version.model = 99, "added-model"  # no v99 anywhere
    return [*by_v1, *by_v2, unknown_version], [unknown_model]


async def test_the_standby_learns_a_new_versions_model_list_and_dead_letters_nothing_valid(tmp_path, broker):
    s = settings(broker.url)
    await publish_versions_like_the_active(tmp_path, s)
    valid, invalid = events(random.Random(11))
    client = await nats.connect(broker.url)
    try:
        js = client.jetstream()
        await ensure_event_streams(js, s)
        for event in [*valid, *invalid]:
            await js.publish(s.subject, event.SerializeToString(), headers={MSG_ID_HEADER: event.event_id})
        assert (await (await js.key_value(s.policy_kv_bucket)).get(LATEST_KEY)).value
    finally:
        await client.close()

    # Two standbys that started when v1 was the latest: one as built now, one without the learning.
    standby_store = CheckpointStore(tmp_path / "standby" / "checkpoints")
    publish_tiny(standby_store, 1)
    history = PoolHistory(standby_store, ARMS, 1)
    logs = {name: SegmentedEventLog(tmp_path / name / "events").open() for name in ("learning", "before")}
    learning = NatsEventIngestor(
        NatsConnector(s, {}, "standby"),
        logs["learning"],
        ARMS,
        DIM,
        consumer="barp-trainer-learning",
        history=history,
        learn_models=functools.partial(learn_model_list, history, s),
    )
    before = NatsEventIngestor(
        NatsConnector(s, {}, "standby-before"),
        logs["before"],
        ARMS,
        DIM,
        consumer="barp-trainer-before",
        history=PoolHistory(standby_store, ARMS, 1),
    )
    total = len(valid) + len(invalid)
    try:
        await learning.start()
        await before.start()
        await wait_until(
            lambda: learning.counters.received == total and before.counters.received == total,
            what="every message handled by both standbys",
        )
        stored = [e.event_id for _, e in logs["learning"].read_from(0, 1000)]
        assert stored == [e.event_id for e in valid]  # stream order, nothing valid dead-lettered
        assert learning.counters.dead_lettered == {"invalid": 1}
        assert history.decided_with(2) == POOL_V2 and history.current == POOL_V2
        assert history.knows(99) and history.decided_with(99) == POOL_V2  # asked once, then the newest
        # The behaviour before: the events naming the added model were dead-lettered by a standby that
        # knew only v1's list.
        assert before.counters.dead_lettered["invalid"] == 1 + 20 + 1
    finally:
        await learning.close()
        await before.close()
        for log in logs.values():
            log.close()


def test_a_standby_keeps_a_pool_re_read_from_its_config_for_the_takeover(tmp_path):
    config = tmp_path / "trainer.yaml"
    config.write_text(
        trainer_settings_yaml(tmp_path / "data")
        + "events:\n  backend: nats\n  nats_urls: [nats://127.0.0.1:4222]\n"
        + "failover:\n  enabled: true\n  replica_id: b\n"
    )
    started = load_trainer_settings(config, {})
    app = TrainerApp(started, config_path=config)
    assert app.loop is None  # a standby: no training loop
    config.write_text(
        config.read_text().replace(f"arms: [{', '.join(ARMS)}]", f"arms: [{', '.join(POOL_V2)}]")
    )
    reread = load_trainer_settings(config, {})
    app.apply_settings(started, reread)
    assert app.settings.learner.arms == POOL_V2  # what _take_over's request_pool will apply
    bad = dataclasses.replace(reread, learner=dataclasses.replace(reread.learner, arms=("cheap",)))
    with pytest.raises(PoolChangeError, match="at least two models"):
        app.apply_settings(reread, bad)  # refused (the reloader logs it), the kept pool is unchanged
    assert app.settings.learner.arms == POOL_V2
