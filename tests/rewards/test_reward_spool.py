"""RewardSpool: sequences, group fsync, quota, acks/trimming and crash recovery (torn last record)."""

from __future__ import annotations

import asyncio
import random

import pytest

from barp_sidecar.errors import ConfigError
from barp_sidecar.rewards.spool import RewardSpool, SpoolFull
from tests.learning_helpers import random_event


async def _spool(tmp_path, **kwargs) -> RewardSpool:
    spool = RewardSpool(
        tmp_path / "spool", kwargs.pop("max_bytes", 1 << 20), kwargs.pop("fsync_ms", 1.0), **kwargs
    )
    await spool.start()
    return spool


async def test_concurrent_appends_get_increasing_sequences_and_are_readable(tmp_path):
    spool = await _spool(tmp_path)
    rng = random.Random(1)
    events = [random_event(rng) for _ in range(50)]
    sequences = await asyncio.gather(*(spool.append(e) for e in events))
    assert sorted(sequences) == list(range(1, 51))
    assert spool.durable_sequence == 50
    read = spool.read_after(10, 100)
    assert [e.sequence for e in read] == list(range(11, 51))
    assert [e.event_id for e in read] == [e.event_id for e in events[10:]]
    await spool.close()


async def test_restart_resends_only_unacknowledged_and_continues_sequences(tmp_path):
    spool = await _spool(tmp_path, segment_max_bytes=4096)
    rng = random.Random(2)
    for _ in range(20):
        await spool.append(random_event(rng))
    await spool.ack(12)
    await spool.close()

    reopened = await _spool(tmp_path, segment_max_bytes=4096)
    assert reopened.acked_sequence == 12
    assert [e.sequence for e in reopened.read_after(reopened.acked_sequence, 100)] == list(range(13, 21))
    assert await reopened.append(random_event(rng)) == 21
    await reopened.close()


async def test_ack_deletes_fully_acknowledged_segments_only(tmp_path):
    spool = await _spool(tmp_path, segment_max_bytes=2048)
    rng = random.Random(3)
    for _ in range(30):
        await spool.append(random_event(rng))
    before = len(list((tmp_path / "spool").glob("segment-*.spool")))
    size_before = spool.size_bytes
    await spool.ack(30)
    after = len(list((tmp_path / "spool").glob("segment-*.spool")))
    assert before > 2 and after == 1  # the active segment stays
    assert spool.size_bytes < size_before
    assert spool.read_after(30, 10) == []
    await spool.close()


async def test_full_spool_refuses_new_events_and_keeps_old_ones(tmp_path):
    spool = await _spool(tmp_path, max_bytes=1 << 16, segment_max_bytes=1 << 16)
    rng = random.Random(4)
    stored = 0
    with pytest.raises(SpoolFull, match="spool is full"):
        for _ in range(1000):
            await spool.append(random_event(rng))
            stored += 1
    assert spool.refused_total == 1
    assert len(spool.read_after(0, 10_000)) == stored
    # Acknowledging frees space only after a segment is sealed; the active one is never deleted mid-write.
    await spool.close()


@pytest.mark.parametrize("cut_bytes", [1, 5, 11, 200])
async def test_torn_last_record_is_dropped_and_everything_before_kept(tmp_path, cut_bytes):
    spool = await _spool(tmp_path)
    rng = random.Random(5)
    events = [random_event(rng) for _ in range(10)]
    for event in events:
        await spool.append(event)
    await spool.close()
    (segment,) = (tmp_path / "spool").glob("segment-*.spool")
    data = segment.read_bytes()
    segment.write_bytes(data[:-cut_bytes])

    reopened = await _spool(tmp_path)
    assert reopened.torn_records_dropped == 1
    recovered = reopened.read_after(0, 100)
    assert [e.event_id for e in recovered] == [e.event_id for e in events[:9]]
    assert await reopened.append(random_event(rng)) == 10  # the torn sequence is reused, never skipped
    await reopened.close()


async def test_corrupted_byte_in_last_record_is_detected_by_crc(tmp_path):
    spool = await _spool(tmp_path)
    rng = random.Random(6)
    for _ in range(3):
        await spool.append(random_event(rng))
    await spool.close()
    (segment,) = (tmp_path / "spool").glob("segment-*.spool")
    data = bytearray(segment.read_bytes())
    data[-3] ^= 0xFF
    segment.write_bytes(bytes(data))
    reopened = await _spool(tmp_path)
    assert [e.sequence for e in reopened.read_after(0, 10)] == [1, 2]
    await reopened.close()


async def test_two_spools_never_share_a_directory(tmp_path):
    first = await _spool(tmp_path)
    with pytest.raises(ConfigError, match="in use by another sidecar") as caught:
        await _spool(tmp_path)
    assert caught.value.key == "rewards.spool_dir"
    await first.close()
    second = await _spool(tmp_path)  # the lock goes with the first one's close
    await second.close()


async def test_read_after_returns_the_next_durable_events_from_any_cursor_across_segments(tmp_path):
    """Every cursor, in sealed segments (read back from disk), at their boundaries and in the active one;
    events appended but not yet fsync'd are never handed out."""
    spool = await _spool(tmp_path, segment_max_bytes=4096, fsync_ms=0.0)
    rng = random.Random(9)
    for _ in range(40):
        await spool.append(random_event(rng))
    await spool.ack(7)  # the acked floor does not limit what a resend may read
    segments = sorted((tmp_path / "spool").glob("segment-*.spool"))
    assert len(segments) >= 3
    for cursor in range(0, 41):
        for max_events in (1, 5, 100):
            expected = list(range(cursor + 1, min(40, cursor + max_events) + 1))
            read = spool.read_after(cursor, max_events)
            assert [e.sequence for e in read] == expected, (cursor, max_events)
    spool.fsync_interval_s = 60.0  # the next appends are written but wait a minute for their fsync
    pending = [asyncio.create_task(spool.append(random_event(rng))) for _ in range(3)]
    await asyncio.sleep(0.05)
    assert not any(task.done() for task in pending)
    assert [e.sequence for e in spool.read_after(37, 100)] == [38, 39, 40]
    assert spool.read_after(40, 100) == []
    await spool.close()  # the final fsync makes them durable and returns their sequences
    assert sorted(await asyncio.gather(*pending)) == [41, 42, 43]
