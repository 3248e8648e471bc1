"""The NATS message format of reward events: one event per message, or several in one batch message.

Owns packing spooled events into messages (the sidecar's NATS publisher) and unpacking a message back
into events (the trainer's NATS consumer); knows nothing about connections, spools or logs.

- Single-event message (the only format before batches): the payload is one serialized
  ``barp.v1.RewardEvent``; ``Nats-Msg-Id`` = its event id.
- Batch message: header ``Barp-Events`` = the number of events; the payload is that many
  length-delimited ``barp.v1.RewardEvent``s (each preceded by its size as a protobuf varint, as protobuf's
  ``writeDelimitedTo`` / ``parseDelimitedFrom`` write and read them), in spool order; ``Nats-Msg-Id`` =
  ``<first event id>..<last event id>``, so JetStream drops a resend of the identical batch and the
  trainer's log drops the events of a resend whose batch boundaries differ (de-duplication by event id).

A message never exceeds ``max_bytes`` (the server's ``max_payload`` less a margin for headers), except a
single event larger than that on its own, which goes as a single-event message (JetStream refuses it, as
it always did).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from barp_sidecar.gen.barp.v1 import trainer_pb2
from barp_sidecar.rewards.varint import varint_bytes

MSG_ID_HEADER = "Nats-Msg-Id"
EVENT_COUNT_HEADER = "Barp-Events"
# Headers travel inside max_payload; this leaves room for them (two event ids and a count).
HEADER_MARGIN_BYTES = 1024
MAX_VARINT_BYTES = 10


@dataclass(frozen=True)
class EventMessage:
    """One NATS message to publish: its payload, headers and how many events it holds."""

    payload: bytes
    headers: dict[str, str]
    events: int


class MalformedMessage(ValueError):
    """A message that is not a well-formed reward-event message: ``kind`` (dead-letter reason kind) and
    the detail as the exception text."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


def batch_msg_id(first_event_id: str, last_event_id: str) -> str:
    return f"{first_event_id}..{last_event_id}"


def pack_messages(
    events: Sequence[trainer_pb2.RewardEvent], max_events: int, max_bytes: int
) -> list[EventMessage]:
    """The messages, in order, covering ``events`` in order: single-event messages
    when ``max_events`` is 1, else batches of at most ``max_events`` events and ``max_bytes`` bytes."""
    messages: list[EventMessage] = []
    if max_events <= 1:
        return [EventMessage(e.SerializeToString(), {MSG_ID_HEADER: e.event_id}, 1) for e in events]
    parts: list[bytes] = []
    members: list[trainer_pb2.RewardEvent] = []
    size = 0

    def flush() -> None:
        if len(members) == 1:  # alone: the single-event format (also for one event over max_bytes)
            messages.append(
                EventMessage(members[0].SerializeToString(), {MSG_ID_HEADER: members[0].event_id}, 1)
            )
        elif members:
            headers = {
                MSG_ID_HEADER: batch_msg_id(members[0].event_id, members[-1].event_id),
                EVENT_COUNT_HEADER: str(len(members)),
            }
            messages.append(EventMessage(b"".join(parts), headers, len(members)))
        parts.clear()
        members.clear()

    for event in events:
        data = event.SerializeToString()
        framed = varint_bytes(len(data)) + data
        if members and (len(members) >= max_events or size + len(framed) > max_bytes):
            flush()
            size = 0
        parts.append(framed)
        members.append(event)
        size += len(framed)
    flush()
    return messages


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    value, shift = 0, 0
    for index in range(position, min(position + MAX_VARINT_BYTES, len(data))):
        byte = data[index]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, index + 1
        shift += 7
    raise MalformedMessage("undecodable", f"a truncated or overlong length prefix at byte {position}")


def unpack_message(data: bytes, headers: dict[str, str] | None) -> list[trainer_pb2.RewardEvent]:
    """The events of one message, in order. MalformedMessage ``undecodable`` (not reward events, a bad
    count or framing) or ``foreign`` (``Nats-Msg-Id`` missing or not matching the events)."""
    headers = headers or {}
    msg_id = headers.get(MSG_ID_HEADER)
    count_text = headers.get(EVENT_COUNT_HEADER)
    if count_text is None:
        try:
            event = trainer_pb2.RewardEvent.FromString(data)
        except DecodeError as exc:
            raise MalformedMessage("undecodable", f"not a barp.v1.RewardEvent: {exc}") from exc
        if not msg_id or msg_id != event.event_id:
            raise MalformedMessage(
                "foreign", f"{MSG_ID_HEADER} {msg_id!r} does not match event_id {event.event_id[:64]!r}"
            )
        return [event]
    if not count_text.isdigit() or int(count_text) < 1:
        raise MalformedMessage("undecodable", f"{EVENT_COUNT_HEADER} {count_text[:32]!r} is not a count >= 1")
    count = int(count_text)
    events: list[trainer_pb2.RewardEvent] = []
    position = 0
    while position < len(data):
        if len(events) == count:
            raise MalformedMessage("undecodable", f"bytes after the {count} events {EVENT_COUNT_HEADER} says")
        size, position = _read_varint(data, position)
        if position + size > len(data):
            raise MalformedMessage("undecodable", f"event {len(events)} runs past the end of the message")
        try:
            events.append(trainer_pb2.RewardEvent.FromString(data[position : position + size]))
        except DecodeError as exc:
            raise MalformedMessage(
                "undecodable", f"event {len(events)} is not a barp.v1.RewardEvent: {exc}"
            ) from exc
        position += size
    if len(events) != count:
        raise MalformedMessage("undecodable", f"{len(events)} events, {EVENT_COUNT_HEADER} says {count}")
    expected = batch_msg_id(events[0].event_id, events[-1].event_id)
    if msg_id != expected:
        raise MalformedMessage(
            "foreign",
            f"{MSG_ID_HEADER} {str(msg_id)[:64]!r} does not match the batch's events {expected[:130]!r}",
        )
    return events
