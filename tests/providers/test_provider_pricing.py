from __future__ import annotations

import pytest

from barp_sidecar.providers.chat import ChatMessage, TokenUsage
from barp_sidecar.providers.pricing import complete_usage, cost_usd, estimate_text_tokens, estimate_usage


def test_cost_is_tokens_times_price_per_million() -> None:
    # gpt-4-1106: $10 / $30 per 1M tokens.
    assert cost_usd(TokenUsage(1000, 500), 10.0, 30.0) == pytest.approx(0.01 + 0.015)
    assert cost_usd(TokenUsage(0, 0), 10.0, 30.0) == 0.0


def test_cost_rejects_negative_counts() -> None:
    with pytest.raises(ValueError):
        cost_usd(TokenUsage(-1, 0), 1.0, 1.0)


def test_token_estimate_is_about_four_characters_per_token() -> None:
    assert estimate_text_tokens("") == 0
    assert estimate_text_tokens("abc") == 1
    assert estimate_text_tokens("a" * 400) == 100


def test_estimated_usage_counts_message_framing_and_is_flagged() -> None:
    usage = estimate_usage([ChatMessage("user", "a" * 40), ChatMessage("system", "b" * 8)], "c" * 12)
    assert usage == TokenUsage(10 + 4 + 2 + 4, 3, estimated=True)


def test_complete_usage_prefers_reported_counts_and_fills_gaps() -> None:
    messages = [ChatMessage("user", "a" * 40)]
    assert complete_usage(7, 9, messages, "xyz") == TokenUsage(7, 9, estimated=False)
    assert complete_usage(7, None, messages, "x" * 8) == TokenUsage(7, 2, estimated=True)
    assert complete_usage(None, 9, messages, "x") == TokenUsage(14, 9, estimated=True)
    assert complete_usage(None, None, messages, "") == TokenUsage(14, 0, estimated=True)
