"""The trainer lease's rules (trainer/service/lease.py) on a fake KV and a fake clock: create-only
acquisition, renewal at the expected revision, the local validity deadline, a lost lease staying lost, and
release on a graceful stop (delete at our revision only), and a renewal whose answer was lost."""

from __future__ import annotations

import pytest

from trainer.service.lease import LEASE_KEY, LeaseRejected, TrainerLease


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeKV:
    """A JetStream KV key with history 1 and a max age, on the fake clock: revisions grow by one per write,
    ``create`` fails while a live entry exists, ``update`` fails unless ``last`` is the live revision."""

    def __init__(self, clock: FakeClock, ttl_s: float) -> None:
        self.clock, self.ttl_s = clock, ttl_s
        self.sequence = 0
        self.entry: tuple[int, bytes, float] | None = None  # revision, value, written at
        self.delay_s = 0.0  # how long a write takes (the clock advances during it)
        self.deletes = 0
        self.lose_answers = 0  # this many next updates are written but answered with a timeout

    def _live(self) -> tuple[int, bytes, float] | None:
        if self.entry is not None and self.clock.now - self.entry[2] >= self.ttl_s:
            self.entry = None  # expired by max age
        return self.entry

    def _write(self, value: bytes) -> int:
        self.clock.now += self.delay_s
        self.sequence += 1
        self.entry = (self.sequence, value, self.clock.now)
        return self.sequence

    async def create(self, key: str, value: bytes) -> int:
        assert key == LEASE_KEY
        if self._live() is not None:
            raise LeaseRejected("key exists")
        return self._write(value)

    async def update(self, key: str, value: bytes, last: int) -> int:
        live = self._live()
        if (live[0] if live else 0) != last:
            raise LeaseRejected("wrong last sequence")
        revision = self._write(value)
        if self.lose_answers:
            self.lose_answers -= 1
            raise TimeoutError("nats: timeout")  # the write reached the server; its answer did not come back
        return revision

    async def get(self, key: str) -> tuple[bytes, int] | None:
        live = self._live()
        return None if live is None else (live[1], live[0])

    async def delete(self, key: str, last: int) -> None:
        live = self._live()
        if (live[0] if live else 0) != last:
            raise LeaseRejected("wrong last sequence")
        self.sequence += 1  # the delete marker takes a revision; the key is free again
        self.entry = None
        self.deletes += 1


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def kv(clock: FakeClock) -> FakeKV:
    return FakeKV(clock, ttl_s=6.0)


async def test_only_one_replica_acquires_and_the_other_takes_over_after_expiry(clock, kv):
    a, b = TrainerLease(kv, "a", 6.0, clock=clock), TrainerLease(kv, "b", 6.0, clock=clock)
    assert await a.try_acquire()
    assert not await b.try_acquire()
    assert a.held() and not b.held()
    assert (a.state, b.state) == ("active", "standby")
    clock.now += 5.9  # a is dead (no renewal); the entry still lives
    assert not await b.try_acquire()
    clock.now += 0.2
    assert await b.try_acquire()
    assert b.held() and b.revision == 2


async def test_renewals_keep_the_lease_and_the_standby_out(clock, kv):
    a, b = TrainerLease(kv, "a", 6.0, clock=clock), TrainerLease(kv, "b", 6.0, clock=clock)
    assert await a.try_acquire()
    for _ in range(20):
        clock.now += a.renew_every_s
        assert await a.renew()
        assert not await b.try_acquire()
    assert a.renewals == 20 and a.revision == 21


async def test_the_local_validity_ends_before_the_server_expires_the_entry(clock, kv):
    a, b = TrainerLease(kv, "a", 6.0, clock=clock), TrainerLease(kv, "b", 6.0, clock=clock)
    assert await a.try_acquire()
    clock.now += 4.49
    assert a.held()
    clock.now += 0.02  # 0.75 x TTL after the write: a stops acting ...
    assert not a.held()
    assert not await b.try_acquire()  # ... while the entry still keeps b out
    assert not await a.renew() and a.state == "lost"


