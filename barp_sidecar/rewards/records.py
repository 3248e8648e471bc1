"""Crash-safe record framing shared by the sidecar's reward spool and the trainer's event log.

Owns the on-disk layout of one record and the scan that recovers a file after a crash; knows nothing about
what the payload means. A record is::

    magic  b"BR"        2 bytes
    length              4 bytes, big-endian, payload bytes
    crc32               4 bytes, big-endian, zlib.crc32 of the payload
    payload             ``length`` bytes

A torn write leaves either a short header, a short payload or a CRC mismatch at the end of the file.
``scan_records`` returns every whole record before the first bad one and the byte offset where the valid
prefix ends, so the caller can truncate the file there: nothing before a torn record is ever lost.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"BR"
HEADER = struct.Struct(">2sII")
HEADER_BYTES = HEADER.size
# Largest payload accepted when reading; anything bigger is treated as corruption (a torn length field).
MAX_PAYLOAD_BYTES = 16 << 20


def encode_record(payload: bytes) -> bytes:
    """Frame one payload."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    return HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


@dataclass(frozen=True)
class ScanResult:
    """Whole records of a file, where the valid prefix ends, and why the scan stopped early (if it did)."""

    payloads: list[bytes]
    valid_bytes: int
    file_bytes: int
    problem: str | None

    @property
    def torn(self) -> bool:
        return self.valid_bytes < self.file_bytes


def iter_records(data: bytes) -> Iterator[tuple[int, bytes]]:
    """Yield (end_offset, payload) for each whole record; stop silently at the first bad one."""
    offset = 0
    while offset + HEADER_BYTES <= len(data):
        magic, length, crc = HEADER.unpack_from(data, offset)
        end = offset + HEADER_BYTES + length
        if magic != MAGIC or length > MAX_PAYLOAD_BYTES or end > len(data):
            return
        payload = data[offset + HEADER_BYTES : end]
        if zlib.crc32(payload) != crc:
            return
        yield end, payload
        offset = end


def scan_bytes(data: bytes) -> ScanResult:
    """Parse a whole file's bytes; see the module docstring."""
    payloads = []
    valid = 0
    for end, payload in iter_records(data):
        payloads.append(payload)
        valid = end
    problem = None
    if valid < len(data):
        remaining = len(data) - valid
        if remaining < HEADER_BYTES:
            problem = f"short header ({remaining} bytes)"
        else:
            magic, length, _ = HEADER.unpack_from(data, valid)
            if magic != MAGIC:
                problem = "bad magic"
            elif valid + HEADER_BYTES + length > len(data):
                problem = f"short payload ({remaining - HEADER_BYTES} of {length} bytes)"
            else:
                problem = "crc mismatch"
    return ScanResult(payloads, valid, len(data), problem)


def scan_file(path: Path) -> ScanResult:
    return scan_bytes(Path(path).read_bytes())


def truncate_to_valid(path: Path, result: ScanResult) -> None:
    """Cut a torn tail off ``path`` (no-op when the file is whole) and fsync it."""
    if not result.torn:
        return
    with open(path, "r+b") as handle:
        handle.truncate(result.valid_bytes)
        handle.flush()
        os.fsync(handle.fileno())
