"""Exact-match embedding cache: a bounded LRU from a prompt's digest to its embedding.

Owns only the cache. Keys are 16-byte BLAKE2b digests of the UTF-8 prompt, so memory is bounded by the
entry count whatever the prompt size. Not thread-safe on purpose: the inference thread is its only user.
The encoder is fixed for a process (a hot-swapped policy must use the same encoder), so entries never go
stale.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np


def prompt_key(prompt: str) -> bytes:
    return hashlib.blake2b(prompt.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class EmbeddingCache:
    """LRU of at most ``max_entries`` embeddings; ``max_entries == 0`` disables it."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0")
        self._max_entries = max_entries
        self._entries: OrderedDict[bytes, np.ndarray] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self._max_entries > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> np.ndarray | None:
        embedding = self._entries.get(key)
        if embedding is not None:
            self._entries.move_to_end(key)
        return embedding

    def put(self, key: bytes, embedding: np.ndarray) -> None:
        if self._max_entries == 0:
            return
        self._entries[key] = embedding
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
