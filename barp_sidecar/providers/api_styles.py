"""The registry of provider API styles: the one list of ``api_style`` names and the adapter serving each.

A new adapter is one module (implementing ``providers.adapter.Adapter``) plus one line here; the catalog's
validation, the pool and the Helm chart's schema (``helm/generate_docs.py``) all read this mapping.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from barp_sidecar.providers.adapter import Adapter
from barp_sidecar.providers.anthropic_adapter import AnthropicAdapter
from barp_sidecar.providers.openai_adapter import OpenAIAdapter

ADAPTERS: Mapping[str, Callable[[], Adapter]] = {
    "openai": OpenAIAdapter,
    "anthropic": AnthropicAdapter,
}
API_STYLES: tuple[str, ...] = tuple(ADAPTERS)


def adapter_for(api_style: str) -> Adapter:
    """A fresh adapter for ``api_style``; ValueError naming the known styles otherwise."""
    try:
        factory = ADAPTERS[api_style]
    except KeyError:
        raise ValueError(f"unknown api_style {api_style!r}; known: {list(API_STYLES)}") from None
    return factory()
