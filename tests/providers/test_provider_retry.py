from __future__ import annotations

import random

import pytest

from barp_sidecar.providers.retry import RetryPolicy, is_retryable_status, parse_retry_after


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599])
def test_retryable_statuses(status: int) -> None:
    assert is_retryable_status(status)


@pytest.mark.parametrize("status", [200, 400, 401, 403, 404, 413, 422])
def test_non_retryable_statuses(status: int) -> None:
    assert not is_retryable_status(status)


def test_retry_after_seconds_and_http_dates() -> None:
    now = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 GMT
    assert parse_retry_after("2", now) == 2.0
    assert parse_retry_after(" 0.5 ", now) == 0.5
    assert parse_retry_after("-3", now) == 0.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:25 GMT", now) == pytest.approx(5.0)
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:00 GMT", now) == 0.0  # in the past
    for bad in (None, "", "soon", "nan", "inf"):
        assert parse_retry_after(bad, now) is None


def test_backoff_is_full_jitter_under_an_exponential_cap() -> None:
    policy = RetryPolicy(max_attempts=10, initial_backoff_s=0.1, max_backoff_s=1.0)
    rng = random.Random(3)
    for failed in range(1, 10):
        cap = min(1.0, 0.1 * 2 ** (failed - 1))
        samples = [policy.backoff_s(failed, rng) for _ in range(200)]
        assert all(0.0 <= s <= cap for s in samples)
        assert max(samples) > 0.8 * cap  # jitter spreads over the whole range


def test_backoff_is_reproducible_with_a_seeded_rng() -> None:
    policy = RetryPolicy()
    first = [policy.backoff_s(n, random.Random(11)) for n in (1, 2, 3)]
    assert first == [policy.backoff_s(n, random.Random(11)) for n in (1, 2, 3)]


def test_next_delay_stops_after_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.01)
    rng = random.Random(0)
    assert policy.next_delay_s(1, None, rng) is not None
    assert policy.next_delay_s(2, None, rng) is not None
    assert policy.next_delay_s(3, None, rng) is None


def test_next_delay_honours_retry_after_up_to_the_cap() -> None:
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.01, retry_after_max_s=5.0)
    rng = random.Random(0)
    assert policy.next_delay_s(1, 2.0, rng) == 2.0
    assert policy.next_delay_s(1, 0.0, rng) <= 0.01  # a shorter Retry-After does not shorten the backoff
    assert policy.next_delay_s(1, 6.0, rng) is None  # too long: give up on this provider (fall back)


def test_policy_validates_its_fields() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(initial_backoff_s=2.0, max_backoff_s=1.0)
    with pytest.raises(ValueError):
        RetryPolicy().backoff_s(0, random.Random())


@pytest.mark.parametrize(
    ("body", "shown", "hidden"),
    [
        (
            b'{"error": {"type": "invalid_request_error", "code": "context_length_exceeded",'
            b' "message": "your prompt SECRET-PROMPT is too long"}}',
            "type=invalid_request_error code=context_length_exceeded",
            "SECRET-PROMPT",
        ),
        (
            b'{"detail": [{"type": "missing", "loc": ["body"], "msg": "x", "input": "SECRET-PROMPT"},'
            b' {"type": "string_type", "input": {"content": "SECRET-PROMPT"}}]}',
            "validation_errors=2 validation_types=missing,string_type",
            "SECRET-PROMPT",
        ),
        (b'{"error": "SECRET PROMPT with spaces"}', "no error type or code", "SECRET"),
        (b"<html>SECRET-PROMPT</html>", "non-JSON error body (26 bytes)", "SECRET-PROMPT"),
        (
            b'{"type": "error", "error": {"type": "overloaded_error", "message": "SECRET-PROMPT"}}',
            "type=overloaded_error",
            "SECRET-PROMPT",
        ),
    ],
)
def test_upstream_error_bodies_show_type_and_code_only(body: bytes, shown: str, hidden: str) -> None:
    from barp_sidecar.providers.failures import describe_upstream_error

    text = describe_upstream_error(body)
    assert text.startswith(shown) and hidden not in text and len(text) <= 300
