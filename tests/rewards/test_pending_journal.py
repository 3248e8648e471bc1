"""PendingJournal: replay after a restart, expiry while down, torn tails, and a bounded size on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from barp_sidecar.rewards.pending import PendingDecision
from barp_sidecar.rewards.pending_journal import PendingJournal

ARMS = ("a", "b", "c")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def decision(decision_id: str, at: float, cost: float | None = None) -> PendingDecision:
    return PendingDecision(
        decision_id=decision_id,
        embedding=np.arange(8, dtype=np.float32) / 8,
        quality_weight=0.25,
        models=ARMS,
        allowed=(True, False, True),
        model="c",
        propensity=0.5,
        policy_version=3,
        decided_at_unix_s=at,
        cost_usd=cost,
    )


def test_replay_restores_pending_and_recorded_and_drops_what_expired(tmp_path: Path) -> None:
    clock = Clock()
    journal = PendingJournal(tmp_path, ttl_s=100.0, models=ARMS, wall_clock=clock)
    assert journal.open().pending == []
    assert list(tmp_path.glob("pending-*.journal")) == [], "an idle sidecar leaves no file"
    journal.added(decision("old", clock.now - 150))  # already past the TTL when replayed
    journal.added(decision("p1", clock.now - 10))
    journal.added(decision("p2", clock.now - 5))
    journal.added(decision("p2", clock.now - 5, cost=0.002))  # Complete attached its cost
    journal.added(decision("r1", clock.now - 20))
    journal.recorded("r1")
    journal.added(decision("gone", clock.now - 1))
    journal.forgotten("gone")
    # No close(): the process is killed; the kernel kept the writes.
    clock.now += 30
    state = PendingJournal(tmp_path, ttl_s=100.0, models=ARMS, wall_clock=clock).open()
    by_id = {d.decision_id: (d, age) for d, age in state.pending}
    assert set(by_id) == {"p1", "p2"}
    p2, age = by_id["p2"]
    assert age == 35.0 and p2.cost_usd == 0.002 and p2.allowed == (True, False, True) and p2.models == ARMS
    assert np.allclose(p2.embedding, np.arange(8) / 8) and p2.model == "c" and p2.policy_version == 3
    assert state.recorded == {"r1": 30.0}
    # Replay rewrote one compact segment.
    assert len(list(tmp_path.glob("pending-*.journal"))) == 1


def test_a_torn_last_record_is_cut_and_the_rest_kept(tmp_path: Path) -> None:
    clock = Clock()
    journal = PendingJournal(tmp_path, ttl_s=100.0, models=ARMS, wall_clock=clock)
    journal.open()
    journal.added(decision("kept", clock.now))
    journal.added(decision("torn", clock.now))
    journal.close()
    [path] = tmp_path.glob("pending-*.journal")
    path.write_bytes(path.read_bytes()[:-7])
    state = PendingJournal(tmp_path, ttl_s=100.0, models=ARMS, wall_clock=clock).open()
    assert [d.decision_id for d, _ in state.pending] == ["kept"]


def test_the_journal_stays_bounded_under_steady_traffic(tmp_path: Path) -> None:
    clock = Clock()
    journal = PendingJournal(
        tmp_path, ttl_s=50.0, models=ARMS, segment_max_bytes=4096, min_segments=2, wall_clock=clock
    )
    journal.open()
    live: dict[str, PendingDecision] = {}
    recorded_at: dict[str, float] = {}
    sizes = []
    for i in range(3000):
        clock.now += 1.0
        d = decision(f"d{i}", clock.now)
        live[d.decision_id] = d
        journal.added(d)
        # Most outcomes arrive 3 s later; every 10th never does and expires.
        done = f"d{i - 3}"
        if i >= 3 and (i - 3) % 10:
            live.pop(done)
            journal.recorded(done)
            recorded_at[done] = clock.now
        expired = f"d{i - 50}"
        if i >= 50 and expired in live:
            live.pop(expired)
            journal.forgotten(expired)
        if i % 5 == 0:
            journal.maintain(live.get)
            sizes.append(journal.size_bytes)
    files = list(tmp_path.glob("pending-*.journal"))
    assert sum(f.stat().st_size for f in files) == journal.size_bytes
    # ~50 s of traffic is live (5 pending + ~45 recorded ids): a few segments, not 3000 decisions' worth.
    assert max(sizes[100:]) < 12 * 4096, max(sizes)
    state = PendingJournal(tmp_path, ttl_s=50.0, models=ARMS, wall_clock=clock).open()
    assert {d.decision_id for d, _ in state.pending} == set(live)
    assert set(state.recorded) == {i for i, at in recorded_at.items() if clock.now - at <= 50.0}


def test_the_added_record_parses_as_protobufs_own_encoding() -> None:
    # The embedding is written from the array's bytes (not a list of Python floats): the record must parse
    # to exactly the message protobuf itself would have written, for short, empty and long embeddings.
    from barp_sidecar.gen.barp.v1 import trainer_pb2
    from barp_sidecar.rewards.pending_journal import ADDED, decode_added, encode_added

    rng = np.random.default_rng(0)
    for size in (0, 1, 8, 31, 32, 384, 5000):  # 32 floats = 128 bytes: a two-byte length varint
        original = decision("d-1", 1_000.0, cost=0.0025)
        original.embedding = rng.standard_normal(size).astype(np.float32)
        original.answered_by = "b"
        record = encode_added(original)
        assert record.startswith(ADDED)
        expected = trainer_pb2.RewardEvent(
            event_id="d-1",
            embedding=original.embedding.tolist(),
            quality_weight=0.25,
            allowed=[True, False, True],
            model="c",
            propensity=0.5,
            policy_version=3,
            decided_at_unix_s=1_000.0,
            sidecar_id="b",
            cost_usd=0.0025,
        )
        assert trainer_pb2.RewardEvent.FromString(record[1:]) == expected, size
        back = decode_added(record[1:], ARMS)
        assert np.array_equal(back.embedding, original.embedding)
        assert (back.cost_usd, back.answered_by, back.allowed) == (0.0025, "b", (True, False, True))
