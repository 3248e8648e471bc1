"""The installed package's version, for ``--version`` on both commands (one place, no import-time work)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "barp-sidecar"


def package_version() -> str:
    """``barp-sidecar``'s installed version, or ``unknown`` when running from a checkout not installed."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"
