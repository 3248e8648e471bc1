from __future__ import annotations

import pytest

from barp_sidecar.providers.sse import SSEError, SSEEvent, SSEParser

STREAM = (
    b": keep-alive comment\n"
    b"event: content_block_delta\n"
    b'data: {"a": 1}\n'
    b"\n"
    b"data: line one\r\n"
    b"data:line two\r\n"
    b"id: 7\r\n"
    b"\r\n"
    b"data: caf\xc3\xa9 \xe2\x82\xac\r"
    b"\r"
    b"retry: 100\n"
    b"unknown: field\n"
    b"data\n"
    b"\n"
    b"event: only-event\n"
    b"\n"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    SSEEvent('{"a": 1}', "content_block_delta"),
    SSEEvent("line one\nline two", "message", "7"),
    SSEEvent("café €", "message", "7"),
    SSEEvent("", "message", "7"),
    SSEEvent("[DONE]", "message", "7"),
]


def parse_in_pieces(data: bytes, size: int) -> list[SSEEvent]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for start in range(0, len(data), size):
        events.extend(parser.feed(data[start : start + size]))
    return events


def test_parses_a_stream_fed_at_once() -> None:
    assert parse_in_pieces(STREAM, len(STREAM)) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 13])
def test_any_split_gives_the_same_events(size: int) -> None:
    # Splits land mid-line, between CR and LF and inside multi-byte UTF-8 characters.
    assert parse_in_pieces(STREAM, size) == EXPECTED


def test_every_two_way_split_point() -> None:
    for cut in range(len(STREAM) + 1):
        parser = SSEParser()
        assert parser.feed(STREAM[:cut]) + parser.feed(STREAM[cut:]) == EXPECTED, cut


def test_an_unterminated_event_is_reported_and_discarded_on_close() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: partial") == []
    assert parser.has_partial_event
    parser.close()
    assert not parser.has_partial_event


def test_non_utf8_is_an_error() -> None:
    with pytest.raises(SSEError, match="UTF-8"):
        SSEParser().feed(b"data: \xff\xfe\n\n")


def test_oversized_events_and_lines_are_errors() -> None:
    with pytest.raises(SSEError, match="larger than"):
        SSEParser(max_event_bytes=64).feed(b"data: " + b"x" * 100)  # one unterminated line
    parser = SSEParser(max_event_bytes=64)
    with pytest.raises(SSEError, match="larger than"):
        for _ in range(10):
            parser.feed(b"data: " + b"y" * 10 + b"\n")  # many lines of one event


def test_lf_only_streams_take_the_same_path_to_the_same_events() -> None:
    # Providers send LF-only streams, which take the split fast path; every split point gives the events
    # that the general line scan gives for the same stream with CR and CRLF line ends.
    lf_only = STREAM.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    for cut in range(len(lf_only) + 1):
        parser = SSEParser()
        assert parser.feed(lf_only[:cut]) + parser.feed(lf_only[cut:]) == EXPECTED, cut
    # A CR at the very end of one chunk, then LF-only chunks: the CRLF is one line end, not two.
    parser = SSEParser()
    events = parser.feed(b"data: a\r") + parser.feed(b"\ndata: b\n") + parser.feed(b"\n")
    assert events == [SSEEvent("a\nb")]
