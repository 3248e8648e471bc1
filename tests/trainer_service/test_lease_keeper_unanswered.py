"""The trainer's lease keeper on a connection where JetStream leaves lease requests unanswered for a while
(a stream leader being elected after a NATS node died): the keeper waits at most one renewal interval per
request (not events.publish_timeout_s, which is longer than the lease's local validity), tries again on
the same session while the lease is valid, and adopts a renewal whose answer was lost instead of taking
its own write for a takeover. The real broker paths are in tests/e2e/test_trainer_failover_processes.py."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from barp_sidecar.broker.nats_connection import NatsConnector
from barp_sidecar.broker.settings import EventsSettings
from tests.support.waiting import wait_until
from trainer.service.failover import LeaseKeeper

nats_errors = pytest.importorskip("nats.errors")
js_errors = pytest.importorskip("nats.js.errors")

TTL_S = 2.0  # renew every 0.5 s, locally valid for 1.5 s after each write


@dataclass
class Entry:
    value: bytes | None
    revision: int


class UnansweringKV:
    """nats-py's KeyValue surface the keeper uses. ``plan`` scripts the next updates: "lost" writes and
    then times out (the answer is lost), "silent" times out without writing, anything else answers."""

    def __init__(self) -> None:
        self.revision = 0
        self.value: bytes | None = None
        self.plan: list[str] = []
        self.updates = 0

    async def create(self, key: str, value: bytes) -> int:
        if self.value is not None:
            raise js_errors.KeyWrongLastSequenceError()
        self.revision += 1
        self.value = value
        return self.revision

    async def update(self, key: str, value: bytes, last: int) -> int:
        self.updates += 1
        step = self.plan.pop(0) if self.plan else "answer"
        if step == "silent":
            await asyncio.sleep(0.05)
            raise nats_errors.TimeoutError
        if last != self.revision:
            raise js_errors.KeyWrongLastSequenceError()
        self.revision += 1
        self.value = value
        if step == "lost":
            await asyncio.sleep(0.05)
            raise nats_errors.TimeoutError
        return self.revision

    async def get(self, key: str) -> Entry:
        if self.value is None:
            raise js_errors.KeyNotFoundError()
        return Entry(self.value, self.revision)

    async def delete(self, key: str, last: int) -> None:
        self.revision += 1
        self.value = None


class FakeClient:
    is_connected = True

    def __init__(self, kv: UnansweringKV) -> None:
        self.kv = kv
        self.request_timeouts_s: list[float] = []

    def jetstream(self, timeout: float) -> FakeClient:
        self.request_timeouts_s.append(timeout)
        return self

    async def key_value(self, bucket: str) -> UnansweringKV:
        return self.kv


def keeper() -> LeaseKeeper:
    connector = NatsConnector(EventsSettings(backend="nats", publish_timeout_s=5.0), {}, "test")  # type: ignore[arg-type]
    return LeaseKeeper(connector, "trainer-a", "BARP_TRAINER_LEASE", TTL_S, seed=0)


async def test_unanswered_renewals_are_retried_and_a_lost_answer_is_adopted():
    kv, lease_keeper = UnansweringKV(), keeper()
    client = FakeClient(kv)
    session = asyncio.create_task(lease_keeper.session(client))
    try:
        await asyncio.wait_for(lease_keeper.acquired.wait(), 5)
        kv.plan = ["lost", "silent"]  # then answered: the third try finds its own newer revision
        await wait_until(lambda: lease_keeper.lease.adopted_renewals == 1, timeout_s=5)
        await wait_until(lambda: lease_keeper.lease.renewals >= 3, timeout_s=5)
        assert not session.done()  # the same session went on: no reconnect, no backoff
        assert lease_keeper.lease.state == "active" and lease_keeper.lease.held()
        assert client.request_timeouts_s == [TTL_S / 4]  # one renewal interval, not publish_timeout_s
    finally:
        assert await lease_keeper.release()
        await asyncio.wait_for(session, 5)
    assert kv.value is None


async def test_unanswered_renewals_past_the_local_validity_lose_the_lease():
    kv, lease_keeper = UnansweringKV(), keeper()
    session = asyncio.create_task(lease_keeper.session(FakeClient(kv)))
    await asyncio.wait_for(lease_keeper.acquired.wait(), 5)
    kv.plan = ["silent"] * 1000
    await asyncio.wait_for(session, 5)  # the session ends once the lease is lost
    assert lease_keeper.lease.state == "lost" and not lease_keeper.lease.held()
    assert kv.value == b"trainer-a"  # left to expire on the server (its TTL), never written again
