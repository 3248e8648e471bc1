"""The provider client pool: one shared aiohttp session, per-provider limits, retries, circuit breakers.

Owns the HTTP side of forwarding. ``ProviderPool.stream(model, request, deadline_s)`` calls one provider and
yields its ``StreamEvent``s as they arrive, retrying retryable failures (connect errors, timeouts, 408,
429, 5xx; honouring Retry-After) with jittered exponential backoff, but only until the first content event
(text or finish reason) was yielded: after that, a failure ends the stream with ``ProviderFailure``.
Each provider has a concurrency limit (``max_concurrency`` slots, ``max_queued_per_provider`` waiters,
beyond which ``ProviderQueueFull``) and a circuit breaker. Choosing among providers is the forwarder's job.

Lifecycle: build (reads API keys: a missing key is a ConfigError before any port binds) -> ``start()``
(creates the session inside the running loop) -> ``close()``. Cancelling the consumer cancels the
upstream request: the response is closed, so the provider sees the connection drop.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass

import aiohttp
import structlog
from opentelemetry import trace

from barp_sidecar.errors import DeadlineExceeded
from barp_sidecar.providers.adapter import Adapter, StreamProtocolError, UpstreamStreamError
from barp_sidecar.providers.api_styles import adapter_for
from barp_sidecar.providers.catalog import ApiKey, ModelCatalog, ProviderEntry
from barp_sidecar.providers.chat import ChatRequest, StreamEvent, coalesce
from barp_sidecar.providers.circuit_breaker import OPEN, CircuitBreaker
from barp_sidecar.providers.failures import (
    ProviderFailure,
    ProviderNotConfigured,
    ProviderQueueFull,
    describe_upstream_error,
    quote_upstream,
    redact,
)
from barp_sidecar.providers.metrics import ProviderMetrics
from barp_sidecar.providers.retry import RetryPolicy, is_retryable_status, parse_retry_after
from barp_sidecar.settings import ProvidersSettings

# Bytes of an error response body quoted in the failure message (after redaction).
ERROR_BODY_READ_BYTES = 4096
# Largest non-streamed JSON body accepted from a provider that ignored stream: true.
MAX_JSON_BODY_BYTES = 8 << 20
# 4xx statuses that say "this request is wrong", not "this provider is unhealthy": not counted by the breaker.
_REQUEST_SPECIFIC_STATUS = frozenset({400, 404, 409, 413, 422})


class ConcurrencyLimiter:
    """``max_concurrency`` slots and at most ``max_queued`` waiters; counts for metrics and tests."""

    def __init__(self, model: str, max_concurrency: int, max_queued: int) -> None:
        self._model = model
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._max_queued = max_queued
        self.in_flight = 0
        self.waiting = 0
        self.max_in_flight_seen = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._semaphore.locked() and self.waiting >= self._max_queued:
            raise ProviderQueueFull(self._model, self._max_queued)
        self.waiting += 1
        try:
            await self._semaphore.acquire()
        finally:
            self.waiting -= 1
        self.in_flight += 1
        self.max_in_flight_seen = max(self.max_in_flight_seen, self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= 1
            self._semaphore.release()


@dataclass
class _Provider:
    entry: ProviderEntry
    adapter: Adapter
    api_key: ApiKey | None
    limiter: ConcurrencyLimiter
    breaker: CircuitBreaker


class ProviderPool:
    def __init__(
        self,
        catalog: ModelCatalog,
        settings: ProvidersSettings,
        env: Mapping[str, str],
        metrics: ProviderMetrics,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._rng = rng or random.Random()
        self._clock = clock
        self._wall_clock = wall_clock
        self._retry = RetryPolicy(
            max_attempts=settings.max_attempts,
            initial_backoff_s=settings.retry_initial_backoff_ms / 1000.0,
            max_backoff_s=settings.retry_max_backoff_ms / 1000.0,
            retry_after_max_s=settings.retry_after_max_s,
        )
        self._providers: dict[str, _Provider] = {}
        self._keys: tuple[ApiKey, ...] = ()
        self.add_providers(catalog, env)
        self._session: aiohttp.ClientSession | None = None
        self._log = structlog.get_logger("barp.providers")

    def add_providers(self, catalog: ModelCatalog, env: Mapping[str, str]) -> list[str]:
        """Providers for the enabled entries of ``catalog`` that have none yet (a catalog reload); the
        models added. Entries that already have a provider are left as they are (until a restart). Keys
        are read first: a missing one raises ConfigError and adds nothing."""
        new = [e for e in catalog.entries if e.enabled and e.model not in self._providers]
        keys = {entry.model: entry.read_api_key(env) for entry in new}
        for entry in new:
            provider = _Provider(
                entry=entry,
                adapter=adapter_for(entry.api_style),
                api_key=keys[entry.model],
                limiter=ConcurrencyLimiter(
                    entry.model, entry.max_concurrency, self._settings.max_queued_per_provider
                ),
                breaker=CircuitBreaker(
                    self._settings.breaker_failure_threshold, self._settings.breaker_open_s, self._clock
                ),
            )
            self._providers[entry.model] = provider
            _export_gauges(self._metrics, provider)
        self._keys = tuple(p.api_key for p in self._providers.values() if p.api_key is not None)
        return [entry.model for entry in new]

    def entries(self) -> dict[str, ProviderEntry]:
        """The entry each provider was built from, by model."""
        return {model: provider.entry for model, provider in self._providers.items()}

    async def start(self) -> None:
        if self._session is not None:
            raise RuntimeError("ProviderPool already started")
        # Per-provider semaphores bound the connections; the connector only caps the total as a backstop.
        total = sum(p.entry.max_concurrency for p in self._providers.values()) or 1
        connector = aiohttp.TCPConnector(limit=total, limit_per_host=0, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._settings.connect_timeout_s),
            trust_env=False,
        )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def is_enabled(self, model: str) -> bool:
        return model in self._providers

    def limiter(self, model: str) -> ConcurrencyLimiter:
        return self._provider(model).limiter

    def breaker(self, model: str) -> CircuitBreaker:
        return self._provider(model).breaker

    @property
    def _secrets(self) -> tuple[str, ...]:
        """Key values to redact from any text shown to a caller (never log or store the result)."""
        return tuple(key.reveal() for key in self._keys)

    def _provider(self, model: str) -> _Provider:
        try:
            return self._providers[model]
        except KeyError:
            raise ProviderNotConfigured(model) from None

    async def stream(
        self, model: str, request: ChatRequest, deadline_s: float | None = None
    ) -> AsyncGenerator[StreamEvent, None]:
        """Yield the provider's events for ``request``; ``deadline_s`` is absolute on the pool's clock.

        Raises ProviderNotConfigured, ProviderQueueFull, ProviderFailure (after retries, or any failure once
        content was yielded) or DeadlineExceeded (no time left for the call or for a retry's wait).
        """
        provider = self._provider(model)
        if self._session is None:
            raise RuntimeError("ProviderPool.start() was not called")
        failed_attempts = 0
        while True:
            started = False
            probe = provider.breaker.state != "closed"
            if not provider.breaker.allow():
                self._metrics.attempts.labels(model, "circuit_open").inc()
                raise ProviderFailure(
                    model,
                    "circuit_open",
                    f"circuit breaker open; next probe in {provider.breaker.retry_in_s:.1f}s",
                    retryable=False,
                )
            try:
                async with provider.limiter.slot():
                    async for event in self._attempt(provider, request, deadline_s):
                        if not started and event.has_content:
                            started = True
                        yield event
            except ProviderFailure as failure:
                self._metrics.attempts.labels(model, failure.kind).inc()
                if _counts_against_provider(failure):
                    provider.breaker.record_failure()
                else:
                    provider.breaker.release_probe()
                failed_attempts += 1
                if started or not failure.retryable:
                    raise
                delay_s = self._retry.next_delay_s(failed_attempts, failure.retry_after_s, self._rng)
                if delay_s is None:
                    raise
                if deadline_s is not None and self._clock() + delay_s >= deadline_s:
                    raise
                self._metrics.for_model(model).retries.inc()
                # On the forwarder's provider-call span when tracing is on (a no-op span otherwise).
                trace.get_current_span().add_event(
                    "retry",
                    {
                        "barp.kind": failure.kind,
                        "barp.attempt": failed_attempts,
                        "barp.delay_ms": delay_s * 1000,
                    },
                )
                self._log.info(
                    "provider_retry",
                    model=model,
                    kind=failure.kind,
                    status=failure.status,
                    attempt=failed_attempts,
                    delay_ms=round(delay_s * 1000, 1),
                )
                await asyncio.sleep(delay_s)
                continue
            except BaseException:
                # Cancelled, deadline, queue full: no verdict about the provider's health.
                if probe:
                    provider.breaker.release_probe()
                raise
            self._metrics.for_model(model).attempts_ok.inc()
            provider.breaker.record_success()
            return

    async def _attempt(
        self, provider: _Provider, request: ChatRequest, deadline_s: float | None
    ) -> AsyncGenerator[StreamEvent, None]:
        assert self._session is not None
        entry = provider.entry
        model = entry.model
        timeout_s = entry.timeout_s
        if deadline_s is not None:
            remaining_s = deadline_s - self._clock()
            if remaining_s <= 0:
                raise DeadlineExceeded(f"deadline passed before calling the provider for model {model!r}")
            timeout_s = min(timeout_s, remaining_s)
        key = provider.api_key.reveal() if provider.api_key is not None else None
        http = provider.adapter.build_request(entry, request, key)
        timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=self._settings.connect_timeout_s)
        response: aiohttp.ClientResponse | None = None
        try:
            response = await self._session.post(
                http.url, json=http.body, headers=http.headers, timeout=timeout
            )
            if response.status != 200:
                body = await response.content.read(ERROR_BODY_READ_BYTES)
                retry_after_s = parse_retry_after(response.headers.get("Retry-After"), self._wall_clock())
                raise ProviderFailure(
                    model,
                    "http_status",
                    f"HTTP {response.status}: {redact(describe_upstream_error(body), self._secrets)}",
                    retryable=is_retryable_status(response.status),
                    status=response.status,
                    retry_after_s=retry_after_s,
                )
            content_type = response.headers.get("Content-Type", "")
            if content_type.startswith("text/event-stream"):
                decoder = provider.adapter.stream_decoder()
                async for chunk in response.content.iter_any():
                    for event in coalesce(decoder.feed(chunk)):
                        yield event
                for event in decoder.finish():
                    yield event
            else:
                body = await _read_bounded(response, MAX_JSON_BODY_BYTES)
                for event in provider.adapter.decode_body(body):
                    yield event
        except StreamProtocolError as exc:
            raise ProviderFailure(
                model, "protocol", quote_upstream(str(exc), self._secrets), retryable=False
            ) from None
        except UpstreamStreamError as exc:
            # The adapters' UpstreamStreamError text is already a describe_upstream_error summary.
            raise ProviderFailure(
                model, "upstream_error", redact(str(exc), self._secrets), retryable=False
            ) from None
        except TimeoutError:
            if deadline_s is not None and self._clock() >= deadline_s - 0.001:
                raise DeadlineExceeded(
                    f"deadline passed while waiting for the provider for model {model!r}"
                ) from None
            raise ProviderFailure(
                model, "timeout", f"no complete answer within {timeout_s:.3g}s", retryable=True
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise ProviderFailure(
                model,
                "connect",
                quote_upstream(f"cannot connect: {exc.os_error}", self._secrets),
                retryable=True,
            ) from None
        except aiohttp.ClientError as exc:
            raise ProviderFailure(
                model,
                "stream_broken",
                quote_upstream(f"{type(exc).__name__}: {exc}", self._secrets),
                retryable=True,
            ) from None
        finally:
            if response is not None:
                # Not released back to the pool unless fully read: a cancelled or failed stream drops the
                # connection, which is what tells the provider to stop generating.
                if response.content.is_eof():
                    response.release()
                else:
                    response.close()


async def _read_bounded(response: aiohttp.ClientResponse, limit_bytes: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > limit_bytes:
            raise StreamProtocolError(f"response body larger than {limit_bytes} bytes")
        parts.append(chunk)
    return b"".join(parts)


def _export_gauges(metrics: ProviderMetrics, provider: _Provider) -> None:
    """Gauges read at scrape time: always current, and nothing to keep in sync on the hot path."""
    model, limiter, breaker = provider.entry.model, provider.limiter, provider.breaker

    def in_flight() -> float:
        return float(limiter.in_flight)

    def queued() -> float:
        return float(limiter.waiting)

    def breaker_open() -> float:
        return 1.0 if breaker.state == OPEN else 0.0

    metrics.in_flight.labels(model).set_function(in_flight)
    metrics.queued.labels(model).set_function(queued)
    metrics.breaker_open.labels(model).set_function(breaker_open)


def _counts_against_provider(failure: ProviderFailure) -> bool:
    if failure.kind == "circuit_open":
        return False
    return not (failure.kind == "http_status" and failure.status in _REQUEST_SPECIFIC_STATUS)
