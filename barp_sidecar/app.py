"""``barp-sidecar serve``: the one composition root. build -> start -> wait for stop -> ordered shutdown.

Owns wiring and lifecycle only: which component is built from which settings, in which order things start
and stop. Start order: metrics HTTP -> micro-batcher (+ warm-up pass) -> reward spool recovery + outcome
recorder -> provider pool (the one aiohttp session) -> gRPC server -> OpenAI-compatible HTTP server (when
``http.enabled``) -> reward publisher, policy watchers, Admin server -> health SERVING. Shutdown order:
health NOT_SERVING -> ``server.stop(grace_s)`` and the HTTP server's close (no new requests; in-flight ones
finish) -> drain the batcher -> close the provider pool -> Admin, watchers, publisher
(short drain), spool (final fsync) -> close metrics -> flush and stop tracing.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import random
from collections.abc import Mapping
from typing import TYPE_CHECKING

import structlog

from barp_sidecar.errors import ConfigError
from barp_sidecar.log import configure_logging
from barp_sidecar.process import EXIT_CONFIG as EXIT_CONFIG
from barp_sidecar.process import config_error_exit, serve_until_signalled
from barp_sidecar.settings import Settings, load_settings, validate

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from barp_sidecar.batching.batcher import MicroBatcher
    from barp_sidecar.catalog_reload import ServingCatalog
    from barp_sidecar.http.server import OpenAIHttpServer
    from barp_sidecar.learning_wiring import LearningComponents
    from barp_sidecar.metrics import MetricsHttpServer
    from barp_sidecar.policy.device import DevicePlacement
    from barp_sidecar.policy.inference import InferenceRequest, InferenceResult, PolicyInference
    from barp_sidecar.policy.registry import PolicyRegistry
    from barp_sidecar.providers.pool import ProviderPool
    from barp_sidecar.routing.completion import CompletionService
    from barp_sidecar.routing.service import RoutingService
    from barp_sidecar.rpc.server import GrpcServer
    from barp_sidecar.tracing import Tracing

log = structlog.get_logger(__name__)

PROGRAM = "barp-sidecar serve"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML settings file (see docs/configuration.md)")
    parser.add_argument(
        "--port", type=int, help="Router gRPC port (0 = pick a free one); overrides server.port"
    )
    parser.add_argument(
        "--metrics-port", type=int, help="Prometheus HTTP port (0 = pick a free one); overrides metrics.port"
    )
    parser.add_argument(
        "--admin-port", type=int, help="Admin gRPC port (0 = pick a free one); overrides admin.port"
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
    if args.admin_port is not None:
        settings = dataclasses.replace(
            settings, admin=dataclasses.replace(settings.admin, port=args.admin_port)
        )
    return check_paths(validate(settings))


def check_paths(settings: Settings) -> Settings:
    """The files and directories the settings name exist: a typo is reported at once, naming the key,
    before torch and the policy are loaded (contents are checked later, where they are read)."""
    s = settings
    directories = {"policy.checkpoint_dir": s.policy.checkpoint_dir}
    files = {
        "providers.catalog_file": s.providers.catalog_file,
        "server.tls_cert_file": s.server.tls_cert_file,
        "server.tls_key_file": s.server.tls_key_file,
        "server.tls_client_ca_file": s.server.tls_client_ca_file,
        "trainer.tls_ca_file": s.trainer.tls_ca_file,
        "trainer.tls_cert_file": s.trainer.tls_cert_file,
        "trainer.tls_key_file": s.trainer.tls_key_file,
    }
    for key, directory in directories.items():
        if directory is not None and not os.path.isdir(directory):
            raise ConfigError(key, f"no such directory: {directory}")
    for key, file in files.items():
        if file is not None and not os.path.isfile(file):
            raise ConfigError(key, f"no such file: {file}")
    return settings


def select_placement(settings: Settings) -> DevicePlacement:
    import torch

    from barp_sidecar.policy.device import select_device

    return select_device(settings.policy.device, torch.cuda.is_available())


class SidecarApp:
    """One sidecar: everything built from ``Settings`` by ``build``, started and closed in order."""

    def __init__(self, settings: Settings) -> None:
        from barp_sidecar.metrics import SidecarMetrics

        self.settings = settings
        self.metrics = SidecarMetrics()
        self.tracing: Tracing | None = None  # built by ``build``
        self.placement: DevicePlacement | None = None
        self.registry: PolicyRegistry | None = None
        self.inference: PolicyInference | None = None
        self.batcher: MicroBatcher[InferenceRequest, InferenceResult] | None = None
        self.routing: RoutingService | None = None
        self.provider_pool: ProviderPool | None = None
        self.completion: CompletionService | None = None
        self.catalog: ServingCatalog | None = None
        self.grpc: GrpcServer | None = None
        self.http: OpenAIHttpServer | None = None
        self.http_port: int | None = None
        self.metrics_http: MetricsHttpServer | None = None
        self.learning: LearningComponents | None = None
        self.admin_port: int | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._stop = asyncio.Event()
        self._started = False

    @classmethod
    def build(
        cls,
        settings: Settings,
        env: Mapping[str, str] | None = None,
        span_exporter: SpanExporter | None = None,
    ) -> SidecarApp:
        """Load the policy and encoder and wire every component; binds nothing. Raises ConfigError.

        ``env`` is where secrets are read from: provider API keys, trainer/admin tokens (the process
        environment when None). ``span_exporter`` replaces the configured trace exporter (tests).
        """
        # Imported here, not at module level: `serve` parses arguments and validates settings (and
        # reports a bad one) before paying for torch and the components (docs/benchmarks.md, start-up).
        import numpy as np

        from barp_sidecar.batching.batcher import MicroBatcher
        from barp_sidecar.catalog_reload import ServingCatalog
        from barp_sidecar.gen.barp.v1 import router_pb2_grpc
        from barp_sidecar.learning_wiring import LearningComponents
        from barp_sidecar.metrics import MetricsHttpServer
        from barp_sidecar.policy.backends import encoder_backend_identity
        from barp_sidecar.policy.embedding_cache import EmbeddingCache
        from barp_sidecar.policy.inference import PolicyInference
        from barp_sidecar.policy.loading import load_encoder, load_startup_policy
        from barp_sidecar.policy.registry import PolicyRegistry
        from barp_sidecar.providers.catalog import catalog_for_policy
        from barp_sidecar.providers.forwarder import Forwarder
        from barp_sidecar.providers.metrics import ProviderMetrics
        from barp_sidecar.providers.pool import ProviderPool
        from barp_sidecar.routing.completion import CompletionService
        from barp_sidecar.routing.service import RoutingService
        from barp_sidecar.rpc.server import ROUTER_SERVICE, GrpcServer, Service
        from barp_sidecar.rpc.servicer import RouterServicer
        from barp_sidecar.rpc.tracing_interceptor import TracingInterceptor
        from barp_sidecar.tracing import Tracing

        app = cls(settings)
        s = settings
        app.tracing = Tracing.from_settings(s.tracing, exporter=span_exporter)
        # None when tracing is off: components then skip span bookkeeping entirely.
        tracer = app.tracing.tracer if app.tracing.enabled else None
        app.placement = select_placement(s)
        policy = load_startup_policy(s.policy)
        encoder = load_encoder(policy.manifest.encoder, s.policy, app.placement, s.encoder)
        if s.policy.cpu_threads > 0:
            import torch

            torch.set_num_threads(s.policy.cpu_threads)
        app.registry = registry = PolicyRegistry(policy, encoder_backend_identity(encoder))
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
        unknown = sorted(disabled - set(app.registry.models))
        if unknown:
            raise ConfigError(
                "routing.disabled_models",
                f"{unknown} are not models of the policy {list(app.registry.models)}",
            )
        app.learning = LearningComponents(s, app.registry, os.environ if env is None else env)
        app.learning.register_metrics(app.metrics.registry)
        recorder = app.learning.recorder
        app.routing = RoutingService(
            models=app.registry.models,
            encoder_id=app.registry.encoder_id,
            batcher=app.batcher,
            settings=s.routing,
            max_prompt_bytes=s.server.max_prompt_bytes,
            rng=np.random.default_rng(s.routing.seed),
            on_decision=recorder.remember_decision if recorder is not None else None,
            tracer=tracer,
            serving_models=lambda: registry.models,
        )
        catalog = catalog_for_policy(s.providers.catalog_file, app.registry.models)
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
            catalog,
            app.provider_pool,
            recorder,
            provider_metrics,
            s.providers.max_fallbacks,
            tracer=tracer,
        )
        app.completion = CompletionService(
            routing=app.routing,
            forwarder=forwarder,
            callable_models=frozenset(catalog.enabled_models()),
            routing_text_mode=s.providers.routing_text,
            routing_text_max_bytes=s.providers.routing_text_max_bytes,
        )
        # The catalog decides which model lists a new policy may have, and is re-read when it changes.
        app.catalog = ServingCatalog(
            catalog,
            s.providers.catalog_file,
            os.environ if env is None else env,
            app.provider_pool,
            forwarder,
            app.completion,
            registry,
            after_reload=app.learning.manager.retry_latest,
        )
        servicer = RouterServicer(
            app.routing,
            app.metrics,
            completion=app.completion,
            log_prompts=s.logging.log_prompts,
            outcomes=recorder,
        )
        app.grpc = GrpcServer(
            s.server,
            [Service(ROUTER_SERVICE, router_pb2_grpc.add_RouterServicer_to_server, servicer)],
            max_message_bytes=s.server.max_message_bytes,
            max_pending_rpcs=s.batching.max_pending,
            interceptors=(TracingInterceptor(tracer),) if tracer is not None else (),
        )
        if s.http.enabled:
            from barp_sidecar.http.server import OpenAIHttpServer

            app.http = OpenAIHttpServer(
                s.http,
                app.completion,
                app.metrics,
                outcomes=recorder,
                grace_s=s.server.grace_s,
                log_prompts=s.logging.log_prompts,
                tracer=tracer,
            )
        if s.metrics.enabled:
            app.metrics_http = MetricsHttpServer(app.metrics, s.metrics.host, s.metrics.port)
        return app

    async def start(self) -> None:
        """Bind ports and start serving; logs ``server_started`` with the bound ports."""
        from barp_sidecar.policy.inference import InferenceRequest

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
            if self.catalog is not None:
                await self.catalog.start()
            self.port = await self.grpc.start()
            self._started = True
            if self.http is not None:
                self.http_port = await self.http.start()
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
            http_port=self.http_port,
            admin_port=self.admin_port,
            policy_version=policy.version if policy else None,
            arms=len(self.registry.models) if self.registry else None,  # the published log field
            device=self.placement.device if self.placement else None,
            dtype=self.placement.dtype_name if self.placement else None,
            state_dir=self.settings.state.dir,
            spool_dir=self.settings.rewards.spool_dir if self.settings.rewards.enabled else None,
            trainer=self.settings.trainer.target,
            pid=os.getpid(),
        )
        recorder = self.learning.recorder if self.learning is not None else None
        if recorder is not None and not recorder.trainer_attached:
            log.warning(
                "outcomes_kept_without_trainer",
                spool_max_bytes=self.settings.rewards.spool_max_bytes_without_trainer,
                hint="set trainer.target (or events.backend: nats) to learn from ReportOutcome; until then "
                "outcomes wait in the spool",
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
            await asyncio.gather(
                self.grpc.stop(grace_s), self.http.close() if self.http else asyncio.sleep(0)
            )
        elif self.http is not None:
            await self.http.close()
        self._started = False
        if self.batcher is not None:
            await self.batcher.close(timeout_s=grace_s)
        if self.catalog is not None:
            await self.catalog.close()
        if self.provider_pool is not None:
            # After the server stopped: no Complete is in flight any more.
            await self.provider_pool.close()
        if self.learning is not None:
            await self.learning.close()
        if self.metrics_http is not None:
            self.metrics_http.close()
        # Last: spans of the shutdown itself are exported too.
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.close)
        log.info("server_stopped")

    async def __aenter__(self) -> SidecarApp:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args, os.environ)
    except ConfigError as error:
        return config_error_exit(PROGRAM, error)
    configure_logging(settings.logging.level)
    try:
        app = SidecarApp.build(settings, env=os.environ)
    except ConfigError as error:
        return config_error_exit(PROGRAM, error)
    return asyncio.run(serve_until_signalled(app, PROGRAM))
