"""The fenced policy pointer (trainer failover) against a real ``nats-server -js``: a replica moves KV
``latest`` only at the revision it expects and only while its lease holds; otherwise the version is not
published (pointer untouched, nothing uploaded) and the replica is told it was fenced. A replica that
takes over downloads the announced version and its learner state (``failover.download_latest``)."""

from __future__ import annotations

import asyncio

import nats

from barp_sidecar.broker.nats_connection import NatsConnector
from barp_sidecar.broker.settings import EventsBackend, EventsSettings
from barp_sidecar.policy.checkpoint import CheckpointStore, read_manifest
from barp_sidecar.policy.nats_policies import LATEST_KEY, parse_announcement
from tests.support.sidecar import make_tiny_checkpoint
from tests.support.waiting import wait_until
from trainer.service.failover import download_latest
from trainer.service.learner_state import state_path
from trainer.service.nats_policy_mirror import NatsPolicyMirror, PointerFence
from trainer.service.policy_source import PolicyAnnouncer, announcement_for


def connector(url: str) -> NatsConnector:
    settings = EventsSettings(backend=EventsBackend.NATS, nats_urls=(url,), reconnect_initial_backoff_s=0.05)
    return NatsConnector(settings, {}, "test")


def store_with_v1(root):
    store = CheckpointStore(root / "checkpoints")
    make_tiny_checkpoint(store.path(1))
    store.set_latest(1)
    (root / "learner-state").mkdir()
    state_path(root / "learner-state", 1).write_bytes(b"learner state of v1")
    return store


async def kv_latest(url: str):
    client = await nats.connect(url)
    try:
        kv = await client.jetstream().key_value("BARP_POLICY")
        try:
            entry = await kv.get(LATEST_KEY)
        except nats.js.errors.KeyNotFoundError:
            return None
        return parse_announcement(entry.value).version, entry.revision
    finally:
        await client.close()


async def mirror_once(url, store, fence):
    announcer = PolicyAnnouncer()
    await announcer.publish(announcement_for(store, read_manifest(store.path(1))))
    mirror = NatsPolicyMirror(connector(url), store, announcer, fence=fence)
    await mirror.start()
    return mirror


async def test_a_fenced_replica_publishes_at_its_revision_and_hands_the_version_and_state_over(
    tmp_path, broker
):
    store = store_with_v1(tmp_path / "a")
    fenced: list[str] = []
    fence = PointerFence(0, 0, lambda: True, tmp_path / "a" / "learner-state", fenced.append)
    mirror = await mirror_once(broker.url, store, fence)
    try:
        await wait_until(lambda: mirror.mirrored_version == 1, what="v1 mirrored")
    finally:
        await mirror.close()
    assert fenced == [] and fence.version == 1
    assert await kv_latest(broker.url) == (1, fence.revision)

    # The standby's side of the hand-over: v1 and its learner state land in its own store.
    standby = CheckpointStore(tmp_path / "b" / "checkpoints")
    version, revision = await download_latest(
        connector(broker.url), standby, tmp_path / "b" / "learner-state"
    )
    assert (version, revision) == (1, fence.revision)
    assert standby.latest_version() == 1
    assert read_manifest(standby.path(1)).weights_sha256 == read_manifest(store.path(1)).weights_sha256
    assert state_path(tmp_path / "b" / "learner-state", 1).read_bytes() == b"learner state of v1"


async def test_a_stale_revision_or_a_lost_lease_never_moves_the_pointer(tmp_path, broker):
    store = store_with_v1(tmp_path / "a")
    # Another replica published first: latest is at revision 1, this replica expects "no key" (0).
    client = await nats.connect(broker.url)
    kv = await client.jetstream().create_key_value(bucket="BARP_POLICY", history=16)
    await kv.put(LATEST_KEY, b'{"version": 7, "weights_sha256": "' + b"0" * 64 + b'", "arms": ["x"]}')
    await client.close()
    fenced: list[str] = []
    fence = PointerFence(0, 0, lambda: True, tmp_path / "a" / "learner-state", fenced.append)
    mirror = await mirror_once(broker.url, store, fence)
    try:
        await wait_until(lambda: fenced, what="the stale replica fenced")
    finally:
        await mirror.close()
    assert "another writer" in fenced[0] and mirror.mirrored_version == 0
    assert (await kv_latest(broker.url))[0] == 7

    # A replica whose lease is no longer held uploads nothing and moves nothing.
    lost: list[str] = []
    fence = PointerFence(1, 7, lambda: False, tmp_path / "a" / "learner-state", lost.append)
    mirror = await mirror_once(broker.url, store, fence)
    try:
        await wait_until(lambda: lost, what="the replica without a lease fenced")
        await asyncio.sleep(0.1)
    finally:
        await mirror.close()
    assert lost == ["the lease is not held"] and mirror.uploads == 0
    assert (await kv_latest(broker.url))[0] == 7
