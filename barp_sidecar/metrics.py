"""Prometheus metrics of one sidecar, on a per-app CollectorRegistry, and their HTTP exposition.

Owns metric definitions and the ``/metrics`` HTTP server. Implements the batcher's ``BatchObserver`` and the
inference ``InferenceObserver`` so batching/ and policy/ need no Prometheus import. No global registry:
several apps (tests) can live in one process. Every metric is documented in docs/metrics.md (a test checks).

The registry also carries the process (CPU, memory, file descriptors), Python platform and GC collectors
and ``barp_build_info``, and leaves out the ``*_created`` series prometheus_client adds to every counter and
histogram (one more series per label set that dashboards never use): ``barp_sidecar/exposition.py``,
shared with the trainer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

from barp_sidecar.exposition import standard_registry
from barp_sidecar.policy.registry import PolicyRegistry

_LATENCY_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class SidecarMetrics:
    """Every metric the sidecar exports (names prefixed ``barp_``, plus the standard collectors')."""

    def __init__(self) -> None:
        self.registry = standard_registry()
        r = self.registry
        self.requests = Counter(
            "barp_requests",
            "Requests handled (gRPC and HTTP API), by method and status code",
            ["method", "code"],
            registry=r,
        )
        self.decisions = Counter(
            "barp_decisions", "Routing decisions, by chosen model", ["model"], registry=r
        )
        self.request_latency = Histogram(
            "barp_request_latency_seconds", "End-to-end request latency in the server, by status code",
            ["method", "code"],
            buckets=_LATENCY_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "barp_batch_size", "Requests per inference batch", buckets=_BATCH_BUCKETS, registry=r
        )
        self.queue_wait = Histogram(
            "barp_queue_wait_seconds", "Time from admission to the start of its batch",
            buckets=_LATENCY_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.inference_time = Histogram(
            "barp_inference_seconds", "Worker-thread time of one batch (encode + policy)",
            buckets=_LATENCY_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.admission_rejections = Counter(
            "barp_admission_rejections",
            "Requests refused because batching.max_pending was reached",
            registry=r,
        )
        self.deadline_expired = Counter(
            "barp_deadline_expired", "Requests whose deadline passed before they were computed", registry=r
        )
        self.cache_hits = Counter(
            "barp_embedding_cache_hits", "Prompts served from the embedding cache", registry=r
        )
        self.cache_misses = Counter(
            "barp_embedding_cache_misses", "Prompts that had to be encoded", registry=r
        )
        self.encoder_passes = Counter("barp_encoder_forward_passes", "Encoder forward passes", registry=r)
        self.nonfinite_outputs = Counter(
            "barp_policy_nonfinite_outputs",
            "Prompts whose policy output was not finite (never served), by outcome",
            ["outcome"],
            registry=r,
        )
        self.policy_version = Gauge("barp_policy_version", "Version of the policy serving now", registry=r)
        self.pending = Gauge("barp_pending_requests", "Admitted requests not yet answered", registry=r)
        self._route_ok = self.requests.labels("Route", "OK")
        self._route_latency = self.request_latency.labels("Route", "OK")

    def track_policy(self, policies: PolicyRegistry) -> None:
        """Export the registry's current version at every scrape."""
        self.policy_version.set_function(lambda: float(policies.current().version))

    def track_pending(self, pending: Callable[[], int]) -> None:
        """Export the batcher's pending count at every scrape."""
        self.pending.set_function(lambda: float(pending()))

    def rpc_done(self, method: str, code: str, latency_s: float, model: str | None = None) -> None:
        if method == "Route" and code == "OK":
            self._route_ok.inc()
            self._route_latency.observe(latency_s)
        else:
            self.requests.labels(method, code).inc()
            self.request_latency.labels(method, code).observe(latency_s)
        if model:
            self.decisions.labels(model).inc()

    # BatchObserver
    def batch_done(self, size: int, queue_waits_s: Sequence[float], run_s: float) -> None:
        self.batch_size.observe(size)
        for wait_s in queue_waits_s:
            self.queue_wait.observe(wait_s)
        self.inference_time.observe(run_s)

    def admission_rejected(self) -> None:
        self.admission_rejections.inc()

    def expired_in_queue(self) -> None:
        self.deadline_expired.inc()

    # InferenceObserver
    def inference_done(self, cache_hits: int, encoded: int, forward_passes: int, seconds: float) -> None:
        if cache_hits:
            self.cache_hits.inc(cache_hits)
        if encoded:
            self.cache_misses.inc(encoded)
        if forward_passes:
            self.encoder_passes.inc(forward_passes)

    def nonfinite_outputs_seen(self, fell_back: int, refused: int) -> None:
        if fell_back:
            self.nonfinite_outputs.labels("fell_back").inc(fell_back)
        if refused:
            self.nonfinite_outputs.labels("refused").inc(refused)


class MetricsHttpServer:
    """Serves ``registry`` at ``http://host:port/metrics`` on a background thread; explicit start/close."""

    def __init__(self, metrics: SidecarMetrics, host: str, port: int) -> None:
        self._metrics = metrics
        self._host = host
        self._port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("metrics server not started")
        return int(self._server.server_port)

    def start(self) -> int:
        """Bind and serve; returns the bound port (useful with port 0)."""
        self._server, self._thread = start_http_server(
            self._port, addr=self._host, registry=self._metrics.registry
        )
        return self.port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
