"""Token-aware grouping: split one batch of prompts into forward passes by length (pure, no I/O).

Owns only the partition. A transformer forward pass costs roughly ``overhead + rows × padded width``; one
long prompt in a batch of short ones would pad every row to its width. Sorting by length and cutting the
sorted list where that cost is minimal (dynamic programming over contiguous runs) keeps short prompts
together, while ``max_batch_tokens`` bounds the padded size of any one pass (memory, latency).
"""

from __future__ import annotations

from collections.abc import Sequence

# Fixed cost of one forward pass expressed in padded tokens: on 2 CPU cores all-MiniLM-L6-v2 spends ~6 ms
# per pass beyond its per-token work, about what ~50-60 tokens of compute cost (MEASUREMENTS.md).
FORWARD_OVERHEAD_TOKENS = 64
# Longest run considered for one group in the search (keeps the planner O(n · this)).
_MAX_GROUP_SEARCH = 256


def plan_length_groups(
    lengths: Sequence[int], max_batch_tokens: int, overhead_tokens: int = FORWARD_OVERHEAD_TOKENS
) -> list[list[int]]:
    """Partition indices of ``lengths`` (padded token lengths) into forward-pass groups.

    Every index appears in exactly one group; each group is sorted by length; a group's padded size
    ``len(group) × max(length)`` is at most ``max_batch_tokens`` unless the group is a single prompt.
    The partition minimises ``Σ (overhead_tokens + len(group) × max length in group)``.
    """
    if max_batch_tokens < 1:
        raise ValueError("max_batch_tokens must be >= 1")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    sorted_lengths = [max(1, int(lengths[i])) for i in order]
    count = len(order)
    best = [0.0] * (count + 1)
    cut = [0] * (count + 1)
    for end in range(1, count + 1):
        width = sorted_lengths[end - 1]
        best_cost = float("inf")
        best_start = end - 1
        for start in range(end - 1, max(-1, end - 1 - _MAX_GROUP_SEARCH), -1):
            rows = end - start
            if rows > 1 and rows * width > max_batch_tokens:
                break
            cost = best[start] + overhead_tokens + rows * width
            if cost < best_cost:
                best_cost, best_start = cost, start
        best[end] = best_cost
        cut[end] = best_start
    groups: list[list[int]] = []
    end = count
    while end > 0:
        start = cut[end]
        groups.append(order[start:end])
        end = start
    groups.reverse()
    return groups
