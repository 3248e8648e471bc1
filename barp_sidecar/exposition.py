"""What the sidecar's and the trainer's Prometheus registries share: a registry without ``*_created``
series, the standard process / Python platform / GC collectors and ``barp_build_info``.

Owns those standard families only; each process's own metrics live with it (``barp_sidecar/metrics.py``,
``trainer/service/metrics.py``), and both pages of names are in docs/metrics.md.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Info
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from barp_sidecar.console import package_version


class WithoutCreatedRegistry(CollectorRegistry):
    """A registry whose exposition leaves out the ``*_created`` samples (per registry, no global switch)."""

    def collect(self) -> Iterable[Metric]:
        for metric in super().collect():
            metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
            yield metric


def standard_registry() -> WithoutCreatedRegistry:
    """A new registry holding the process, platform and GC collectors and ``barp_build_info``."""
    registry = WithoutCreatedRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)  # registers nothing on interpreters without gc.get_stats
    build_info = Info("barp_build", "Version of barp-sidecar and of the Python running it", registry=registry)
    build_info.info({"version": package_version(), "python_version": platform.python_version()})
    return registry
