"""Connecting to NATS JetStream from the ``events`` settings, and declaring the event streams.

Owns: importing the optional ``nats-py`` client (a clear ``ConfigError`` when it is missing), reading the
credentials (environment variables, files) and TLS files before anything binds (``ConfigError`` naming the
key), one connection attempt over every configured server (the callers own their reconnect loops and
backoff), telling authorization failures apart from an unreachable broker, and creating the reward-event
stream and its dead-letter stream when they do not exist. Knows nothing about what travels on them.
"""

from __future__ import annotations

import importlib
import ssl
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from barp_sidecar.broker.settings import EventsSettings
from barp_sidecar.errors import ConfigError

INSTALL_HINT = "install the optional dependency: pip install 'barp-sidecar[nats]'"


class BrokerUnavailable(Exception):
    """No configured NATS server accepted a connection (or JetStream did not answer)."""


class BrokerAuthFailed(BrokerUnavailable):
    """A server answered but refused the credentials (wrong user/password/token/NKey/creds)."""


def nats_client() -> ModuleType:
    """The ``nats`` package, or ConfigError naming ``events.backend`` when the extra is not installed."""
    try:
        return importlib.import_module("nats")
    except ModuleNotFoundError as exc:
        raise ConfigError("events.backend", f"'nats' needs nats-py: {INSTALL_HINT}") from exc


def _readable_file(key: str, path: str) -> str:
    if not Path(path).is_file():
        raise ConfigError(key, f"no such file: {path}")
    try:
        Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from exc
    return path


def _secret(key: str, variable: str, env: Mapping[str, str]) -> str:
    value = env.get(variable)
    if not value:
        raise ConfigError(key, f"environment variable {variable} is not set (or empty)")
    return value


def _tls_context(s: EventsSettings) -> ssl.SSLContext | None:
    wants_tls = s.nats_tls_ca_file is not None or s.nats_tls_cert_file is not None
    wants_tls = wants_tls or any(url.startswith("tls://") for url in s.nats_urls)
    if not wants_tls:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if s.nats_tls_ca_file is not None:
        try:
            context.load_verify_locations(
                cafile=_readable_file("events.nats_tls_ca_file", s.nats_tls_ca_file)
            )
        except ssl.SSLError as exc:
            raise ConfigError("events.nats_tls_ca_file", f"not a PEM CA bundle: {exc.reason}") from exc
    if s.nats_tls_cert_file is not None and s.nats_tls_key_file is not None:
        cert = _readable_file("events.nats_tls_cert_file", s.nats_tls_cert_file)
        key = _readable_file("events.nats_tls_key_file", s.nats_tls_key_file)
        try:
            context.load_cert_chain(cert, key)
        except ssl.SSLError as exc:
            raise ConfigError("events.nats_tls_key_file", f"certificate and key do not load: {exc}") from exc
    return context


def connection_options(s: EventsSettings, env: Mapping[str, str]) -> dict[str, Any]:
    """Keyword arguments for ``nats.connect`` (credentials read now); ConfigError naming a bad key."""
    options: dict[str, Any] = {}
    if s.nats_user is not None and s.nats_password_env is not None:
        options["user"] = s.nats_user
        options["password"] = _secret("events.nats_password_env", s.nats_password_env, env)
    if s.nats_token_env is not None:
        options["token"] = _secret("events.nats_token_env", s.nats_token_env, env)
    if s.nats_nkey_seed_file is not None or s.nats_creds_file is not None:
        try:
            importlib.import_module("nkeys")
        except ModuleNotFoundError as exc:
            key = "events.nats_nkey_seed_file" if s.nats_nkey_seed_file else "events.nats_creds_file"
            raise ConfigError(key, f"NKey authentication needs the nkeys package: {INSTALL_HINT}") from exc
    if s.nats_nkey_seed_file is not None:
        seed = Path(_readable_file("events.nats_nkey_seed_file", s.nats_nkey_seed_file)).read_text().strip()
        if not seed.startswith("SU"):
            raise ConfigError("events.nats_nkey_seed_file", "is not a user NKey seed (starts with SU)")
        options["nkeys_seed_str"] = seed
    if s.nats_creds_file is not None:
        text = Path(_readable_file("events.nats_creds_file", s.nats_creds_file)).read_text()
        if "BEGIN NATS USER JWT" not in text or "BEGIN USER NKEY SEED" not in text:
            raise ConfigError("events.nats_creds_file", "is not a NATS credentials file (JWT + seed)")
        options["user_credentials"] = s.nats_creds_file
    context = _tls_context(s)
    if context is not None:
        options["tls"] = context
    return options


class NatsConnector:
    """Connection factory built (and checked) in the composition root; ``connect`` is one attempt."""

    def __init__(self, settings: EventsSettings, env: Mapping[str, str], name: str) -> None:
        self.settings = settings
        self.name = name
        self._nats = nats_client()
        self._options = connection_options(settings, env)

    async def connect(self) -> Any:
        """A connected ``nats.aio.client.Client`` (no automatic reconnects: the caller's loop reconnects
        with its backoff), or ``BrokerAuthFailed`` / ``BrokerUnavailable``."""
        last_error: list[BaseException] = []

        async def remember(exc: BaseException) -> None:
            last_error.append(exc)

        try:
            return await self._nats.connect(
                servers=list(self.settings.nats_urls),
                name=self.name,
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0,
                connect_timeout=self.settings.connect_timeout_s,
                error_cb=remember,
                **self._options,
            )
        except Exception as exc:
            errors = [*last_error, exc]
            if any("authorization" in str(e).lower() or "authentication" in str(e).lower() for e in errors):
                raise BrokerAuthFailed(
                    "the NATS server refused the credentials (authorization violation)"
                ) from exc
            detail = next((repr(e) for e in reversed(errors) if not _is_no_servers(e)), repr(exc))
            raise BrokerUnavailable(
                f"no NATS server reachable at {list(self.settings.nats_urls)}: {detail}"
            ) from exc


def _is_no_servers(exc: BaseException) -> bool:
    return type(exc).__name__ == "NoServersError"


async def ensure_event_streams(js: Any, s: EventsSettings) -> None:
    """Create the reward-event stream and its dead-letter stream unless they exist (existing ones are
    left as their operator configured them)."""
    api = importlib.import_module("nats.js.api")
    errors = importlib.import_module("nats.js.errors")
    for name, subject in ((s.stream, s.subject), (s.dead_letter_stream, s.dead_letter_subject)):
        try:
            await js.stream_info(name)
            continue
        except errors.NotFoundError:
            pass
        config = api.StreamConfig(
            name=name,
            subjects=[subject],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            max_age=s.stream_max_age_s,
            max_bytes=s.stream_max_bytes,
            num_replicas=s.stream_replicas,
            duplicate_window=s.duplicate_window_s,
        )
        try:
            await js.add_stream(config)
        except errors.BadRequestError as exc:
            # Another process created it between our look-up and our add.
            if "already in use" not in str(exc):
                raise
