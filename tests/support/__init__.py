"""Shared test helpers (tiny checkpoints, in-process sidecars)."""
