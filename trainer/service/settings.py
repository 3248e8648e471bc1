"""Frozen, validated settings of the trainer process, built from a YAML file plus environment overrides.

Owns the schema, defaults and validation; nothing else. Same conventions as the sidecar's settings:
``load_trainer_settings(path, env)`` is pure and raises ``ConfigError`` naming the dotted key before any
port binds. Environment overrides: ``BARP_TRAINER__<SECTION>__<KEY>=value`` (parsed as a YAML scalar).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from barp_sidecar.broker.settings import EventsBackend, EventsSettings
from barp_sidecar.errors import ConfigError
from barp_sidecar.settings import TracingSettings, build_settings, read_layers

ENV_PREFIX = "BARP_TRAINER__"
INITIAL_POLICIES = ("builtin", "cold", "latest_or_builtin", "latest_or_cold")
ARCHITECTURE_KINDS = ("barp", "reward_model")
EXPLORATION_SHAPES = ("boltzmann", "inverse_gap")


@dataclass(frozen=True)
class TrainerServerSettings:
    """The Trainer gRPC endpoint (PublishRewards, WatchPolicy, FetchPolicy, health, reflection)."""

    # Bind address: 0.0.0.0 when sidecars in other pods connect (then use TLS).
    host: str = "127.0.0.1"
    # 0 = pick a free port; the bound port is logged and written to data_dir/PORT.
    port: int = 50061
    # Seconds in-flight calls (acks, fetches) get to finish after SIGTERM.
    grace_s: float = 5.0
    # TLS: server certificate (PEM). Set together with tls_key_file to serve TLS.
    tls_cert_file: str | None = None
    # TLS: private key of the certificate (PEM).
    tls_key_file: str | None = None
    # mTLS: CA bundle client certificates must chain to (needs tls_cert_file).
    tls_client_ca_file: str | None = None
    # Extra plaintext listener serving only grpc.health.v1 (None = off): Kubernetes' gRPC probes reach the
    # pod IP without TLS, so they cannot probe a TLS port. The Helm chart sets it.
    health_port: int | None = None
    # Bind address of that health-only listener.
    health_host: str = "0.0.0.0"


@dataclass(frozen=True)
class StorageSettings:
    """Where the event log and the checkpoint store live."""

    # data_dir/events/ (log segments) and data_dir/checkpoints/ (v{N}/ + LATEST).
    data_dir: str = "./barp-trainer-data"
    # A log segment is sealed when it reaches this size.
    segment_max_bytes: int = 16 << 20
    # Retention: sealed segments are deleted when the log exceeds this size or they are older than this.
    # De-duplication remembers only the ids of retained events.
    retention_max_bytes: int = 4 << 30
    # ... and sealed segments older than this many seconds are deleted.
    retention_max_age_s: float = 7 * 24 * 3600.0


@dataclass(frozen=True)
class LearnerSettings:
    """Online importance-weighted REINFORCE (DESIGN §6)."""

    # "latest_or_builtin": resume from data_dir/checkpoints LATEST, else the shipped RouterBench policy.
    # "cold": a fresh network whose outputs start uniform (needs arms + encoder below). "builtin": shipped.
    initial_policy: str = "latest_or_builtin"
    # The model pool: arm names in order (a YAML list, or "a,b,c" in the environment). Needed for a cold
    # start; when set on a running trainer, editing it changes the pool without a restart (the config file
    # is re-read on change and on SIGHUP; docs/learning.md "Changing the model pool"). Empty = keep the
    # starting policy's models.
    arms: tuple[str, ...] = ()
    # For a cold start: the encoder id the sidecars embed prompts with (recorded in every checkpoint).
    encoder_id: str = "sentence-transformers/all-MiniLM-L6-v2"
    # For a cold start: the embedding dimension.
    encoder_dim: int = 384
    # For a cold start: tokens per prompt the encoder keeps (including [CLS]/[SEP]).
    encoder_max_seq_length: int = 256
    # For a cold start: which tokens a long prompt keeps: head, tail or head_tail.
    encoder_truncation: str = "tail"
    # τ in USD; None = from the starting manifest (a cold start then requires it).
    tau_usd: float | None = None
    # Adam learning rate.
    learning_rate: float = 1e-3
    # Events per gradient step.
    batch_size: int = 64
    # Entropy bonus coefficient β (keeps exploring).
    entropy_coef: float = 0.01
    # Importance weights π/μ are clipped to [0, this].
    max_importance_weight: float = 5.0
    # L2 penalty on the logits (keeps π out of saturation, where off-policy learning stalls; the demo uses
    # 1e-3; it slows learning on easy problems, hence off by default).
    logit_l2: float = 0.0
    # Gradient-norm clip per step.
    max_grad_norm: float = 1.0
    # Extra preferences w' per event (preference augmentation); 0 disables it.
    augment_preferences: int = 4
    # Extra gradient steps on random batches of recent events after each new batch (experience replay;
    # valid off-policy because every event carries its logging propensity). 0 = on-line only.
    replay_steps: int = 2
    # Most recent training events kept for replay.
    replay_buffer_events: int = 20000
    # One event in this many is held out from training for the evaluation gate (by event-id hash).
    holdout_every: int = 10
    # Most recent held-out events kept for the gate.
    holdout_max_events: int = 5000
    # Seed of the learner (preference augmentation, replay sampling): same events, same policy.
    seed: int = 0
    # Network kind of a cold start: "reward_model" (per-model quality/cost regression, closed-form ridge
    # updates, docs/learning.md §4) or "barp" (the paper's network, trained by REINFORCE). A start from a
    # checkpoint keeps that checkpoint's kind.
    architecture_kind: str = "reward_model"
    # reward_model: ridge penalty on the embedding weights of each model's quality and cost regression
    # (its own deviation from the shared slopes; with region intercepts a model's level per kind of prompt
    # comes from its intercepts, so its slopes are held close to the shared ones).
    ridge_lambda: float = 300.0
    # reward_model: prior mean quality of a model nobody has tried yet (1 = optimism: it gets tried).
    prior_quality: float = 1.0
    # reward_model: how many events of evidence that prior is worth.
    prior_events: float = 1.0
    # reward_model: how π spreads over the predicted rewards r̂ ("inverse_gap": SquareCB's
    # π_a = 1/(K + s·(r̂* − r̂_a)); "boltzmann": π ∝ exp(s·r̂)). The greedy choice is argmax r̂ either way.
    exploration_shape: str = "inverse_gap"
    # reward_model: s = this × √(1 + events/models), so π sharpens as evidence accumulates.
    exploration_scale: float = 60.0
    # reward_model: regress on the top this-many principal directions of the embeddings seen so far
    # (0 = the whole embedding); fewer parameters per model separate the models with fewer events.
    projection_dim: int = 32
    # reward_model: penalty on the slopes all models share (a population term every model's regression
    # adds its own deviation to; 0 = independent per-model regressions).
    shared_ridge_lambda: float = 300.0
    # reward_model with inverse_gap, cold start: 0 = off; C >= 1 = C prompt regions (k-means centroids of
    # the first region_warmup_events embeddings, stored in the policy) with an optimism bonus per (region,
    # model) = exploration_bonus / √(1 + its events there) that narrows its gap to the best model, so a model
    # rarely tried on one kind of prompt keeps being explored there. Only with exploration_shape
    # inverse_gap (ignored for boltzmann). A start from a checkpoint keeps the checkpoint's regions.
    exploration_regions: int = 3
    # reward_model: the optimism bonus of a model untried in a region (reward units; see exploration_regions).
    exploration_bonus: float = 0.2
    # reward_model: events whose embeddings the region centroids are fitted on (then fixed).
    region_warmup_events: int = 200
    # reward_model with exploration_regions, cold start: > 0 = each model also fits one intercept per region
    # (the region's one-hot next to the embedding; served from the same centroids) with this ridge penalty,
    # so its level on a kind of prompt comes from all its events there; 0 = off.
    region_intercept_lambda: float = 30.0
    # Pool changes (learner.arms edited while running): a model new to the pool is served this share of
    # the traffic (forced exploration on every kind of prompt, never the greedy choice) ...
    new_model_share: float = 0.3
    # ... until it has this many events; then it competes like every other model.
    new_model_min_events: int = 600
    # A retired model is masked at once and dropped from the arm list after this many more training events.
    retire_after_events: int = 500


@dataclass(frozen=True)
class PublishSettings:
    """When a candidate is evaluated and published."""

    # Evaluate a candidate after this many new training events ...
    every_events: int = 1000
    # ... or sooner while the learner is young: after max(min_every_events, every_fraction × events
    # trained) new events, never more than every_events (from a cold start: every 100 events until 1,000
    # are trained, then whenever the data grew by 10%). 0 = off (a fixed every_events cadence).
    min_every_events: int = 100
    # Growth of the trained events that triggers an early evaluation (see min_every_events).
    every_fraction: float = 0.1
    # ... or this many seconds after the last evaluation, whichever comes first (if any new events).
    every_s: float = 60.0
    # Publish only if V(candidate) >= V(current) - margin (reward units; V: the gate's off-policy estimate,
    # doubly robust for reward_model candidates, SNIPS for barp ones).
    gate_margin: float = 0.01
    # No publication before this many held-out events exist (the estimate would be noise).
    gate_min_holdout_events: int = 20
    # Winner's curse: held-out events that chose the serving version never defend it. Once this many
    # held-out events have arrived since the serving version was published, the gate compares on those
    # alone (until then on the whole held-out slice). 0 = always the whole slice.
    gate_fresh_holdout_events: int = 0
    # Bytes per FetchPolicy chunk.
    chunk_bytes: int = 1 << 20


@dataclass(frozen=True)
class TrainerMetricsSettings:
    """Prometheus exposition over HTTP (``/metrics``)."""

    # Serve /metrics over HTTP.
    enabled: bool = True
    # Bind address (0.0.0.0 to let Prometheus scrape the pod IP).
    host: str = "127.0.0.1"
    # 0 = pick a free port.
    port: int = 9465


@dataclass(frozen=True)
class TrainerLoggingSettings:
    """JSON log lines on stderr."""

    # debug, info, warning or error.
    level: str = "info"


@dataclass(frozen=True)
class TrainerTracingSettings(TracingSettings):
    """OpenTelemetry spans of ingestion and publishing (docs/tracing.md); off by default."""

    service_name: str = "barp-trainer"


@dataclass(frozen=True)
class FailoverSettings:
    """Several trainer replicas, one active through a lease in JetStream KV (docs/learning.md §10)."""

    # Run as one of several replicas: only the lease holder trains and publishes (needs events.backend
    # nats); the others ingest into their own log and take over when the lease expires.
    enabled: bool = False
    # This replica's name in the lease and in its durable consumer (empty = the host name, a pod's name).
    replica_id: str = ""
    # JetStream KV bucket holding the lease (created with max age = lease_ttl_s when absent).
    lease_bucket: str = "BARP_TRAINER_LEASE"
    # Seconds the lease outlives its last renewal: a standby takes over about this long after the active
    # replica died (renewed every lease_ttl_s / 4).
    lease_ttl_s: float = 6.0
    # Seconds a new active replica waits for the broker (the download of the latest version, retried
    # through a JetStream leader election) and for its own log to hold that version's last event.
    resume_wait_s: float = 60.0


@dataclass(frozen=True)
class TrainerSettings:
    server: TrainerServerSettings = field(default_factory=TrainerServerSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    learner: LearnerSettings = field(default_factory=LearnerSettings)
    publish: PublishSettings = field(default_factory=PublishSettings)
    metrics: TrainerMetricsSettings = field(default_factory=TrainerMetricsSettings)
    logging: TrainerLoggingSettings = field(default_factory=TrainerLoggingSettings)
    tracing: TrainerTracingSettings = field(default_factory=TrainerTracingSettings)
    # Where reward events come from besides PublishRewards: events.backend nats = a durable JetStream
    # consumer (the same section as the sidecar's, barp_sidecar/broker/settings.py).
    events: EventsSettings = field(default_factory=EventsSettings)
    failover: FailoverSettings = field(default_factory=FailoverSettings)

    @property
    def events_dir(self) -> Path:
        return Path(self.storage.data_dir) / "events"

    @property
    def checkpoints_dir(self) -> Path:
        return Path(self.storage.data_dir) / "checkpoints"


def validate(settings: TrainerSettings) -> TrainerSettings:
    def check(condition: bool, key: str, message: str) -> None:
        if not condition:
            raise ConfigError(key, message)

    s = settings
    s.tracing.check()
    check(0 <= s.server.port <= 65535, "server.port", f"must be in [0, 65535], not {s.server.port}")
    check(0 <= s.metrics.port <= 65535, "metrics.port", f"must be in [0, 65535], not {s.metrics.port}")
    if s.server.health_port is not None:
        check(
            0 <= s.server.health_port <= 65535,
            "server.health_port",
            f"must be in [0, 65535], not {s.server.health_port}",
        )
        check(
            s.server.health_port == 0 or s.server.health_port != s.server.port,
            "server.health_port",
            "must differ from server.port",
        )
    check(s.server.grace_s >= 0, "server.grace_s", "must be >= 0")
    check(
        (s.server.tls_cert_file is None) == (s.server.tls_key_file is None),
        "server.tls_key_file",
        "tls_cert_file and tls_key_file go together",
    )
    check(
        s.server.tls_client_ca_file is None or s.server.tls_cert_file is not None,
        "server.tls_client_ca_file",
        "mTLS needs server.tls_cert_file and server.tls_key_file",
    )
    check(bool(s.storage.data_dir), "storage.data_dir", "is required")
    check(s.storage.segment_max_bytes >= 1 << 16, "storage.segment_max_bytes", "must be >= 65536")
    check(
        s.storage.retention_max_bytes >= s.storage.segment_max_bytes,
        "storage.retention_max_bytes",
        "must be >= storage.segment_max_bytes",
    )
    check(s.storage.retention_max_age_s > 0, "storage.retention_max_age_s", "must be > 0")
    le = s.learner
    check(
        le.initial_policy in INITIAL_POLICIES, "learner.initial_policy", f"must be one of {INITIAL_POLICIES}"
    )
    if le.initial_policy in ("cold", "latest_or_cold"):
        check(len(le.arms) >= 1, "learner.arms", "a cold start needs the arm names")
        check(len(set(le.arms)) == len(le.arms), "learner.arms", "must be unique")
        check(le.tau_usd is not None, "learner.tau_usd", "a cold start needs tau_usd")
    check(le.tau_usd is None or le.tau_usd > 0, "learner.tau_usd", "must be > 0")
    check(le.encoder_dim >= 1, "learner.encoder_dim", "must be >= 1")
    check(le.encoder_truncation in ("head", "tail", "head_tail"), "learner.encoder_truncation", "bad value")
    check(
        le.architecture_kind in ARCHITECTURE_KINDS,
        "learner.architecture_kind",
        f"must be one of {ARCHITECTURE_KINDS}",
    )
    check(
        le.exploration_shape in EXPLORATION_SHAPES,
        "learner.exploration_shape",
        f"must be one of {EXPLORATION_SHAPES}",
    )
    check(le.projection_dim >= 0, "learner.projection_dim", "must be >= 0")
    check(le.ridge_lambda > 0, "learner.ridge_lambda", "must be > 0")
    check(le.shared_ridge_lambda >= 0, "learner.shared_ridge_lambda", "must be >= 0")
    check(0 <= le.prior_quality <= 1, "learner.prior_quality", "must be in [0, 1]")
    check(le.prior_events > 0, "learner.prior_events", "must be > 0")
    check(le.exploration_scale > 0, "learner.exploration_scale", "must be > 0")
    check(0 <= le.exploration_regions <= 64, "learner.exploration_regions", "must be in [0, 64]")
    check(le.exploration_bonus >= 0, "learner.exploration_bonus", "must be >= 0")
    check(le.region_warmup_events >= 1, "learner.region_warmup_events", "must be >= 1")
    check(le.region_intercept_lambda >= 0, "learner.region_intercept_lambda", "must be >= 0")
    check(0 < le.new_model_share < 0.5, "learner.new_model_share", "must be in (0, 0.5)")
    check(le.new_model_min_events >= 1, "learner.new_model_min_events", "must be >= 1")
    check(le.retire_after_events >= 0, "learner.retire_after_events", "must be >= 0")
    check(le.learning_rate > 0, "learner.learning_rate", "must be > 0")
    check(le.batch_size >= 1, "learner.batch_size", "must be >= 1")
    check(le.entropy_coef >= 0, "learner.entropy_coef", "must be >= 0")
    check(le.max_importance_weight >= 1, "learner.max_importance_weight", "must be >= 1")
    check(0 <= le.augment_preferences <= 64, "learner.augment_preferences", "must be in [0, 64]")
    check(le.logit_l2 >= 0, "learner.logit_l2", "must be >= 0")
    check(le.max_grad_norm > 0, "learner.max_grad_norm", "must be > 0")
    check(0 <= le.replay_steps <= 16, "learner.replay_steps", "must be in [0, 16]")
    check(le.replay_buffer_events >= le.batch_size, "learner.replay_buffer_events", "must be >= batch_size")
    check(le.holdout_every >= 2, "learner.holdout_every", "must be >= 2")
    check(le.holdout_max_events >= 1, "learner.holdout_max_events", "must be >= 1")
    p = s.publish
    check(p.every_events >= 1, "publish.every_events", "must be >= 1")
    check(p.min_every_events >= 0, "publish.min_every_events", "must be >= 0")
    check(p.every_fraction >= 0, "publish.every_fraction", "must be >= 0")
    check(p.every_s > 0, "publish.every_s", "must be > 0")
    check(p.gate_margin >= 0, "publish.gate_margin", "must be >= 0")
    check(p.gate_min_holdout_events >= 1, "publish.gate_min_holdout_events", "must be >= 1")
    check(p.gate_fresh_holdout_events >= 0, "publish.gate_fresh_holdout_events", "must be >= 0")
    check(1024 <= p.chunk_bytes <= 1 << 20, "publish.chunk_bytes", "must be in [1024, 1048576]")
    check(s.logging.level.lower() in ("debug", "info", "warning", "error"), "logging.level", "bad level")
    s.events.check()
    f = s.failover
    if f.enabled:
        check(
            s.events.backend is EventsBackend.NATS,
            "failover.enabled",
            "trainer replicas need events.backend: nats (the lease lives in JetStream KV)",
        )
        check(
            s.learner.initial_policy.startswith("latest_or_"),
            "learner.initial_policy",
            "replicas resume from the latest published version: use latest_or_builtin or latest_or_cold",
        )
    check(
        f.replica_id == "" or re.fullmatch(r"[A-Za-z0-9_-]{1,64}", f.replica_id) is not None,
        "failover.replica_id",
        "must be 1-64 of [A-Za-z0-9_-]",
    )
    check(
        re.fullmatch(r"[A-Za-z0-9_-]{1,64}", f.lease_bucket) is not None,
        "failover.lease_bucket",
        "must be 1-64 of [A-Za-z0-9_-]",
    )
    check(1 <= f.lease_ttl_s <= 300, "failover.lease_ttl_s", "must be in [1, 300]")
    check(f.resume_wait_s > 0, "failover.resume_wait_s", "must be > 0")
    return settings


def load_trainer_settings(
    path: str | Path | None = None, env: Mapping[str, str] | None = None
) -> TrainerSettings:
    """Defaults <- YAML file (optional) <- ``BARP_TRAINER__`` environment overrides; validated."""
    data = read_layers(path, env or {}, ENV_PREFIX)
    # Lists are not scalar settings: parse learner.arms here (a YAML list, or "a,b,c" from the environment).
    arms: tuple[str, ...] = ()
    learner = data.get("learner")
    if isinstance(learner, Mapping) and "arms" in learner:
        raw = learner["arms"]
        if isinstance(raw, str):
            raw = [a.strip() for a in raw.split(",") if a.strip()]
        if not isinstance(raw, list | tuple) or not all(isinstance(a, str) for a in raw):
            raise ConfigError("learner.arms", "must be a list of model names")
        arms = tuple(raw)
        if not arms:
            raise ConfigError(
                "learner.arms", "an empty list removes every model (leave the key out to keep the policy's)"
            )
        data["learner"] = {k: v for k, v in learner.items() if k != "arms"}
    settings = build_settings(TrainerSettings, data)
    settings = dataclasses.replace(settings, learner=dataclasses.replace(settings.learner, arms=arms))
    return validate(settings)
