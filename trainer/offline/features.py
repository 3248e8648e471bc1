"""Embedding a routing table's prompts through the on-disk cache, with a progress bar.

Owns the glue between ``RoutingTable``, the encoder settings and ``EmbeddingCache``; nothing else.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from barp_sidecar.policy.encoder import EncoderSettings, build_encoder
from trainer.offline.datasets import RoutingTable
from trainer.offline.embedding_cache import EmbeddingCache

# When stderr is not a terminal (a redirected log), redraw at most this often so logs stay short.
REDIRECTED_PROGRESS_INTERVAL_S = 30.0


def progress_bar(*, enabled: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr; redirected to a file it updates every 30 s and without colour or unicode."""
    redirected = not sys.stderr.isatty()
    return tqdm(
        disable=not enabled,
        mininterval=REDIRECTED_PROGRESS_INTERVAL_S if redirected else 0.1,
        ascii=redirected or None,
        dynamic_ncols=not redirected,
        **kwargs,
    )


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "barp-sidecar" / "embeddings"


def embed_prompts(
    prompts: tuple[str, ...] | list[str],
    settings: EncoderSettings,
    cache_dir: Path,
    show_progress: bool = True,
) -> tuple[np.ndarray, str, int]:
    """(embeddings [N, dim], encoder id, dim). Loads the encoder only if some prompt is not cached."""
    encoder = build_encoder(settings)
    cached = EmbeddingCache.for_unloaded(cache_dir, encoder)
    if cached is not None and cached.count_missing(list(prompts)) == 0:
        return cached.embed(list(prompts)), encoder.encoder_id, cached.dim
    encoder.load()
    cache = EmbeddingCache(cache_dir, encoder)
    missing = cache.count_missing(list(prompts))
    with progress_bar(
        total=missing,
        desc=f"encode ({settings.truncation}, {settings.max_seq_length} tok)",
        unit="prompt",
        enabled=show_progress and missing > 0,
    ) as bar:
        vectors = cache.embed(list(prompts), progress=bar.update)
    return vectors, encoder.encoder_id, int(encoder.dim)


def embed_table(
    table: RoutingTable, settings: EncoderSettings, cache_dir: Path, show_progress: bool = True
) -> tuple[np.ndarray, str, int]:
    return embed_prompts(table.prompts, settings, cache_dir, show_progress)
