"""The model catalog in use, and re-reading it while the sidecar runs (a model-pool change, no restart).

Owns which models a policy may name (``missing_models``: the serving registry's model check, so a policy
version with a model the catalog lacks is refused with ``catalog_missing_model`` and the old one keeps
serving) and the reload: when ``providers.catalog_file`` changes (``file_watch``), the file is parsed and
validated; providers are added for newly enabled entries (the forwarder and the callable set follow);
then the latest announced policy version is tried again at once. Changes to an entry that already has a
provider, and removals of such entries, wait for a restart (logged). A file that no longer validates is
logged and changes nothing. Without a catalog file the model list stays fixed (the registry's default,
``arm_mismatch``): there is no catalog a new model could be added to. Knows nothing about gRPC; the app
builds it and calls ``start``/``close``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence

import structlog

from barp_sidecar.errors import ConfigError
from barp_sidecar.file_watch import FileWatch
from barp_sidecar.policy.registry import PolicyRegistry
from barp_sidecar.providers.catalog import ModelCatalog, load_catalog
from barp_sidecar.providers.forwarder import Forwarder
from barp_sidecar.providers.pool import ProviderPool
from barp_sidecar.routing.completion import CompletionService

log = structlog.get_logger("barp_sidecar.catalog_reload")


class ServingCatalog:
    """The catalog every component uses; ``reload()`` applies a re-read file. ``start()`` / ``close()``."""

    def __init__(
        self,
        catalog: ModelCatalog,
        catalog_file: str | None,
        env: Mapping[str, str],
        pool: ProviderPool,
        forwarder: Forwarder,
        completion: CompletionService,
        registry: PolicyRegistry,
        after_reload: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.catalog = catalog
        self.catalog_file = catalog_file
        self.env = env
        self.pool = pool
        self.forwarder = forwarder
        self.completion = completion
        # Called after a reload that changed the catalog (the app passes the manager's retry_latest).
        self.after_reload = after_reload
        self.reloads = 0
        self.failures = 0
        if catalog_file is not None:
            registry.set_model_check(self.missing_models)
        self._watch = FileWatch(catalog_file, self.reload, name="catalog-reload") if catalog_file else None

    def missing_models(self, models: Sequence[str]) -> str | None:
        """None when the catalog has every model of ``models``; else which ones it lacks."""
        missing = self.catalog.missing(models)
        if not missing:
            return None
        return f"models {missing} are not in the catalog {self.catalog.source} (add them; it is re-read)"

    async def start(self) -> None:
        if self._watch is not None:
            await self._watch.start()

    async def close(self) -> None:
        if self._watch is not None:
            await self._watch.close()

    async def reload(self) -> bool:
        """Re-read ``catalog_file`` and apply it; False (logged, nothing changed) when it is refused."""
        assert self.catalog_file is not None
        try:
            new = await asyncio.to_thread(load_catalog, self.catalog_file)
            added = self.pool.add_providers(new, self.env)
        except ConfigError as exc:
            self.failures += 1
            log.error("catalog_reload_failed", path=self.catalog_file, key=exc.key, error=str(exc))
            return False
        providers = self.pool.entries()
        kept = [entry for model, entry in providers.items() if model not in set(new.models)]
        changed = sorted(m for m, e in providers.items() if m in set(new.models) and new.entry(m) != e)
        if kept or changed:
            log.warning(
                "catalog_change_needs_restart",
                removed_with_provider=[e.model for e in kept],
                changed=[m for m in changed if m not in added],
            )
        # The forwarder keeps the entries of providers that still exist (a removal waits for a restart).
        self.forwarder.set_catalog(ModelCatalog((*new.entries, *kept), new.source))
        self.completion.set_callable_models(frozenset(providers))
        self.catalog = new
        self.reloads += 1
        log.info("catalog_reloaded", path=self.catalog_file, models=len(new.models), providers_added=added)
        if self.after_reload is not None:
            await self.after_reload()
        return True
