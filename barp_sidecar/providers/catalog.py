"""The model catalog: which provider serves each policy model, at what price, with which limits.

Owns the catalog file format (YAML, documented in docs/providers.md), its validation against the policy's
model list, and reading API keys from the environment or a secret file. Every error is a ``ConfigError``
naming the key (``providers[3].base_url``) or the models; a key's *value* never appears in an error, a
log line or a ``repr`` (``ApiKey`` redacts itself).

The shipped catalog (``barp_sidecar/config/catalog.routerbench.yaml``) maps the 11 RouterBench models to
disabled placeholder entries: Route needs no provider, and Complete to a disabled model is refused with
FAILED_PRECONDITION naming the model.
"""

from __future__ import annotations

import importlib.resources
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog
import yaml

from barp_sidecar.errors import ConfigError
from barp_sidecar.model_names import canonical_model_name
from barp_sidecar.providers.api_styles import API_STYLES

log = structlog.get_logger("barp_sidecar.providers.catalog")

SHIPPED_CATALOG = "catalog.routerbench.yaml"
_ENTRY_KEYS = {
    "arm",  # the YAML key naming the entry's model (kept so every catalog file keeps loading)
    "enabled",
    "api_style",
    "base_url",
    "upstream_model",
    "api_key_env",
    "api_key_file",
    "input_usd_per_1m_tokens",
    "output_usd_per_1m_tokens",
    "max_concurrency",
    "timeout_s",
    "default_max_tokens",
}


class ApiKey:
    """A provider API key. Its value is only reachable through ``reveal()``; repr/str are redacted."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "ApiKey('[REDACTED]')"

    __str__ = __repr__


@dataclass(frozen=True)
class ProviderEntry:
    """One model's provider. Prices in USD per 1M tokens; ``timeout_s`` bounds one attempt end to end."""

    model: str
    enabled: bool
    api_style: str = "openai"
    # Includes the API version prefix, as the providers' SDKs expect: "https://api.openai.com/v1".
    base_url: str = ""
    upstream_model: str = ""
    # Name of the environment variable holding the key (never the key itself).
    api_key_env: str | None = None
    # Path of a file whose stripped content is the key (e.g. a mounted Kubernetes secret).
    api_key_file: str | None = None
    input_usd_per_1m_tokens: float = 0.0
    output_usd_per_1m_tokens: float = 0.0
    max_concurrency: int = 16
    timeout_s: float = 60.0
    # Anthropic's API requires max_tokens; used when the request leaves it 0.
    default_max_tokens: int = 1024

    def read_api_key(self, env: Mapping[str, str]) -> ApiKey | None:
        """The key from ``env[api_key_env]`` or ``api_key_file``; None for keyless endpoints.

        Raises ConfigError naming the variable or file (never the value) when it is missing or empty.
        """
        if self.api_key_env is not None:
            value = env.get(self.api_key_env, "")
            if not value.strip():
                raise ConfigError(
                    f"catalog[{self.model}].api_key_env",
                    f"variable {self.api_key_env} is not set (enabled model {self.model!r} needs it)",
                )
            return ApiKey(value.strip())
        if self.api_key_file is not None:
            try:
                value = Path(self.api_key_file).read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    f"catalog[{self.model}].api_key_file",
                    f"cannot read {self.api_key_file} ({exc.strerror or type(exc).__name__})",
                ) from exc
            if not value:
                raise ConfigError(f"catalog[{self.model}].api_key_file", f"{self.api_key_file} is empty")
            return ApiKey(value)
        return None


@dataclass(frozen=True)
class ModelCatalog:
    """Entries in file order; ``models`` must include every model of the policy (it may list more: a model
    about to join the pool, or one retired from it)."""

    entries: tuple[ProviderEntry, ...]
    source: str = "<memory>"

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(e.model for e in self.entries)

    def entry(self, model: str) -> ProviderEntry:
        for e in self.entries:
            if e.model == model:
                return e
        raise KeyError(model)

    def enabled_models(self) -> tuple[str, ...]:
        return tuple(e.model for e in self.entries if e.enabled)

    def missing(self, policy_models: Sequence[str]) -> list[str]:
        """The policy's models this catalog has no entry for (canonical names, in the policy's order)."""
        known = set(self.models)
        return [m for m in (canonical_model_name(a) for a in policy_models) if m not in known]

    def check_models(self, policy_models: Sequence[str]) -> ModelCatalog:
        """Raise ConfigError naming the models when the catalog lacks some of the policy's models (extra
        entries are fine: a model about to join the pool, or one retired from it)."""
        missing = self.missing(policy_models)
        if missing:
            raise ConfigError(
                "providers.catalog_file", f"{self.source}: policy models missing from the catalog: {missing}"
            )
        extra = [m for m in self.models if m not in set(canonical_model_name(a) for a in policy_models)]
        if extra:
            log.info("catalog_models_not_in_policy", source=self.source, models=extra)
        return self


def disabled_catalog(models: Sequence[str], source: str) -> ModelCatalog:
    """A catalog in which every model is disabled: Route works, Complete answers FAILED_PRECONDITION."""
    return ModelCatalog(tuple(ProviderEntry(model=model, enabled=False) for model in models), source)


