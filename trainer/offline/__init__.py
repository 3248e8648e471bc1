"""Offline training and evaluation on logged routing tables (RouterBench, JSONL)."""
