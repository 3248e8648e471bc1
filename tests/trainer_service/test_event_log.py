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


def test_stream_positions_survive_a_restart_and_count_within_one_stream_incarnation(tmp_path):
    rng = random.Random(9)

    def from_stream(sequence: int):
        event = random_event(rng)
        event.stream_sequence = sequence
        return event

    log = SegmentedEventLog(tmp_path, segment_max_bytes=2048).open()
    assert log.set_stream_identity("EVENTS@t1") and not log.set_stream_identity("EVENTS@t1")
    log.append([from_stream(q) for q in (1, 2, 3, 5, 8)])  # gaps: other subjects, dead letters
    log.append([random_event(rng)])  # PublishRewards: no stream position
    assert log.last_stream_sequence == 8
    assert [log.offset_after_stream_sequence(q) for q in (1, 4, 5, 7, 8, 100)] == [1, 3, 4, 4, 5, 5]
    log.close()

    log = SegmentedEventLog(tmp_path, segment_max_bytes=2048).open()  # a restart reads it all back
    assert (log.stream_identity, log.last_stream_sequence) == ("EVENTS@t1", 8)
    assert log.offset_after_stream_sequence(4) == 3 and log.stream_identity_at(0) == "EVENTS@t1"
    # The stream was deleted and recreated: its sequences start again, counted from offset 6 on.
    assert log.set_stream_identity("EVENTS@t2")
    assert log.last_stream_sequence == 0 and log.offset_after_stream_sequence(3) == 6
    log.append([from_stream(q) for q in (1, 2)])
    assert log.last_stream_sequence == 2 and log.offset_after_stream_sequence(1) == 7
    assert log.stream_identity_at(5) == "" and log.stream_identity_at(6) == "EVENTS@t2"
    log.close()
    log = SegmentedEventLog(tmp_path, segment_max_bytes=2048).open()
    assert (log.stream_identity, log.last_stream_sequence) == ("EVENTS@t2", 2)
    assert log.offset_after_stream_sequence(5) == 8
    log.close()


def test_a_resume_point_inside_a_batch_message_is_just_after_its_last_trained_event(tmp_path):
    rng = random.Random(11)
    log = SegmentedEventLog(tmp_path, segment_max_bytes=1500).open()  # messages span segments
    log.set_stream_identity("EVENTS@t1")
    by_sequence: dict[int, list[str]] = {}
    for sequence, count in ((1, 1), (2, 4), (4, 3)):  # batch messages: every event has its sequence
        batch = [random_event(rng) for _ in range(count)]
        for event in batch:
            event.stream_sequence = sequence
        log.append(batch)
        by_sequence[sequence] = [event.event_id for event in batch]
    assert log.last_stream_sequence == 4
    assert log.offset_after_stream_sequence(2) == 5  # the whole message: offsets 1..4
    second = by_sequence[2]
    assert [log.offset_after_stream_sequence(2, event_id) for event_id in second] == [2, 3, 4, 5]
    assert log.offset_after_stream_sequence(4, by_sequence[4][0]) == 6
    assert log.offset_after_stream_sequence(3, second[1]) == 5  # a sequence without records: after 2
    assert log.offset_after_stream_sequence(2, "not-here") == 5  # not one of its records: after it all
    assert log.offset_after_stream_sequence(2, by_sequence[1][0]) == 5  # another message's event
    log.close()


def test_a_resume_point_whose_records_were_retired_is_refused(tmp_path):
    rng = random.Random(10)
    log = SegmentedEventLog(tmp_path, segment_max_bytes=1, retention_max_bytes=1).open()
    log.set_stream_identity("EVENTS@t1")
    for sequence in range(1, 6):  # one record per segment; retention keeps only the newest segment
        event = random_event(rng)
        event.stream_sequence = sequence
        log.append([event])
    assert log.offset_after_stream_sequence(5) == 5
    assert log.offset_after_stream_sequence(3) is None  # the record of sequence 3 is gone
    log.close()
