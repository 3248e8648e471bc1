"""Frozen, validated settings for the sidecar, built from a YAML file plus environment overrides.

Owns the schema (one frozen dataclass per concern, enum-valued keys typed as ``StrEnum``s, lists as
tuples), defaults, parsing and validation; nothing else. Each section validates itself (its ``check``
method, next to its fields); ``validate`` runs every section's. ``load_settings(path, env)`` is pure given
its inputs and raises ``ConfigError`` naming the dotted key (``batching.max_wait_ms``) before any port
binds. The Helm chart's JSON schema is derived from these dataclasses (``helm/generate_docs.py``).
Secrets are never stored here: settings hold the *name* of an environment variable or a file path, and
the value is read where it is used.

Environment overrides: ``BARP__<SECTION>__<KEY>=value`` (double underscores, case-insensitive), parsed
as a YAML scalar, e.g. ``BARP__SERVER__PORT=6000`` or ``BARP__BATCHING__MAX_WAIT_MS=1.5``. A list setting
takes a YAML list or a comma-separated string (``BARP__ROUTING__DISABLED_MODELS=a,b``).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

import yaml

from barp_sidecar.broker.settings import EventsSettings
from barp_sidecar.domain import ExplorationMode
from barp_sidecar.errors import ConfigError

ENV_PREFIX = "BARP__"


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class ExpiryAction(StrEnum):
    """What happens to a pending decision whose outcome never arrives."""

    DROP = "drop"
    DEFAULT_QUALITY = "default_quality"


class EncoderBackend(StrEnum):
    """Which runtime computes the encoder (policy.backends resolves AUTO)."""

    AUTO = "auto"
    TORCH = "torch"
    ONNX = "onnx"
    ONNX_INT8 = "onnx-int8"
    OPENVINO = "openvino"


class RoutingTextMode(StrEnum):
    """Which text of a conversation Complete routes on."""

    LAST_USER = "last_user"
    CONVERSATION = "conversation"


def require(condition: bool, key: str, message: str) -> None:
    """Raise ConfigError(key, message) unless ``condition``: the one check helper of every section."""
    if not condition:
        raise ConfigError(key, message)


def check_port(key: str, port: int | None) -> None:
    if port is not None:
        require(0 <= port <= 65535, key, f"must be in [0, 65535], not {port}")


class TraceExporter(StrEnum):
    """Where spans go when tracing is on."""

    OTLP = "otlp"
    CONSOLE = "console"


@dataclass(frozen=True)
class ServerSettings:
    """The Router gRPC endpoint."""

    # Bind address. Loopback by default: a sidecar serves its own pod. Use 0.0.0.0 for standalone mode.
    host: str = "127.0.0.1"
    # 0 = pick a free port and log it.
    port: int = 50051
    # Seconds in-flight calls get to finish after SIGTERM before they are cancelled.
    grace_s: float = 10.0
    # Largest accepted prompt (UTF-8 bytes); larger -> INVALID_ARGUMENT.
    max_prompt_bytes: int = 1 << 20
    # Largest gRPC message accepted (bytes); must exceed max_prompt_bytes.
    max_message_bytes: int = 4 << 20
    # TLS: server certificate and key (PEM files). Both or neither.
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    # mTLS: CA bundle that client certificates must chain to (requires tls_cert_file).
    tls_client_ca_file: str | None = None
    # Extra plaintext listener serving only grpc.health.v1 (None = off). Kubernetes' gRPC probes reach
    # the pod IP without TLS, so they cannot probe a loopback or TLS Router port: the Helm chart sets it.
    health_port: int | None = None
    health_host: str = "0.0.0.0"

    def check(self) -> None:
        check_port("server.port", self.port)
        check_port("server.health_port", self.health_port)
        require(
            self.health_port in (None, 0) or self.health_port != self.port,
            "server.health_port",
            "must differ from server.port",
        )
        require(self.grace_s >= 0, "server.grace_s", "must be >= 0")
        require(self.max_prompt_bytes > 0, "server.max_prompt_bytes", "must be > 0")
        require(
            self.max_message_bytes > self.max_prompt_bytes,
            "server.max_message_bytes",
            "must exceed server.max_prompt_bytes",
        )
        require(
            (self.tls_cert_file is None) == (self.tls_key_file is None),
            "server.tls_key_file",
            "tls_cert_file and tls_key_file go together",
        )
        require(
            self.tls_client_ca_file is None or self.tls_cert_file is not None,
            "server.tls_client_ca_file",
            "mTLS needs server.tls_cert_file and server.tls_key_file",
        )


@dataclass(frozen=True)
class MetricsSettings:
    """Prometheus exposition over HTTP (``/metrics``)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    # 0 = pick a free port and log it.
    port: int = 9464

    def check(self) -> None:
        check_port("metrics.port", self.port)


