"""Statements the docs make about the code's output, checked against the code."""

from __future__ import annotations

from pathlib import Path

from trainer import demo

DOCS = Path(__file__).resolve().parents[1] / "docs"
DEMO_TRAFFIC_PROMPTS = 2205  # RouterBench train split: ARC + Winogrande + MBPP (docs/learning.md §6)


def test_learning_md_states_the_demos_real_number_of_passes() -> None:
    defaults = demo.build_parser().parse_args([])
    served = defaults.passes * DEMO_TRAFFIC_PROMPTS
    text = " ".join((DOCS / "learning.md").read_text().split())
    assert f"{defaults.passes} passes ({served:,} served events)" in text
    assert f"from {served:,} served events" in text
