"""The ``events`` settings section, shared by the sidecar and the trainer: which transport carries reward
events, and how to reach the NATS JetStream broker when it is NATS.

Owns the schema, defaults and self-validation (``check``, raising ``ConfigError`` naming the dotted key).
Secrets are never stored here: ``nats_password_env`` / ``nats_token_env`` name environment variables and
``nats_nkey_seed_file`` / ``nats_creds_file`` name files; ``nats_connection.connection_options`` reads them
before anything binds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from barp_sidecar.errors import ConfigError

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SUBJECT = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


class EventsBackend(StrEnum):
    """``grpc``: the embedded default (Trainer.PublishRewards). ``nats``: a NATS JetStream stream."""

    GRPC = "grpc"
    NATS = "nats"


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(key, message)


@dataclass(frozen=True)
class EventsSettings:
    """Reward-event transport (docs/learning.md §8). ``grpc`` needs nothing else; ``nats`` reads the rest."""

    # "grpc": events go to trainer.target over Trainer.PublishRewards (the embedded default); "nats": to a
    # JetStream stream, which the trainer reads with a durable consumer.
    backend: EventsBackend = EventsBackend.GRPC
    # NATS servers (nats:// or tls://); several = a cluster, tried in random order.
    nats_urls: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    # User name; with nats_password_env. At most one method: user+password, token, NKey seed, creds file.
    nats_user: str | None = None
    # Name of the environment variable holding the password.
    nats_password_env: str | None = None
    # Name of the environment variable holding an authentication token.
    nats_token_env: str | None = None
    # File holding a user NKey seed (SU...), e.g. a mounted Secret.
    nats_nkey_seed_file: str | None = None
    # NATS credentials file (user JWT + NKey seed), e.g. a mounted Secret.
    nats_creds_file: str | None = None
    # PEM CA bundle to verify the servers (implies TLS).
    nats_tls_ca_file: str | None = None
    # PEM client certificate for mutual TLS; with nats_tls_key_file.
    nats_tls_cert_file: str | None = None
    # PEM client key for mutual TLS.
    nats_tls_key_file: str | None = None
    # The JetStream stream of reward events (created when absent; an existing one is used as configured).
    stream: str = "BARP_EVENTS"
    # The subject sidecars publish to (the stream's only subject).
    subject: str = "barp.events.reward"
    # Malformed or foreign messages are copied here (a second stream, "<stream>_DEAD") and skipped.
    dead_letter_subject: str = "barp.events.dead"
    # Replicas of the streams and policy buckets when created (1 on a single server, 3 on a 3-node cluster).
    stream_replicas: int = 1
    # Retention by age of the streams when created (seconds).
    stream_max_age_s: float = 7 * 24 * 3600.0
    # Retention by size of the streams when created (bytes).
    stream_max_bytes: int = 4 << 30
    # JetStream drops a message whose Nats-Msg-Id (= event id) it saw within this window (seconds).
    duplicate_window_s: float = 120.0
    # The trainer's durable consumer.
    consumer: str = "barp-trainer"
    # JetStream Object Store holding every published policy version (v{N}/manifest.json, weights).
    policy_object_bucket: str = "BARP_POLICIES"
    # JetStream KV bucket whose key "latest" points at the newest version; sidecars without
    # trainer.target watch it and hot-swap.
    policy_kv_bucket: str = "BARP_POLICY"
    # Reward events per NATS message a sidecar publishes (1: one event per message, the format before
    # batch messages; more: batch messages, never over the server's max_payload). The trainer reads both.
    max_events_per_message: int = 64
    # Seconds to wait for publish acks and JetStream API calls.
    publish_timeout_s: float = 5.0
    # Seconds per connection attempt.
    connect_timeout_s: float = 2.0
    # First reconnect delay after the broker was unreachable (jittered, doubling; barp_sidecar/backoff.py).
    reconnect_initial_backoff_s: float = 0.5
    # Ceiling of the reconnect backoff.
    reconnect_max_backoff_s: float = 30.0

    def check(self) -> None:
        if self.backend is not EventsBackend.NATS:
            return
        _require(len(self.nats_urls) >= 1, "events.nats_urls", "the nats backend needs at least one URL")
        for index, url in enumerate(self.nats_urls):
            _require(
                re.match(r"^(nats|tls)://[^\s/]+:\d{1,5}$", url) is not None,
                f"events.nats_urls[{index}]",
                f"must look like nats://host:port or tls://host:port, not {url!r}",
            )
        methods = [
            key
            for key, value in (
                ("events.nats_user", self.nats_user),
                ("events.nats_token_env", self.nats_token_env),
                ("events.nats_nkey_seed_file", self.nats_nkey_seed_file),
                ("events.nats_creds_file", self.nats_creds_file),
            )
            if value is not None
        ]
        _require(
            len(methods) <= 1, methods[-1] if methods else "events", f"choose one of {methods}, not several"
        )
        _require(
            (self.nats_user is None) == (self.nats_password_env is None),
            "events.nats_password_env",
            "nats_user and nats_password_env go together",
        )
        _require(
            (self.nats_tls_cert_file is None) == (self.nats_tls_key_file is None),
            "events.nats_tls_key_file",
            "nats_tls_cert_file and nats_tls_key_file go together",
        )
        _require(_NAME.match(self.stream) is not None, "events.stream", "must be 1-64 of [A-Za-z0-9_-]")
        for key, name in (
            ("events.consumer", self.consumer),
            ("events.policy_object_bucket", self.policy_object_bucket),
            ("events.policy_kv_bucket", self.policy_kv_bucket),
        ):
            _require(_NAME.match(name) is not None, key, "must be 1-64 of [A-Za-z0-9_-]")
        for key, subject in (
            ("events.subject", self.subject),
            ("events.dead_letter_subject", self.dead_letter_subject),
        ):
            _require(
                _SUBJECT.match(subject) is not None, key, "must be dot-separated tokens without wildcards"
            )
        _require(
            self.dead_letter_subject != self.subject, "events.dead_letter_subject", "must differ from subject"
        )
        _require(1 <= self.stream_replicas <= 5, "events.stream_replicas", "must be in [1, 5]")
        _require(self.stream_max_age_s > 0, "events.stream_max_age_s", "must be > 0")
        _require(self.stream_max_bytes >= 1 << 20, "events.stream_max_bytes", "must be >= 1048576")
        _require(
            0 < self.duplicate_window_s <= self.stream_max_age_s,
            "events.duplicate_window_s",
            "must be > 0 and <= stream_max_age_s",
        )
        _require(
            1 <= self.max_events_per_message <= 4096, "events.max_events_per_message", "must be in [1, 4096]"
        )
        _require(self.publish_timeout_s > 0, "events.publish_timeout_s", "must be > 0")
        _require(self.connect_timeout_s > 0, "events.connect_timeout_s", "must be > 0")
        _require(self.reconnect_initial_backoff_s > 0, "events.reconnect_initial_backoff_s", "must be > 0")
        _require(
            self.reconnect_max_backoff_s >= self.reconnect_initial_backoff_s,
            "events.reconnect_max_backoff_s",
            "must be >= events.reconnect_initial_backoff_s",
        )

    @property
    def dead_letter_stream(self) -> str:
        return f"{self.stream}_DEAD"
