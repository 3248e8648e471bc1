"""Noticing that a configuration file changed while the process runs: its content, polled on an interval.

Owns the polling (the sha256 of the file's bytes every ``poll_interval_s``: it sees an in-place rewrite and
the atomic symlink swap of a Kubernetes ConfigMap update on every filesystem, without inotify) and calling
``on_change()`` once per new content. A file that cannot be read for a moment (mid-swap, removed) is not a
change. What a change means (parse, validate, apply) is the caller's. Explicit ``start()`` / ``close()``.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path

from barp_sidecar.tasks import cancel_and_wait

POLL_INTERVAL_S = 1.0


def content_digest(path: Path) -> str | None:
    """sha256 of the file's bytes, or None when it cannot be read now."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class FileWatch:
    """Calls ``on_change()`` after the content of ``path`` changed (awaited: one call at a time)."""

    def __init__(
        self,
        path: str | Path,
        on_change: Callable[[], Awaitable[object]],
        poll_interval_s: float = POLL_INTERVAL_S,
        name: str = "file-watch",
    ) -> None:
        self.path = Path(path)
        self.on_change = on_change
        self.poll_interval_s = poll_interval_s
        self.name = name
        self._digest: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Remember the current content (no call for it) and start polling."""
        self._digest = await asyncio.to_thread(content_digest, self.path)
        self._task = asyncio.get_running_loop().create_task(self._watch(), name=self.name)

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval_s)
            digest = await asyncio.to_thread(content_digest, self.path)
            if digest is not None and digest != self._digest:
                self._digest = digest
                await self.on_change()