@dataclass(frozen=True)
class HttpSettings:
    """The OpenAI-compatible HTTP API (/v1/chat/completions, /v1/models, /v1/feedback); docs/openai-api.md."""

    enabled: bool = False
    # Loopback by default, like the Router port. Bound beyond it, set api_key_sha256 to require keys.
    host: str = "127.0.0.1"
    # 0 = pick a free port and log it (http_port in server_started).
    port: int = 8080
    # The model name that means "let the router choose" (listed by /v1/models next to the catalog's models).
    routed_model: str = "barp-auto"
    # Comma-separated SHA-256 hex digests of the bearer keys callers may send ("" = no key required).
    api_key_sha256: str = ""
    # Largest accepted request body (bytes); larger -> HTTP 413.
    max_body_bytes: int = 4 << 20

    def api_key_digests(self) -> frozenset[str]:
        return frozenset(d.strip().lower() for d in self.api_key_sha256.split(",") if d.strip())

    def check(self) -> None:
        check_port("http.port", self.port)
        require(bool(self.routed_model.strip()), "http.routed_model", "must not be empty")
        require(self.max_body_bytes >= 1024, "http.max_body_bytes", "must be >= 1024")
        for digest in self.api_key_digests():
            require(
                len(digest) == 64 and all(c in "0123456789abcdef" for c in digest),
                "http.api_key_sha256",
                "must be comma-separated SHA-256 hex digests (64 hex characters each)",
            )


@dataclass(frozen=True)
class TracingSettings:
    """OpenTelemetry traces (docs/tracing.md). Off by default: nothing is recorded or exported."""

    # Record spans and export them (false: nothing is recorded or exported).
    enabled: bool = False
    # "otlp" (OTLP/gRPC; needs the barp-sidecar[otlp] extra) or "console" (JSON spans on stdout).
    exporter: TraceExporter = TraceExporter.OTLP
    # OTLP/gRPC collector; http:// = plaintext, https:// = TLS.
    otlp_endpoint: str = "http://127.0.0.1:4317"
    # The service.name resource attribute.
    service_name: str = "barp-sidecar"
    # Fraction of new traces recorded; a caller's sampled traceparent is always followed.
    sample_ratio: float = 1.0

    def check(self) -> None:
        """Also the trainer's ``tracing`` section (same keys)."""
        require(
            0 <= self.sample_ratio <= 1, "tracing.sample_ratio", f"must be in [0, 1], not {self.sample_ratio}"
        )
        require(
            self.otlp_endpoint.startswith(("http://", "https://")),
            "tracing.otlp_endpoint",
            "must be an http:// or https:// URL",
        )
        require(bool(self.service_name), "tracing.service_name", "must not be empty")


@dataclass(frozen=True)
class LoggingSettings:
    level: LogLevel = LogLevel.INFO
    # Prompts are personal data: they are never logged unless this is true.
    log_prompts: bool = False

    def check(self) -> None:
        """The level is checked by its type (LogLevel)."""


@dataclass(frozen=True)
class PolicySettings:
    """Which policy serves at start and where the encoder weights come from."""

    # Checkpoint store (v{N}/ dirs + LATEST) or one checkpoint dir. None = the shipped RouterBench policy.
    checkpoint_dir: str | None = None
    # Encoder weights: "builtin:all-MiniLM-L6-v2" (shipped files), a sentence-transformers name or a path.
    # Truncation and max_seq_length always come from the checkpoint manifest (a policy is tied to them).
    encoder_model: str = "builtin:all-MiniLM-L6-v2"
    # "auto" = CUDA with half precision when present, else CPU float32.
    device: str = "auto"
    # Intra-op threads of the encoder on CPU, torch or ONNX Runtime (0 = the runtime's default).
    cpu_threads: int = 0

    def check(self) -> None:
        require(self.cpu_threads >= 0, "policy.cpu_threads", "must be >= 0")


