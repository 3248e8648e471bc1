"""Bounded echoes of caller input: every value that goes back into a status message or a log line.

Owns two pure helpers and nothing else. A caller controls the size of what it sends (20,000 model names,
a 100 KB id); echoing it verbatim made status details exceed the client's metadata limit (the caller saw
RESOURCE_EXHAUSTED "Stream removed" instead of INVALID_ARGUMENT) and wrote megabyte log lines. Messages
are cut by UTF-8 bytes, not characters, because gRPC percent-encodes the status message into a header.
"""

from __future__ import annotations

from collections.abc import Sequence

# Longest echoed value (UTF-8 bytes) in a status message or a log field unless a caller asks for less.
DEFAULT_MAX_BYTES = 1000
# How many items of a caller's list a message shows before summarising the rest.
DEFAULT_MAX_ITEMS = 8
# Longest single item (characters) shown by ``preview_items``.
DEFAULT_MAX_ITEM_CHARS = 64


def bounded_text(text: str, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """``text`` unchanged when its UTF-8 form fits ``max_bytes``, else a prefix that fits, plus a marker
    saying how much was cut. The result (marker included) is never longer than ``max_bytes`` + 40 bytes."""
    if max_bytes < 1:
        raise ValueError("max_bytes must be >= 1")
    # Cheap check first: a str of n code points is at most 4n UTF-8 bytes.
    if len(text) * 4 <= max_bytes:
        return text
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= max_bytes:
        return text
    prefix = encoded[:max_bytes].decode("utf-8", "ignore")
    return f"{prefix}… [{len(encoded) - len(prefix.encode('utf-8', 'surrogatepass'))} more bytes]"


def preview_items(
    items: Sequence[str], max_items: int = DEFAULT_MAX_ITEMS, max_item_chars: int = DEFAULT_MAX_ITEM_CHARS
) -> str:
    """A list for a message: at most ``max_items`` items, each cut at ``max_item_chars``, and a count of
    the rest, e.g. ``['a', 'b', … 19998 more]``."""
    shown = [
        repr(item if len(item) <= max_item_chars else item[:max_item_chars] + "…")
        for item in items[:max_items]
    ]
    if len(items) > max_items:
        shown.append(f"… {len(items) - max_items} more")
    return "[" + ", ".join(shown) + "]"
