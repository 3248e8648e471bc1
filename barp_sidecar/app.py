"""``barp-sidecar serve``: the one composition root. build -> start -> wait for stop -> ordered shutdown.

Owns wiring and lifecycle only: which component is built from which settings, in which order things start
and stop. Start order: metrics HTTP -> micro-batcher (+ warm-up pass) -> reward spool recovery + outcome
recorder -> provider pool (the one aiohttp session) -> gRPC server -> reward publisher, policy watchers,
Admin server -> health SERVING. Shutdown order: health NOT_SERVING -> ``server.stop(grace_s)`` (no new
RPCs; in-flight ones finish) -> drain the batcher -> close the provider pool -> Admin, watchers, publisher
(short drain), spool (final fsync) -> close metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import random
import signal
import sys
from collections.abc import Mapping

import numpy as np
import structlog

from barp_sidecar.batching.batcher import MicroBatcher
from barp_sidecar.errors import ConfigError
from barp_sidecar.learning_wiring import LearningComponents
from barp_sidecar.log import configure_logging
from barp_sidecar.metrics import MetricsHttpServer, SidecarMetrics
from barp_sidecar.policy.backends import encoder_backend_identity
from barp_sidecar.policy.device import DevicePlacement, select_device
from barp_sidecar.policy.embedding_cache import EmbeddingCache
from barp_sidecar.policy.inference import InferenceRequest, InferenceResult, PolicyInference
from barp_sidecar.policy.loading import load_encoder, load_startup_policy
from barp_sidecar.policy.registry import PolicyRegistry
from barp_sidecar.providers.catalog import catalog_for_policy
from barp_sidecar.providers.forwarder import Forwarder
from barp_sidecar.providers.metrics import ProviderMetrics
from barp_sidecar.providers.pool import ProviderPool
from barp_sidecar.routing.completion import CompletionService
from barp_sidecar.routing.service import RoutingService
from barp_sidecar.rpc.server import GrpcServer
from barp_sidecar.rpc.servicer import RouterServicer
from barp_sidecar.settings import Settings, load_settings, validate

log = structlog.get_logger(__name__)

# Exit code for invalid configuration (argparse uses 2 for bad arguments too).
EXIT_CONFIG = 2
# Exit code when a second signal forces exit before the graceful shutdown finished.
EXIT_FORCED = 130


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML settings file (see docs/configuration.md)")
    parser.add_argument(
        "--port", type=int, help="Router gRPC port (0 = pick a free one); overrides server.port"
    )
    parser.add_argument(
        "--metrics-port", type=int, help="Prometheus HTTP port (0 = pick a free one); overrides metrics.port"
    )


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    """File <- environment <- command-line flags; validated. Raises ConfigError naming the key."""
    settings = load_settings(args.config, env)
    if args.port is not None:
        settings = dataclasses.replace(settings, server=dataclasses.replace(settings.server, port=args.port))
    if args.metrics_port is not None:
        settings = dataclasses.replace(
            settings, metrics=dataclasses.replace(settings.metrics, port=args.metrics_port)
        )
    return validate(settings)


def select_placement(settings: Settings) -> DevicePlacement:
    import torch

    return select_device(settings.policy.device, torch.cuda.is_available())


class SidecarApp:
    """One sidecar: everything built from ``Settings`` by ``build``, started and closed in order."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = SidecarMetrics()
        self.placement: DevicePlacement | None = None
        self.registry: PolicyRegistry | None = None
        self.inference: PolicyInference | None = None
        self.batcher: MicroBatcher[InferenceRequest, InferenceResult] | None = None
        self.routing: RoutingService | None = None
        self.provider_pool: ProviderPool | None = None
        self.completion: CompletionService | None = None
        self.grpc: GrpcServer | None = None
        self.metrics_http: MetricsHttpServer | None = None
        self.learning: LearningComponents | None = None
        self.admin_port: int | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._stop = asyncio.Event()
        self._started = False

    @classmethod
    def build(cls, settings: Settings, env: Mapping[str, str] | None = None) -> SidecarApp:
        """Load the policy and encoder and wire every component; binds nothing. Raises ConfigError.

        ``env`` is where secrets are read from: provider API keys, trainer/admin tokens (the process
        environment when None).
        """
        app = cls(settings)
        s = settings
        app.placement = select_placement(s)
        policy = load_startup_policy(s.policy)
        encoder = load_encoder(policy.manifest.encoder, s.policy, app.placement, s.encoder)
        if s.policy.cpu_threads > 0:
            import torch

            torch.set_num_threads(s.policy.cpu_threads)
        app.registry = PolicyRegistry(policy, encoder_backend_identity(encoder))
        app.metrics.track_policy(app.registry)
        app.inference = PolicyInference(
            encoder,
            app.registry,
            app.placement,
            max_batch_tokens=s.batching.max_batch_tokens,
            cache=EmbeddingCache(s.batching.embedding_cache_entries),
            observer=app.metrics,
        )
        app.batcher = MicroBatcher(
            app.inference.run_batch,
            max_batch_size=s.batching.max_batch_size,
            max_wait_ms=s.batching.max_wait_ms,
            max_pending=s.batching.max_pending,
            observer=app.metrics,
        )
        batcher = app.batcher
        app.metrics.track_pending(lambda: batcher.pending)
        disabled = s.routing.disabled_model_names()
        unknown = sorted(disabled - set(app.registry.arms))
        if unknown:
            raise ConfigError(
                "routing.disabled_models", f"{unknown} are not models of the policy {list(app.registry.arms)}"
            )
        app.learning = LearningComponents(s, app.registry, os.environ if env is None else env)
        app.learning.register_metrics(app.metrics.registry)
        recorder = app.learning.recorder
        app.routing = RoutingService(
            arms=app.registry.arms,
            encoder_id=app.registry.encoder_id,
            batcher=app.batcher,
            settings=s.routing,
            max_prompt_bytes=s.server.max_prompt_bytes,
            rng=np.random.default_rng(s.routing.seed),
            on_decision=recorder.remember_decision if recorder is not None else None,
        )
        catalog = catalog_for_policy(s.providers.catalog_file, app.registry.arms)
        provider_metrics = ProviderMetrics(app.metrics.registry)
        app.provider_pool = ProviderPool(
            catalog,
            s.providers,
            os.environ if env is None else env,
            provider_metrics,
            rng=random.Random(s.routing.seed),
        )
        # Every completed Complete's cost goes into its pending decision (the reward path).
        forwarder = Forwarder(
            catalog, app.provider_pool, recorder, provider_metrics, s.providers.max_fallbacks
        )
        app.completion = CompletionService(
            routing=app.routing,
            forwarder=forwarder,
            callable_models=frozenset(catalog.enabled_arms()),
            routing_text_mode=s.providers.routing_text,
            routing_text_max_bytes=s.providers.routing_text_max_bytes,
        )
        servicer = RouterServicer(
            app.routing,
            app.metrics,
            completion=app.completion,
            log_prompts=s.logging.log_prompts,
            outcomes=recorder,
        )
        app.grpc = GrpcServer(s.server, servicer, max_pending_rpcs=s.batching.max_pending)
        if s.metrics.enabled:
            app.metrics_http = MetricsHttpServer(app.metrics, s.metrics.host, s.metrics.port)
        return app

    async def start(self) -> None:
        """Bind ports and start serving; logs ``server_started`` with the bound ports."""
        assert self.batcher is not None and self.grpc is not None and self.inference is not None
        try:
            if self.metrics_http is not None:
                try:
                    self.metrics_port = self.metrics_http.start()
                except OSError as exc:
                    raise ConfigError("metrics.port", f"cannot bind ({exc.strerror})") from exc
            self.batcher.start()
            inference = self.inference
            # Warm-up on the worker thread: first-call allocations happen before the first real request.
            await self.batcher.call_in_worker(lambda: inference.run_batch([InferenceRequest("warm up", 0.5)]))
            if self.learning is not None:
                await self.learning.start_recording()
            if self.provider_pool is not None:
                await self.provider_pool.start()
            self.port = await self.grpc.start()
            self._started = True
            if self.learning is not None:
                self.admin_port = await self.learning.start_background()
        except BaseException:
            await self.close()
            raise
        await self.grpc.set_serving()
        policy = self.registry.current() if self.registry else None
        log.info(
            "server_started",
            host=self.settings.server.host,
            port=self.port,
            health_port=self.grpc.health_port,
            tls=self.settings.server.tls_cert_file is not None,
            mtls=self.settings.server.tls_client_ca_file is not None,
            metrics_port=self.metrics_port,
            admin_port=self.admin_port,
            policy_version=policy.version if policy else None,
            arms=len(self.registry.arms) if self.registry else None,
            device=self.placement.device if self.placement else None,
            dtype=self.placement.dtype_name if self.placement else None,
            pid=os.getpid(),
        )

    def request_stop(self) -> None:
        self._stop.set()

    async def wait_for_stop(self) -> None:
        await self._stop.wait()

    async def close(self) -> None:
        """Ordered shutdown; safe to call more than once and after a failed start."""
        grace_s = self.settings.server.grace_s
        if self.grpc is not None and self._started:
            await self.grpc.set_not_serving()
            log.info("server_stopping", grace_s=grace_s)
            await self.grpc.stop(grace_s)
        self._started = False
        if self.batcher is not None:
            await self.batcher.close(timeout_s=grace_s)
        if self.provider_pool is not None:
            # After the server stopped: no Complete is in flight any more.
            await self.provider_pool.close()
        if self.learning is not None:
            await self.learning.close()
        if self.metrics_http is not None:
            self.metrics_http.close()
        log.info("server_stopped")

    async def __aenter__(self) -> SidecarApp:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def serve(app: SidecarApp) -> int:
    """Run until SIGTERM/SIGINT, then shut down gracefully; a second signal forces exit."""
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            log.info("shutdown_requested", signal=signal.Signals(signum).name)
            app.request_stop()
        else:
            log.warning("forced_exit", signal=signal.Signals(signum).name)
            os._exit(EXIT_FORCED)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await app.start()
    except ConfigError as error:
        log.error("startup_failed", key=error.key, error=str(error))
        print(f"barp-sidecar serve: invalid configuration: {error}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        await app.wait_for_stop()
    finally:
        await app.close()
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args, os.environ)
    except ConfigError as error:
        print(f"barp-sidecar serve: invalid configuration: {error}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.logging)
    try:
        app = SidecarApp.build(settings, env=os.environ)
    except ConfigError as error:
        print(f"barp-sidecar serve: invalid configuration: {error}", file=sys.stderr)
        return EXIT_CONFIG
    return asyncio.run(serve(app))