@dataclass(frozen=True)
class EncoderBackendSettings:
    """Which runtime computes the encoder h(x) (docs/benchmarks.md, encoder backends)."""

    # "torch" (fp32 PyTorch); "onnx" (ONNX Runtime, a fused fp32 graph: the same function as torch);
    # "onnx-int8" (int8 weights: fastest on CPU, but it changes some decisions: the policy manifest must
    # list the int8 file's sha256); "openvino" (OpenVINO, fp32: the same function as torch). "auto" = on
    # the CPU, onnx-int8 for a policy that lists this machine's int8 file, else openvino (the shipped
    # policy lists none: 2.1-2.3x torch's throughput in the sidecar, 1.2x onnx's, same decisions); torch on
    # CUDA. The ONNX and OpenVINO backends run on the CPU only.
    backend: EncoderBackend = EncoderBackend.AUTO
    # Where ONNX and OpenVINO files are exported to on first start (sha256-verified; re-exported when
    # corrupt) or were exported at image build time. None = $XDG_CACHE_HOME/barp-sidecar/onnx (~/.cache if
    # unset).
    onnx_dir: str | None = None

    def check(self) -> None:
        # The backend is an enum (parsing rejects unknown names); the files are checked at start.
        require(self.onnx_dir is None or self.onnx_dir.strip() != "", "encoder.onnx_dir", "must not be empty")


@dataclass(frozen=True)
class BatchingSettings:
    """Dynamic micro-batching (DESIGN §5)."""

    # Most prompts per forward pass.
    max_batch_size: int = 32
    # Opt-in linger (milliseconds): how long an idle inference thread may hold the first queued prompt for a
    # full batch. 0 = continuous batching: an idle thread starts at once, arrivals mid-batch form the next.
    max_wait_ms: float = 0.0
    # Most requests admitted and not yet answered; beyond it, RESOURCE_EXHAUSTED at once.
    max_pending: int = 1024
    # Token budget of one encoder forward pass (rows × padded length): long prompts do not pad short ones.
    # 4096 lets a full batch of 32 64-token prompts run as one pass (measured best in docs/benchmarks.md).
    max_batch_tokens: int = 4096
    # Exact-match embedding cache entries (0 disables).
    embedding_cache_entries: int = 10000

    def check(self) -> None:
        require(1 <= self.max_batch_size <= 4096, "batching.max_batch_size", "must be in [1, 4096]")
        require(0 <= self.max_wait_ms <= 1000, "batching.max_wait_ms", "must be in [0, 1000]")
        require(self.max_pending >= 1, "batching.max_pending", "must be >= 1")
        require(self.max_batch_tokens >= 1, "batching.max_batch_tokens", "must be >= 1")
        require(self.embedding_cache_entries >= 0, "batching.embedding_cache_entries", "must be >= 0")


@dataclass(frozen=True)
class RoutingSettings:
    """Defaults applied when a request leaves a field unset."""

    default_quality_weight: float = 0.5
    default_exploration: ExplorationMode = ExplorationMode.GREEDY
    # Probability of a uniform allowed model under epsilon_greedy.
    epsilon: float = 0.05
    # Seed of the exploration RNG (None = from the OS).
    seed: int | None = None
    # Model names this sidecar never chooses (masked for every request), e.g. models it has no provider
    # contract for. A list (or a comma-separated string); empty = none. Each must be a model of the policy.
    disabled_models: tuple[str, ...] = ()

    def disabled_model_names(self) -> frozenset[str]:
        return frozenset(self.disabled_models)

    def check(self) -> None:
        require(0 <= self.default_quality_weight <= 1, "routing.default_quality_weight", "must be in [0, 1]")
        require(0 <= self.epsilon <= 1, "routing.epsilon", "must be in [0, 1]")
        require(all(self.disabled_models), "routing.disabled_models", "names must not be empty")


