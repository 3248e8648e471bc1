"""Re-reading the trainer's configuration while it runs: the model pool changes without a restart.

Owns when to re-read (a content change seen by ``barp_sidecar.file_watch``, which sees a Kubernetes
ConfigMap update's symlink swap; SIGHUP re-reads at once) and handing the re-validated settings to
``apply``. A file that no longer validates, or a pool that cannot be served, is logged
(``config_reload_failed``) and changes nothing: the running pool stays. Settings other than
``learner.arms`` take effect at the next restart (the reload logs that). Knows nothing about learning:
the app's ``apply`` calls the training loop.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Mapping
from pathlib import Path

import structlog

from barp_sidecar.errors import ConfigError
from barp_sidecar.file_watch import POLL_INTERVAL_S, FileWatch
from trainer.service.settings import TrainerSettings, load_trainer_settings

log = structlog.get_logger("trainer.service.config_reload")


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
        self.reloads = 0
        self.failures = 0
        self._accepted: TrainerSettings | None = None
        self._watch = FileWatch(
            self.path, lambda: self.reload("file changed"), poll_interval_s, name="config-reload"
        )
        self._sighup = False

    @property
    def poll_interval_s(self) -> float:
        return self._watch.poll_interval_s

    @poll_interval_s.setter
    def poll_interval_s(self, value: float) -> None:
        self._watch.poll_interval_s = value

    async def start(self) -> None:
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
        await self._watch.start()

    async def close(self) -> None:
        if self._sighup:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._sighup = False
        await self._watch.close()

    def _on_sighup(self) -> None:
        log.info("config_reload_requested", signal="SIGHUP", path=str(self.path))
        asyncio.get_running_loop().create_task(self.reload("SIGHUP"), name="config-reload-sighup")

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
