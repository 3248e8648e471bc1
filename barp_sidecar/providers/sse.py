"""An incremental Server-Sent Events parser (the WHATWG event-stream format), pure and bounded.

Feed it bytes as they arrive, in any split (even mid-line, mid-CRLF or mid-UTF-8 character); it returns
the complete events. Lines end in LF, CR or CRLF; ``data`` lines of one event join with "\\n"; lines
starting with ":" are comments (keep-alives); an event is dispatched on a blank line. An event larger
than ``max_event_bytes`` or a line that is not UTF-8 raises ``SSEError`` rather than growing without
bound or guessing.

Cost: a provider's stream is nearly always LF-only, so ``feed`` splits such bytes on b"\\n" in one call
and handles ``data:`` lines without a str round trip per field name; only CR line ends (or a CR left at
the end of the previous chunk) take the general line-by-line scan. Both paths give the same events.
"""

from __future__ import annotations

from dataclasses import dataclass


class SSEError(ValueError):
    """The byte stream is not a well-formed event stream."""


@dataclass(frozen=True)
class SSEEvent:
    data: str
    event: str = "message"
    id: str | None = None


class SSEParser:
    def __init__(self, max_event_bytes: int = 1 << 20) -> None:
        self._max_event_bytes = max_event_bytes
        self._buffer = bytearray()
        self._skip_leading_lf = False
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._event_bytes = 0

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume ``chunk``; return the events it completed (possibly none)."""
        if not chunk:
            return []
        if self._skip_leading_lf or b"\r" in chunk:
            return self._feed_any_line_ends(chunk)
        # LF only (the buffer never keeps a CR: the general scan consumes every line that has one).
        buffer = self._buffer
        buffer += chunk
        end = buffer.rfind(b"\n")
        events: list[SSEEvent] = []
        if end >= 0:
            lines = bytes(buffer[:end]).split(b"\n")
            del buffer[: end + 1]
            for raw in lines:
                event = self._line(raw)
                if event is not None:
                    events.append(event)
        if len(buffer) + self._event_bytes > self._max_event_bytes:
            raise SSEError(f"event larger than {self._max_event_bytes} bytes")
        return events

    def _feed_any_line_ends(self, chunk: bytes) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        buffer = self._buffer
        buffer.extend(chunk)
        start = 0
        length = len(buffer)
        while start < length:
            if self._skip_leading_lf:
                self._skip_leading_lf = False
                if buffer[start] == 0x0A:  # the LF of a CRLF split across chunks
                    start += 1
                    continue
            lf = buffer.find(b"\n", start)
            cr = buffer.find(b"\r", start)
            if lf < 0 and cr < 0:
                break
            end = lf if cr < 0 or (0 <= lf < cr) else cr
            line = bytes(buffer[start:end])
            if buffer[end] == 0x0D:
                if end + 1 < length:
                    if buffer[end + 1] == 0x0A:
                        end += 1
                else:
                    self._skip_leading_lf = True
            start = end + 1
            event = self._line(line)
            if event is not None:
                events.append(event)
        del buffer[:start]
        if len(buffer) + self._event_bytes > self._max_event_bytes:
            raise SSEError(f"event larger than {self._max_event_bytes} bytes")
        return events

    def close(self) -> None:
        """End of stream. An unterminated trailing event is discarded (as the spec requires)."""
        self._buffer.clear()
        self._data.clear()
        self._event_bytes = 0

    @property
    def has_partial_event(self) -> bool:
        return bool(self._buffer) or bool(self._data)

    def _line(self, raw: bytes) -> SSEEvent | None:
        if not raw:
            return self._dispatch()
        self._event_bytes += len(raw) + 1
        if self._event_bytes > self._max_event_bytes:
            raise SSEError(f"event larger than {self._max_event_bytes} bytes")
        if raw.startswith(b"data:"):  # nearly every line: no partition, one decode
            data = raw[6:] if raw.startswith(b"data: ") else raw[5:]
            try:
                self._data.append(data.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise SSEError(f"event stream line is not UTF-8 ({exc.reason})") from exc
            return None
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SSEError(f"event stream line is not UTF-8 ({exc.reason})") from exc
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
        # "retry" and unknown fields are ignored, as the spec says.
        return None

    def _dispatch(self) -> SSEEvent | None:
        self._event_bytes = 0
        if not self._data:
            self._event = ""
            return None
        event = SSEEvent(data="\n".join(self._data), event=self._event or "message", id=self._id)
        self._data = []
        self._event = ""
        return event