@dataclass(frozen=True)
class RewardSettings:
    """Pending decisions, the durable spool and delivery to the trainer (DESIGN §6)."""

    # How long a decision waits for ReportOutcome.
    pending_ttl_s: float = 3600.0
    # Most pending decisions held; the oldest expire first beyond it.
    pending_max_entries: int = 100_000
    # On expiry: "drop", or "default_quality" (record default_quality as the outcome).
    expiry_action: ExpiryAction = ExpiryAction.DROP
    default_quality: float = 0.0
    # Spool directory for reward events not yet acknowledged by the trainer. None = <state.dir>/spool.
    spool_dir: str | None = None
    # Disk quota of the spool; beyond it new events are refused (metric + log), never silently dropped.
    spool_max_bytes: int = 1 << 30
    # Quota while no trainer is configured (trainer.target unset): outcomes are kept for a trainer that may
    # be configured later, but not without bound; beyond it ReportOutcome answers RESOURCE_EXHAUSTED.
    spool_max_bytes_without_trainer: int = 64 << 20
    # Group fsync interval (milliseconds): events are durable at most this long after being appended.
    spool_fsync_interval_ms: float = 10.0
    # False = no pending decisions, no spool: ReportOutcome answers FAILED_PRECONDITION.
    enabled: bool = True
    # Identifies this sidecar in reward events and trainer logs; None = the host name.
    sidecar_id: str | None = None
    # How often expired pending decisions are swept (seconds).
    expiry_sweep_interval_s: float = 1.0

    def check(self) -> None:
        require(self.pending_ttl_s > 0, "rewards.pending_ttl_s", "must be > 0")
        require(self.pending_max_entries >= 1, "rewards.pending_max_entries", "must be >= 1")
        require(0 <= self.default_quality <= 1, "rewards.default_quality", "must be in [0, 1]")
        require(self.spool_max_bytes >= 1 << 16, "rewards.spool_max_bytes", "must be >= 65536")
        require(
            self.spool_max_bytes_without_trainer >= 1 << 16,
            "rewards.spool_max_bytes_without_trainer",
            "must be >= 65536",
        )
        require(self.spool_fsync_interval_ms >= 0, "rewards.spool_fsync_interval_ms", "must be >= 0")
        require(self.expiry_sweep_interval_s > 0, "rewards.expiry_sweep_interval_s", "must be > 0")
        require(
            self.sidecar_id is None or 0 < len(self.sidecar_id) <= 128,
            "rewards.sidecar_id",
            "must be 1 to 128 characters",
        )


@dataclass(frozen=True)
class TrainerClientSettings:
    """Connection to barp-trainer for reward publishing and policy updates. target None = standalone."""

    target: str | None = None
    # TLS towards the trainer: CA bundle to verify it; client cert/key for mTLS.
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    reconnect_initial_backoff_s: float = 0.5
    reconnect_max_backoff_s: float = 30.0
    # Follow Trainer.WatchPolicy and hot-swap announced versions (needs target).
    watch_policies: bool = True
    # Where checkpoints fetched with Trainer.FetchPolicy are kept (v{N}/; PinPolicy can roll back to them).
    # None = <state.dir>/policies.
    checkpoint_cache_dir: str | None = None
    # Shared-volume alternative to FetchPolicy: poll this CheckpointStore's LATEST (None = off).
    checkpoint_store_dir: str | None = None
    checkpoint_poll_interval_s: float = 2.0

    def check(self) -> None:
        require(
            (self.tls_cert_file is None) == (self.tls_key_file is None),
            "trainer.tls_key_file",
            "tls_cert_file and tls_key_file go together",
        )
        require(self.checkpoint_poll_interval_s > 0, "trainer.checkpoint_poll_interval_s", "must be > 0")
        require(self.reconnect_initial_backoff_s > 0, "trainer.reconnect_initial_backoff_s", "must be > 0")
        require(
            self.reconnect_max_backoff_s >= self.reconnect_initial_backoff_s,
            "trainer.reconnect_max_backoff_s",
            "must be >= trainer.reconnect_initial_backoff_s",
        )


@dataclass(frozen=True)
class StateSettings:
    """Where the sidecar keeps durable state (the reward spool, fetched policies) unless told otherwise."""

    # None = $XDG_STATE_HOME/barp-sidecar, else ~/.local/state/barp-sidecar (never the working directory).
    dir: str | None = None

    def check(self) -> None:
        require(self.dir is None or self.dir != "", "state.dir", "must not be empty (null = the default)")


@dataclass(frozen=True)
class AdminSettings:
    """Admin service (GetPolicy, ListPolicies, PinPolicy) on its own port."""

    enabled: bool = True
    host: str = "127.0.0.1"
    # 0 = pick a free port and log it.
    port: int = 50052
    # Name of the environment variable holding the bearer token (required when host is not loopback).
    token_env: str = "BARP_ADMIN_TOKEN"

    def check(self) -> None:
        check_port("admin.port", self.port)