def catalog_for_policy(catalog_file: str | None, policy_models: Sequence[str]) -> ModelCatalog:
    """The catalog to serve ``policy_models`` with; ConfigError naming the models when a file mismatches.

    With no ``catalog_file``, the shipped RouterBench catalog is used when the policy has its models; a
    policy with other models (a custom or test policy) gets every model disabled rather than a startup error,
    because nothing was configured that could be wrong.
    """
    if catalog_file is not None:
        return load_catalog(catalog_file).check_models(policy_models)
    shipped = load_catalog(None)
    if set(shipped.models) == set(policy_models):
        return shipped
    return disabled_catalog(policy_models, "<no catalog configured: every model disabled>")


def shipped_catalog_path() -> Path:
    return Path(str(importlib.resources.files("barp_sidecar") / "config" / SHIPPED_CATALOG))


def load_catalog(path: str | Path | None = None) -> ModelCatalog:
    """Read and validate a catalog file; None = the shipped RouterBench catalog (all models disabled)."""
    file = Path(path) if path is not None else shipped_catalog_path()
    try:
        data = yaml.safe_load(file.read_text())
    except FileNotFoundError as exc:
        raise ConfigError("providers.catalog_file", f"no such file: {file}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("providers.catalog_file", f"cannot read {file}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError("providers.catalog_file", f"{file} is not valid YAML: {exc}") from exc
    return parse_catalog(data, str(file))


def parse_catalog(data: Any, source: str = "<memory>") -> ModelCatalog:
    """Validate parsed YAML (``{"providers": [entry, ...]}``) into a catalog; ConfigError names the key."""
    if not isinstance(data, Mapping):
        raise ConfigError("catalog", f"{source}: must hold a mapping with a 'providers' list")
    unknown = sorted(set(data) - {"version", "providers"})
    if unknown:
        raise ConfigError(f"catalog.{unknown[0]}", f"{source}: unknown key (known: providers, version)")
    if data.get("version", 1) != 1:
        raise ConfigError("catalog.version", f"{source}: unsupported version {data.get('version')!r}")
    raw_entries = data.get("providers")
    if not isinstance(raw_entries, list) or not raw_entries:
        raise ConfigError("catalog.providers", f"{source}: must be a non-empty list of entries")
    entries = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_entries):
        entry = _parse_entry(raw, f"providers[{index}]", source)
        if entry.model in seen:
            raise ConfigError(
                f"providers[{index}].arm",
                f"{source}: duplicate model {entry.model!r} (aliases name one model)",
            )
        seen.add(entry.model)
        entries.append(entry)
    return ModelCatalog(tuple(entries), source)


def _parse_entry(raw: Any, key: str, source: str) -> ProviderEntry:
    if not isinstance(raw, Mapping):
        raise ConfigError(key, f"{source}: must be a mapping")
    unknown = sorted(set(raw) - _ENTRY_KEYS)
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}", f"{source}: unknown key (known: {sorted(_ENTRY_KEYS)})")

    def text(name: str, required: bool) -> str | None:
        value = raw.get(name)
        if value is None or value == "":
            if required:
                raise ConfigError(f"{key}.{name}", f"{source}: required")
            return None
        if not isinstance(value, str):
            raise ConfigError(f"{key}.{name}", f"{source}: must be a string, not {value!r}")
        return value

    def number(name: str, default: float, low: float, low_inclusive: bool = True) -> float:
        value = raw.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(f"{key}.{name}", f"{source}: must be a finite number, not {value!r}")
        if value < low or (not low_inclusive and value == low):
            raise ConfigError(f"{key}.{name}", f"{source}: must be {'>=' if low_inclusive else '>'} {low}")
        return float(value)

    def integer(name: str, default: int, low: int) -> int:
        value = raw.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}.{name}", f"{source}: must be an integer, not {value!r}")
        if value < low:
            raise ConfigError(f"{key}.{name}", f"{source}: must be >= {low}")
        return value

    # The one place the YAML key "arm" maps to ProviderEntry.model (its upstream id is ``upstream_model``).
    raw_model = text("arm", True)
    assert raw_model is not None
    model = canonical_model_name(raw_model)  # one spelling per model (barp_sidecar/model_names.py)
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{key}.enabled", f"{source}: must be true or false, not {enabled!r}")
    api_style = text("api_style", False) or "openai"
    if api_style not in API_STYLES:
        raise ConfigError(f"{key}.api_style", f"{source}: must be one of {API_STYLES}, not {api_style!r}")
    base_url = text("base_url", enabled) or ""
    if base_url:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"{key}.base_url", f"{source}: must be an http(s) URL, not {base_url!r}")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ConfigError(f"{key}.base_url", f"{source}: must not carry a query, fragment or credentials")
    upstream_model = text("upstream_model", enabled) or ""
    api_key_env = text("api_key_env", False)
    api_key_file = text("api_key_file", False)
    if api_key_env is not None and api_key_file is not None:
        raise ConfigError(f"{key}.api_key_file", f"{source}: set api_key_env or api_key_file, not both")
    return ProviderEntry(
        model=model,
        enabled=enabled,
        api_style=api_style,
        base_url=base_url.rstrip("/"),
        upstream_model=upstream_model,
        api_key_env=api_key_env,
        api_key_file=api_key_file,
        input_usd_per_1m_tokens=number("input_usd_per_1m_tokens", 0.0, 0.0),
        output_usd_per_1m_tokens=number("output_usd_per_1m_tokens", 0.0, 0.0),
        max_concurrency=integer("max_concurrency", 16, 1),
        timeout_s=number("timeout_s", 60.0, 0.0, low_inclusive=False),
        default_max_tokens=integer("default_max_tokens", 1024, 1),
    )
