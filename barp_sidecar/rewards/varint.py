"""Protobuf's base-128 varint, encoded: the length and tag prefixes the reward path writes by hand
(the pending-decision journal's packed embedding field, the length-delimited events of a NATS batch
message). Owns the encoding only; readers decode with their own error handling."""

from __future__ import annotations


def varint_bytes(value: int) -> bytes:
    """``value`` (>= 0) as a protobuf varint: 7 bits per byte, low bits first, high bit = more follows."""
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