@dataclass(frozen=True)
class ProvidersSettings:
    """Forwarding to LLM providers (Complete). The catalog itself is a list of model entries."""

    # Path to the model catalog YAML; None = the shipped catalog (RouterBench models, all disabled).
    catalog_file: str | None = None
    # Text that Complete routes on: "last_user" message, or the whole "conversation" (tail-truncated).
    routing_text: RoutingTextMode = RoutingTextMode.LAST_USER
    # Largest routing text taken from a conversation (UTF-8 bytes; the tail is kept): the encoder
    # truncates again to its token budget, this only bounds the work of joining long conversations.
    routing_text_max_bytes: int = 64 << 10
    # Attempts per provider for one Complete, the first included (retries only before the first token).
    max_attempts: int = 3
    # Exponential backoff between attempts: full jitter over min(max, initial * 2^(attempt-1)).
    retry_initial_backoff_ms: float = 100.0
    retry_max_backoff_ms: float = 2000.0
    # A Retry-After longer than this is not waited for: the model counts as failed and fallback starts.
    retry_after_max_s: float = 10.0
    # Consecutive failed attempts that open a provider's circuit breaker (0 disables the breaker).
    breaker_failure_threshold: int = 5
    # How long an open breaker rejects calls before letting one probe through (half-open).
    breaker_open_s: float = 30.0
    # Other allowed models tried, most probable first, after the chosen one fails (0 = no fallback).
    max_fallbacks: int = 2
    # TCP connect timeout towards a provider (seconds); the catalog's timeout_s bounds a whole attempt.
    connect_timeout_s: float = 5.0
    # Calls waiting for one provider's max_concurrency slots; beyond it that provider counts as failed.
    max_queued_per_provider: int = 1024

    def check(self) -> None:
        require(self.routing_text_max_bytes >= 64, "providers.routing_text_max_bytes", "must be >= 64")
        require(1 <= self.max_attempts <= 10, "providers.max_attempts", "must be in [1, 10]")
        require(self.retry_initial_backoff_ms >= 0, "providers.retry_initial_backoff_ms", "must be >= 0")
        require(
            self.retry_max_backoff_ms >= self.retry_initial_backoff_ms,
            "providers.retry_max_backoff_ms",
            "must be >= providers.retry_initial_backoff_ms",
        )
        require(self.retry_after_max_s >= 0, "providers.retry_after_max_s", "must be >= 0")
        require(self.breaker_failure_threshold >= 0, "providers.breaker_failure_threshold", "must be >= 0")
        require(self.breaker_open_s > 0, "providers.breaker_open_s", "must be > 0")
        require(self.max_fallbacks >= 0, "providers.max_fallbacks", "must be >= 0")
        require(self.connect_timeout_s > 0, "providers.connect_timeout_s", "must be > 0")
        require(self.max_queued_per_provider >= 0, "providers.max_queued_per_provider", "must be >= 0")


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    tracing: TracingSettings = field(default_factory=TracingSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    encoder: EncoderBackendSettings = field(default_factory=EncoderBackendSettings)
    batching: BatchingSettings = field(default_factory=BatchingSettings)
    routing: RoutingSettings = field(default_factory=RoutingSettings)
    rewards: RewardSettings = field(default_factory=RewardSettings)
    trainer: TrainerClientSettings = field(default_factory=TrainerClientSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    providers: ProvidersSettings = field(default_factory=ProvidersSettings)
    state: StateSettings = field(default_factory=StateSettings)
    # Reward-event transport: grpc (to trainer.target) or nats (barp_sidecar/broker/settings.py).
    events: EventsSettings = field(default_factory=EventsSettings)


T = TypeVar("T")


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Convert a parsed YAML/env value to the field's type or raise ConfigError naming the key."""
    args = typing.get_args(annotation)
    optional = type(None) in args
    if optional:
        annotation = next(arg for arg in args if arg is not type(None))
    if value is None:
        if optional:
            return None
        raise ConfigError(key, "must not be null")
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        allowed = [member.value for member in annotation]
        text = value.lower() if isinstance(value, str) else value
        if text not in allowed:
            raise ConfigError(key, f"must be one of {allowed}, not {value!r}")
        return annotation(text)
    if typing.get_origin(annotation) is tuple:
        # A YAML list, or a comma-separated string (the environment-variable form).
        items = (
            [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value
        )
        if not isinstance(items, list):
            raise ConfigError(key, f"must be a list, not {value!r}")
        return tuple(
            _coerce(f"{key}[{index}]", item, typing.get_args(annotation)[0])
            for index, item in enumerate(items)
        )
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, f"must be true or false, not {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"must be an integer, not {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"must be a number, not {value!r}")
        if not math.isfinite(float(value)):
            raise ConfigError(key, f"must be finite, not {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"must be a string, not {value!r}")
        return value
    raise ConfigError(key, f"unsupported setting type {annotation}")


def _build(cls: type[T], data: Mapping[str, Any], prefix: str) -> T:
    if not isinstance(data, Mapping):
        raise ConfigError(prefix, f"must be a mapping, not {type(data).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{prefix}.{unknown[0]}" if prefix else unknown[0], f"unknown key (known: {sorted(names)})"
        )
    values = {}
    for name, raw in data.items():
        key = f"{prefix}.{name}" if prefix else name
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            values[name] = _build(annotation, raw if raw is not None else {}, key)  # type: ignore[arg-type]
        else:
            values[name] = _coerce(key, raw, annotation)
    return cls(**values)


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def env_overrides(env: Mapping[str, str], prefix: str = ENV_PREFIX) -> dict[str, Any]:
    """``<prefix><SECTION>__<KEY>=value`` pairs as a nested mapping (values parsed as YAML scalars)."""
    nested: dict[str, Any] = {}
    for name, raw in env.items():
        if not name.upper().startswith(prefix):
            continue
        parts = [p.lower() for p in name[len(prefix) :].split("__")]
        if len(parts) != 2 or not all(parts):
            raise ConfigError(name, f"environment overrides look like {prefix}<SECTION>__<KEY>")
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as exc:
            raise ConfigError(name, f"unparseable value {raw!r}") from exc
        nested.setdefault(parts[0], {})[parts[1]] = value
    return nested


def read_layers(path: str | Path | None, env: Mapping[str, str], prefix: str) -> dict[str, Any]:
    """The raw settings mapping: the YAML file (optional) with ``prefix`` environment overrides on top.

    Shared by every process's settings (the sidecar's here, the trainer's) so they layer and fail alike.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError("--config", f"no such file: {path}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError("--config", f"{path} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, Mapping):
            raise ConfigError("--config", f"{path} must hold a mapping at top level")
        data = dict(loaded or {})
    return _merge(data, env_overrides(env, prefix))


def build_settings(cls: type[T], data: Mapping[str, Any]) -> T:
    """Build a (nested) frozen settings dataclass from a raw mapping; ConfigError names any bad key."""
    return _build(cls, data, "")


def validate(settings: Settings) -> Settings:
    """Every section's own checks (ranges, pairs of keys); raises ConfigError naming the key."""
    for section in dataclasses.fields(settings):
        getattr(settings, section.name).check()
    return settings


def default_state_dir(env: Mapping[str, str]) -> Path:
    """$XDG_STATE_HOME/barp-sidecar (when set and absolute), else $HOME/.local/state/barp-sidecar."""
    xdg = env.get("XDG_STATE_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "barp-sidecar"
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    return home / ".local" / "state" / "barp-sidecar"


def resolve_state_dirs(settings: Settings, env: Mapping[str, str]) -> Settings:
    """Fill ``state.dir``, ``rewards.spool_dir`` and ``trainer.checkpoint_cache_dir`` left at None."""
    state_dir = Path(settings.state.dir) if settings.state.dir else default_state_dir(env)
    return dataclasses.replace(
        settings,
        state=dataclasses.replace(settings.state, dir=str(state_dir)),
        rewards=dataclasses.replace(
            settings.rewards, spool_dir=settings.rewards.spool_dir or str(state_dir / "spool")
        ),
        trainer=dataclasses.replace(
            settings.trainer,
            checkpoint_cache_dir=settings.trainer.checkpoint_cache_dir or str(state_dir / "policies"),
        ),
    )


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Defaults <- YAML file (optional) <- environment overrides; validated; state directories resolved
    (``env`` supplies XDG_STATE_HOME / HOME for the default state directory)."""
    env = env or {}
    return resolve_state_dirs(validate(build_settings(Settings, read_layers(path, env, ENV_PREFIX))), env)
