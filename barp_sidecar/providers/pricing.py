"""Cost accounting: catalog prices × tokens, and a token estimate when a provider reports no usage.

Pure functions; no I/O. Prices are USD per 1,000,000 tokens, as providers publish them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from barp_sidecar.providers.chat import ChatMessage, TokenUsage

TOKENS_PER_MILLION = 1_000_000
# English text averages about four characters per BPE token (OpenAI's rule of thumb).
CHARS_PER_TOKEN = 4.0
# Chat formats add a few tokens of framing per message (role markers, separators).
TOKENS_PER_MESSAGE = 4


def cost_usd(usage: TokenUsage, input_usd_per_1m_tokens: float, output_usd_per_1m_tokens: float) -> float:
    """USD cost of one call: input_tokens × input price + output_tokens × output price (per 1M)."""
    if usage.input_tokens < 0 or usage.output_tokens < 0:
        raise ValueError(f"token counts must be >= 0, not {usage}")
    return (
        usage.input_tokens * input_usd_per_1m_tokens + usage.output_tokens * output_usd_per_1m_tokens
    ) / TOKENS_PER_MILLION


def estimate_text_tokens(text: str) -> int:
    """Rough token count of ``text`` (ceil(chars / 4)); 0 for empty text."""
    return math.ceil(len(text) / CHARS_PER_TOKEN) if text else 0


def estimate_usage(messages: Sequence[ChatMessage], output_text: str) -> TokenUsage:
    """Estimated usage for a call whose provider reported none; flagged ``estimated``."""
    input_tokens = sum(estimate_text_tokens(m.content) + TOKENS_PER_MESSAGE for m in messages)
    return TokenUsage(input_tokens, estimate_text_tokens(output_text), estimated=True)


def complete_usage(
    input_tokens: int | None,
    output_tokens: int | None,
    messages: Sequence[ChatMessage],
    output_text: str,
) -> TokenUsage:
    """The usage to bill: the provider's counts where it reported them, estimates for the gaps.

    The result is flagged ``estimated`` when either count had to be estimated.
    """
    if input_tokens is not None and output_tokens is not None:
        return TokenUsage(input_tokens, output_tokens, estimated=False)
    estimate = estimate_usage(messages, output_text)
    return TokenUsage(
        input_tokens if input_tokens is not None else estimate.input_tokens,
        output_tokens if output_tokens is not None else estimate.output_tokens,
        estimated=True,
    )
