"""What an API-style adapter provides, and the errors its stream decoders raise.

An adapter turns a ``ChatRequest`` into one HTTP request for its API style and decodes the streamed
response into ``StreamEvent``s. Adapters are pure (no I/O): the pool does the HTTP. Which adapter serves
which ``api_style`` is listed once, in ``providers.api_styles``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from barp_sidecar.providers.chat import ChatRequest, StreamEvent

if TYPE_CHECKING:  # the catalog imports the adapters (api_styles registry) at run time
    from barp_sidecar.providers.catalog import ProviderEntry


class StreamProtocolError(ValueError):
    """The provider's response is not what its API style promises (bad JSON, bad SSE, truncated)."""


class UpstreamStreamError(Exception):
    """The provider reported an error inside an otherwise well-formed stream (an ``error`` event)."""


def json_object(text: str | bytes, what: str) -> dict[str, Any]:
    """Parse one JSON object from a provider; ``StreamProtocolError`` naming ``what`` otherwise."""
    try:
        payload = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StreamProtocolError(f"{what} is not JSON ({exc})") from exc
    if not isinstance(payload, dict):
        raise StreamProtocolError(f"{what} is not a JSON object")
    return payload


@dataclass(frozen=True)
class HttpRequest:
    """One POST: URL, headers (may hold the key: never log them) and the JSON body."""

    url: str
    headers: dict[str, str]
    body: dict[str, Any]

    def __repr__(self) -> str:
        return f"HttpRequest(url={self.url!r}, headers=<{len(self.headers)} redacted>, body=<json>)"


class StreamDecoder(Protocol):
    def feed(self, chunk: bytes) -> list[StreamEvent]:
        """Decode the next bytes of a streamed (text/event-stream) body."""
        ...

    def finish(self) -> list[StreamEvent]:
        """End of body: raise StreamProtocolError if the stream was cut short."""
        ...


class Adapter(Protocol):
    def build_request(
        self, entry: ProviderEntry, request: ChatRequest, api_key: str | None
    ) -> HttpRequest: ...

    def stream_decoder(self) -> StreamDecoder: ...

    def decode_body(self, body: bytes) -> list[StreamEvent]:
        """Decode a non-streamed JSON body (a server that ignored ``stream: true``)."""
        ...
