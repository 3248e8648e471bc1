"""On-disk embedding cache keyed by (encoder id and backend, dim, max_seq_length, truncation, text sha256).

A model loaded from a local directory (``--encoder-model /path/to/model``) is also keyed by the sha256 of
its files, so a different model placed at the same path never reads another model's vectors. That digest
is computed once per process for files whose size, times and inode are unchanged (``directory_sha256``).

``EmbeddingCache.for_unloaded`` finds an encoder's cache directory before the encoder is loaded (its
``dim`` is only known after loading), so callers whose prompts are all cached never load the weights.

Owns the cache files; knows nothing about policies. Each encoder configuration gets its own directory
``<root>/<config digest>/`` holding ``config.json`` (human-readable key) and append-only ``shard-*.npz``
files (text digests + float32 vectors). A shard is written to a temporary name and renamed, so a crash
never leaves a half-written shard, and two processes filling the same cache at worst duplicate work.
Re-running training or evaluation therefore encodes each prompt once per encoder configuration.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from barp_sidecar.policy.backends import encoder_backend_identity
from barp_sidecar.policy.encoder import Encoder

DIGEST_BYTES = 16
FILE_READ_BYTES = 1 << 20


def text_digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()[:DIGEST_BYTES]


def encoder_config(encoder: Encoder) -> dict[str, object]:
    """The part of the key that names the encoder and its truncation (``encoder`` loaded)."""
    return {**config_without_dim(encoder), "dim": int(encoder.dim)}


def config_without_dim(encoder: Encoder) -> dict[str, object]:
    """``encoder_config`` less ``dim``: everything known before the encoder is loaded (torch backend)."""
    settings = encoder.settings
    config: dict[str, object] = {
        "encoder_id": encoder.encoder_id,
        "max_seq_length": settings.max_seq_length,
        "truncation": settings.truncation,
    }
    backend, model_sha256 = encoder_backend_identity(encoder)
    if backend != "torch":  # torch keeps the key it always had, so existing caches stay valid
        config["backend"] = backend
        config["model_sha256"] = model_sha256
    elif Path(settings.model).is_dir():
        # The path alone names a place, not a model: key on what is there. The built-in MiniLM
        # ("builtin:…", files pinned by its package) and hub names keep the key they always had.
        config["model_files_sha256"] = directory_sha256(Path(settings.model))
    return config


# directory_sha256's memo: (directory, every file's (path, size, mtime, ctime, inode)) -> digest.
_DIRECTORY_DIGESTS: dict[tuple[str, tuple[tuple[str, int, int, int, int], ...]], str] = {}
# A file changed less than this before it was hashed may change again within the file system's timestamp
# granularity without a visible stat change, so such a digest is not memoised ("racy", as in git's index).
RACY_WINDOW_NS = 2_000_000_000


def file_sha256(path: Path) -> str:
    content = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(FILE_READ_BYTES):
            content.update(block)
    return content.hexdigest()


def directory_sha256(directory: Path) -> str:
    """sha256 of the lines "<relative path>\\0<file sha256>" of every file under ``directory``, sorted.

    Memoised per process while no file's size, mtime, ctime or inode changes (a 440 MB model took seconds
    to rehash on every cache open); files changed within ``RACY_WINDOW_NS`` of hashing are rehashed.
    """
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    stats = [path.stat() for path in files]
    signature = tuple(
        (path.relative_to(directory).as_posix(), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        for path, st in zip(files, stats, strict=True)
    )
    key = (str(directory.resolve()), signature)
    if key in _DIRECTORY_DIGESTS:
        return _DIRECTORY_DIGESTS[key]
    started_ns = time.time_ns()
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.relative_to(directory).as_posix()}\0{file_sha256(path)}\n".encode())
    if all(max(st.st_mtime_ns, st.st_ctime_ns) < started_ns - RACY_WINDOW_NS for st in stats):
        _DIRECTORY_DIGESTS[key] = digest.hexdigest()
    return digest.hexdigest()


def config_digest(config: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


class EmbeddingCache:
    """Embeddings of texts for one loaded encoder, memoised on disk under ``root``."""

    def __init__(self, root: Path, encoder: Encoder, config: dict[str, object] | None = None) -> None:
        self._encoder = encoder
        self._config = encoder_config(encoder) if config is None else config
        self.directory = Path(root) / config_digest(self._config)
        self._vectors: dict[bytes, np.ndarray] = {}
        self._loaded = False

    @classmethod
    def for_unloaded(cls, root: Path, encoder: Encoder) -> EmbeddingCache | None:
        """The cache of ``encoder`` found without loading it, or None (not cached yet, or not a torch
        encoder). It reads as usual; ``embed`` loads nothing itself, so the caller loads the encoder
        (and opens ``EmbeddingCache(root, encoder)``) when ``count_missing`` is not 0.

        The key's ``dim`` is taken from the one directory under ``root`` whose ``config.json`` matches
        every other part of the key and whose name is that config's digest.
        """
        if encoder_backend_identity(encoder)[0] != "torch":
            return None
        wanted = config_without_dim(encoder)
        found = []
        for config_path in Path(root).glob("*/config.json"):
            try:
                config = json.loads(config_path.read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(config, dict) or config_path.parent.name != config_digest(config):
                continue
            if {k: v for k, v in config.items() if k != "dim"} == wanted and isinstance(
                config.get("dim"), int
            ):
                found.append(config)
        return cls(root, encoder, found[0]) if len(found) == 1 else None

    @property
    def dim(self) -> int:
        return int(self._config["dim"])  # type: ignore[call-overload]

    @property
    def config(self) -> dict[str, object]:
        return dict(self._config)

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if not self.directory.is_dir():
            return
        for shard in sorted(self.directory.glob("shard-*.npz")):
            try:
                with np.load(shard) as data:
                    keys, vectors = data["keys"], data["vectors"]
            except (OSError, ValueError, KeyError):
                continue  # a damaged shard only costs re-encoding
            if vectors.ndim != 2 or vectors.shape[1] != self._config["dim"]:
                continue
            for key, vector in zip(keys, vectors, strict=True):
                self._vectors[bytes(key)] = vector

    def __len__(self) -> int:
        self._load()
        return len(self._vectors)

    def _write_shard(self, keys: list[bytes], vectors: np.ndarray) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        config_path = self.directory / "config.json"
        if not config_path.exists():
            config_path.write_text(json.dumps(self._config, indent=2, sort_keys=True) + "\n")
        key_array = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), DIGEST_BYTES)
        handle, temp = tempfile.mkstemp(prefix=".shard-", suffix=".npz", dir=self.directory)
        try:
            with os.fdopen(handle, "wb") as out:
                np.savez(out, keys=key_array, vectors=vectors.astype(np.float32))
            os.replace(temp, self.directory / f"shard-{uuid.uuid4().hex}.npz")
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    def embed(
        self,
        texts: Sequence[str],
        batch_size: int = 64,
        chunk_size: int = 256,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """[N, dim] float32 for ``texts``; only cache misses are encoded (in chunks, each saved at once).

        ``progress(n)`` is called with the number of texts newly encoded after each chunk.
        """
        self._load()
        digests = [text_digest(t) for t in texts]
        missing: dict[bytes, str] = {}
        for digest, text in zip(digests, texts, strict=True):
            if digest not in self._vectors and digest not in missing:
                missing[digest] = text
        pending = list(missing.items())
        for start in range(0, len(pending), chunk_size):
            chunk = pending[start : start + chunk_size]
            vectors = self._encoder.encode([text for _, text in chunk], batch_size=batch_size)
            keys = [digest for digest, _ in chunk]
            self._write_shard(keys, vectors)
            for key, vector in zip(keys, vectors, strict=True):
                self._vectors[key] = vector
            if progress is not None:
                progress(len(chunk))
        dim = int(self._config["dim"])  # type: ignore[call-overload]
        if not digests:
            return np.zeros((0, dim), dtype=np.float32)
        return np.stack([self._vectors[d] for d in digests]).astype(np.float32, copy=False)

    def count_missing(self, texts: Sequence[str]) -> int:
        self._load()
        return len({text_digest(t) for t in texts} - set(self._vectors))
