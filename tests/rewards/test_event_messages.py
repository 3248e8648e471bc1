"""The NATS message format of reward events: packing in order within the event and byte limits, reading
single-event and batch messages back, and every malformed batch refused with its reason kind."""

from __future__ import annotations

import random

import pytest

from barp_sidecar.rewards.event_messages import (
    EVENT_COUNT_HEADER,
    MSG_ID_HEADER,
    MalformedMessage,
    pack_messages,
    unpack_message,
)
from tests.learning_helpers import random_event


def events(count: int, seed: int = 0):
    rng = random.Random(seed)
    return [random_event(rng, sequence=i + 1) for i in range(count)]


def test_one_event_per_message_is_the_single_event_format():
    batch = events(3)
    messages = pack_messages(batch, max_events=1, max_bytes=1 << 20)
    assert [m.payload for m in messages] == [e.SerializeToString() for e in batch]
    assert [m.headers for m in messages] == [{MSG_ID_HEADER: e.event_id} for e in batch]
    assert [unpack_message(m.payload, m.headers)[0] for m in messages] == batch


@pytest.mark.parametrize(("max_events", "max_bytes"), [(64, 1 << 20), (7, 1 << 20), (64, 3000), (2, 1)])
def test_batches_keep_the_order_and_stay_within_both_limits(max_events, max_bytes):
    batch = events(50)
    messages = pack_messages(batch, max_events, max_bytes)
    read = [event for m in messages for event in unpack_message(m.payload, m.headers)]
    assert read == batch
    assert [m.events for m in messages] == [len(unpack_message(m.payload, m.headers)) for m in messages]
    for message in messages:
        assert message.events <= max_events
        assert message.events == 1 or len(message.payload) <= max_bytes
        if message.events > 1:
            assert message.headers[EVENT_COUNT_HEADER] == str(message.events)
            first, last = unpack_message(message.payload, message.headers)[:: message.events - 1]
            assert message.headers[MSG_ID_HEADER] == f"{first.event_id}..{last.event_id}"
    if max_bytes == 1:  # every event is over the limit: each goes alone, in the single-event format
        assert [m.headers for m in messages] == [{MSG_ID_HEADER: e.event_id} for e in batch]
    elif max_bytes == 3000:
        assert 1 < max(m.events for m in messages) < 64


def test_the_same_events_pack_to_the_same_messages_and_other_boundaries_to_other_ids():
    batch = events(10)
    assert pack_messages(batch, 4, 1 << 20) == pack_messages(batch, 4, 1 << 20)
    ids = {m.headers[MSG_ID_HEADER] for m in pack_messages(batch, 4, 1 << 20)}
    assert ids.isdisjoint(m.headers[MSG_ID_HEADER] for m in pack_messages(batch[1:], 4, 1 << 20))


def _batch_of(count: int):
    (message,) = pack_messages(events(count, seed=3), count, 1 << 20)
    return message


@pytest.mark.parametrize(
    ("change", "kind", "words"),
    [
        (lambda p, h: (p, {**h, EVENT_COUNT_HEADER: "x"}), "undecodable", "is not a count"),
        (lambda p, h: (p, {**h, EVENT_COUNT_HEADER: "0"}), "undecodable", "is not a count"),
        (lambda p, h: (p, {**h, EVENT_COUNT_HEADER: "4"}), "undecodable", "3 events, Barp-Events says 4"),
        (lambda p, h: (p, {**h, EVENT_COUNT_HEADER: "2"}), "undecodable", "bytes after the 2 events"),
        (lambda p, h: (p[:-5], h), "undecodable", "runs past the end"),
        (lambda p, h: (p + b"\xff", {**h, EVENT_COUNT_HEADER: "4"}), "undecodable", "length prefix"),
        (
            lambda p, h: (b"\x03\xff\xff\xff" + p, {**h, EVENT_COUNT_HEADER: "4"}),
            "undecodable",
            "event 0 is not",
        ),
        (lambda p, h: (p, {EVENT_COUNT_HEADER: "3"}), "foreign", "does not match the batch's events"),
        (lambda p, h: (p, {**h, MSG_ID_HEADER: "someone-else"}), "foreign", "does not match"),
    ],
)
def test_a_malformed_batch_is_refused_with_its_reason(change, kind, words):
    message = _batch_of(3)
    payload, headers = change(message.payload, message.headers)
    with pytest.raises(MalformedMessage, match=words) as raised:
        unpack_message(payload, headers)
    assert raised.value.kind == kind


def test_a_malformed_single_event_message_is_refused_as_before():
    (event,) = events(1)
    with pytest.raises(MalformedMessage) as raised:
        unpack_message(b"\xff\xff\xff garbage", {MSG_ID_HEADER: "x"})
    assert raised.value.kind == "undecodable"
    with pytest.raises(MalformedMessage) as raised:
        unpack_message(event.SerializeToString(), None)
    assert raised.value.kind == "foreign"
