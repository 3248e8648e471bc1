"""Deterministic offline replay of the online trainer (``barp-trainer replay``); see docs/learning.md §7."""
