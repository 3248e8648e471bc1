"""Re-reading the trainer's configuration while it runs: the model pool changes without a restart.

Owns noticing a change (the file's content is polled every ``poll_interval_s``: a Kubernetes ConfigMap
update replaces the mounted file through a symlink swap, which a content check sees on every filesystem;
SIGHUP triggers a re-read at once) and handing the re-validated settings to ``apply``. A file that no
longer validates, or a pool that cannot be served, is logged (``config_reload_failed``) and changes
nothing: the running pool stays. Settings other than ``learner.arms`` take effect at the next restart
(the reload logs that). Knows nothing about learning: the app's ``apply`` calls the training loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
from collections.abc import Callable, Mapping
from pathlib import Path

import structlog

from barp_sidecar.errors import ConfigError
from barp_sidecar.tasks import cancel_and_wait
from trainer.service.settings import TrainerSettings, load_trainer_settings

log = structlog.get_logger("trainer.service.config_reload")

POLL_INTERVAL_S = 1.0


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None  # mid-swap or removed: keep the running settings, look again next time


class ConfigReloader:
    """Watches ``path`` (and SIGHUP); ``apply(previous, current)`` raises ValueError/ConfigError to refuse
    a change (``previous``: the file's last accepted settings). ``start()`` / ``close()``."""

    def __init__(
        self,
        path: str | Path,
        env: Mapping[str, str],
        apply: Callable[[TrainerSettings | None, TrainerSettings], None],
        poll_interval_s: float = POLL_INTERVAL_S,
    ) -> None:
        self.path = Path(path)
        self.env = dict(env)
        self.apply = apply
        self.poll_interval_s = poll_interval_s
        self.reloads = 0
        self.failures = 0
        self._digest: str | None = None
        self._accepted: TrainerSettings | None = None
        self._task: asyncio.Task[None] | None = None
        self._sighup = False

    async def start(self) -> None:
        self._digest = await asyncio.to_thread(_digest, self.path)
        try:
            self._accepted = await asyncio.to_thread(load_trainer_settings, self.path, self.env)
        except ConfigError:
            self._accepted = None  # the app started from overrides; compare against nothing
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
            self._sighup = True
        except (RuntimeError, ValueError, NotImplementedError):
            self._sighup = False  # not the main thread (an in-process test): the file watch still works
        self._task = loop.create_task(self._watch(), name="config-reload")

    async def close(self) -> None:
        if self._sighup:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._sighup = False
        await cancel_and_wait(self._task)
        self._task = None

    def _on_sighup(self) -> None:
        log.info("config_reload_requested", signal="SIGHUP", path=str(self.path))
        asyncio.get_running_loop().create_task(self.reload("SIGHUP"), name="config-reload-sighup")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval_s)
            digest = await asyncio.to_thread(_digest, self.path)
            if digest is not None and digest != self._digest:
                self._digest = digest
                await self.reload("file changed")

    async def reload(self, reason: str) -> bool:
        """Re-read, validate and apply the file; False (logged, nothing changed) when it is refused."""
        try:
            settings = await asyncio.to_thread(load_trainer_settings, self.path, self.env)
            self.apply(self._accepted, settings)
        except (ConfigError, ValueError) as exc:
            self.failures += 1
            log.error("config_reload_failed", path=str(self.path), reason=reason, error=str(exc))
            return False
        self._accepted = settings
        self.reloads += 1
        log.info("config_reloaded", path=str(self.path), reason=reason)
        return True