async def test_a_renewal_after_a_takeover_is_rejected_and_the_lease_stays_lost(clock, kv):
    a, b = TrainerLease(kv, "a", 6.0, clock=clock), TrainerLease(kv, "b", 6.0, clock=clock)
    assert await a.try_acquire()
    clock.now += 6.0  # a paused for a whole TTL: b takes over
    assert await b.try_acquire()
    a.valid_until_s = clock.now + 10  # even if a's own clock still believed in the lease
    assert not await a.renew()
    assert a.state == "lost" and not a.held() and a.losses == 1
    assert not await a.try_acquire()  # a lost replica never becomes active again without a restart
    assert b.held()


async def test_a_renewal_that_returns_after_the_local_validity_counts_as_lost(clock, kv):
    a = TrainerLease(kv, "a", 6.0, clock=clock)
    assert await a.try_acquire()
    clock.now += 4.0
    kv.delay_s = 1.0  # the write goes through, but only after the local validity ended
    assert not await a.renew()
    assert a.state == "lost"


async def test_release_frees_the_key_at_once_and_the_releaser_never_acts_again(clock, kv):
    a, b = TrainerLease(kv, "a", 6.0, clock=clock), TrainerLease(kv, "b", 6.0, clock=clock)
    assert await a.try_acquire()
    clock.now += 1.0
    assert not await b.try_acquire()
    assert await a.release()
    assert a.state == "released" and not a.held() and kv.deletes == 1
    assert await b.try_acquire()  # at once, not a TTL later
    assert not await a.renew() and not await a.try_acquire()
    assert a.losses == 0 and b.held()


async def test_release_after_a_takeover_leaves_the_new_holder_alone(clock, kv):
    a, b = TrainerLease(kv, "a", 6.0, clock=clock), TrainerLease(kv, "b", 6.0, clock=clock)
    assert await a.try_acquire()
    clock.now += 6.0  # a paused for a whole TTL: b takes over
    assert await b.try_acquire()
    a.valid_until_s = clock.now + 10  # even if a's own clock still believed in the lease
    assert not await a.release()
    assert kv.deletes == 0 and kv.entry is not None and kv.entry[1] == b"b"
    assert a.state == "released" and not a.held()


async def test_a_standby_or_expired_lease_releases_nothing(clock, kv):
    a = TrainerLease(kv, "a", 6.0, clock=clock)
    assert not await a.release() and a.state == "standby"
    assert await a.try_acquire()
    clock.now += 5.0  # past the local validity
    assert not await a.release()
    assert kv.deletes == 0


def test_validity_fraction_must_be_inside_0_and_1(kv, clock):
    with pytest.raises(ValueError, match="validity_fraction"):
        TrainerLease(kv, "a", 6.0, validity_fraction=1.0, clock=clock)


async def test_a_renewal_whose_answer_was_lost_is_adopted_not_taken_for_a_takeover(clock, kv):
    a, b = TrainerLease(kv, "a", 6.0, clock=clock), TrainerLease(kv, "b", 6.0, clock=clock)
    assert await a.try_acquire()
    clock.now += 1.5
    kv.lose_answers = 1
    with pytest.raises(TimeoutError):
        await a.renew()  # written (revision 2) but unanswered: a still believes revision 1
    clock.now += 0.5
    assert await a.renew()  # wrong revision, but the key holds a's name at a newer one: adopted
    assert a.held() and a.adopted_renewals == 1 and a.revision == kv.entry[0]
    # Validity counts from the unanswered attempt's start (100 + 1.5), not from this call.
    assert a.valid_until_s == pytest.approx(101.5 + 0.75 * 6.0)
    assert not await b.try_acquire()
    clock.now += 1.5
    assert await a.renew() and a.adopted_renewals == 1  # back to plain renewals


async def test_after_an_unanswered_renewal_a_takeover_is_still_a_loss(clock, kv):
    a, b = TrainerLease(kv, "a", 6.0, clock=clock), TrainerLease(kv, "b", 6.0, clock=clock)
    assert await a.try_acquire()
    kv.lose_answers = 1
    with pytest.raises(TimeoutError):
        await a.renew()
    clock.now += 1.0
    kv.entry = None  # an operator purged the key; b takes over while a is still valid locally
    assert await b.try_acquire()
    assert not await a.renew() and a.state == "lost" and a.adopted_renewals == 0
    assert b.held() and kv.entry[1] == b"b"
