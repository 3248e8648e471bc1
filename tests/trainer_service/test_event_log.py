"""SegmentedEventLog: de-duplication across restarts, offsets, torn-tail recovery and retention."""

from __future__ import annotations

import random

from tests.learning_helpers import random_event
from trainer.service.eventlog import SegmentedEventLog


def test_append_deduplicates_within_a_batch_and_across_restarts(tmp_path):
    rng = random.Random(1)
    events = [random_event(rng) for _ in range(20)]
    log = SegmentedEventLog(tmp_path / "events").open()
    assert log.append(events[:10] + events[:3]) == [True] * 10 + [False] * 3
    log.close()

    reopened = SegmentedEventLog(tmp_path / "events").open()
    assert reopened.append(events[5:20]) == [False] * 5 + [True] * 10
    stored = reopened.read_from(0, 100)
    assert [offset for offset, _ in stored] == list(range(20))
    assert [e.event_id for _, e in stored] == [e.event_id for e in events]
    assert reopened.end_offset == 20
    reopened.close()


def test_read_from_spans_segments(tmp_path):
    rng = random.Random(2)
    log = SegmentedEventLog(tmp_path / "events", segment_max_bytes=4096).open()
    events = [random_event(rng) for _ in range(200)]
    for i in range(0, 200, 7):
        log.append(events[i : i + 7])
    assert len(list((tmp_path / "events").glob("events-*.log"))) > 1
    got = log.read_from(37, 100)
    assert [o for o, _ in got] == list(range(37, 137))
    assert [e.event_id for _, e in got] == [e.event_id for e in events[37:137]]
    log.close()


def test_truncated_segment_recovers_up_to_last_whole_record(tmp_path):
    rng = random.Random(3)
    events = [random_event(rng) for _ in range(8)]
    log = SegmentedEventLog(tmp_path / "events").open()
    log.append(events)
    log.close()
    (segment,) = (tmp_path / "events").glob("events-*.log")
    segment.write_bytes(segment.read_bytes()[:-17])

    reopened = SegmentedEventLog(tmp_path / "events").open()
    assert reopened.torn_records_dropped == 1
    assert [e.event_id for _, e in reopened.read_from(0, 100)] == [e.event_id for e in events[:7]]
    # The torn event was never acknowledged, so its resend is stored (not a duplicate).
    assert reopened.append([events[7]]) == [True]
    assert reopened.end_offset == 8
    reopened.close()


def test_retention_by_size_drops_oldest_segments_and_forgets_their_ids(tmp_path):
    rng = random.Random(4)
    log = SegmentedEventLog(tmp_path / "events", segment_max_bytes=4096, retention_max_bytes=3 * 4096).open()
    events = [random_event(rng) for _ in range(600)]
    for i in range(0, 600, 10):
        log.append(events[i : i + 10])
    assert log.size_bytes <= 4 * 4096 + 4096
    first_offset = log.read_from(0, 1)[0][0]
    assert first_offset > 0  # offsets keep counting across retention
    assert log.read_from(0, 1)[0][1].event_id == events[first_offset].event_id
    log.close()


def test_retention_by_age(tmp_path):
    now = [1000.0]
    rng = random.Random(5)
    log = SegmentedEventLog(
        tmp_path / "events", segment_max_bytes=4096, retention_max_age_s=60, clock=lambda: now[0]
    ).open()
    for _ in range(60):
        log.append([random_event(rng) for _ in range(10)])
        now[0] += 5
    segments = sorted((tmp_path / "events").glob("events-*.log"))
    assert len(segments) >= 1
    assert log.read_from(0, 1)[0][0] > 0
    log.close()
