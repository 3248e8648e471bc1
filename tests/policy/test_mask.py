"""``policy.mask.allowed_mask``: how the sidecar, ``decide`` and evaluation all compute allowed models."""

from __future__ import annotations

import numpy as np
import pytest

from barp_sidecar.errors import FailedPrecondition, InvalidArgument
from barp_sidecar.policy.mask import allowed_mask, models_in

ARMS = ("small", "medium", "large")


def test_empty_means_every_model_minus_the_disabled_ones() -> None:
    assert allowed_mask(ARMS).tolist() == [True, True, True]
    assert allowed_mask(ARMS, (), frozenset({"large"})).tolist() == [True, True, False]


def test_listed_models_in_arm_order_whatever_the_request_order() -> None:
    mask = allowed_mask(ARMS, ("large", "small"))
    assert mask.dtype == np.bool_ and mask.tolist() == [True, False, True]
    assert models_in(ARMS, mask) == ("small", "large")


@pytest.mark.parametrize(
    ("allowed", "message"), [(("small", "small"), "duplicate model 'small'"), (("tiny",), "unknown model(s)")]
)
def test_bad_names_are_invalid_argument_naming_the_field(allowed: tuple[str, ...], message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        allowed_mask(ARMS, allowed)
    assert caught.value.field == "allowed_models" and message in str(caught.value)


def test_nothing_left_is_failed_precondition_naming_both_causes() -> None:
    with pytest.raises(FailedPrecondition, match=r"allowed_models=\['large'\].*disabled.*\['large'\]"):
        allowed_mask(ARMS, ("large",), frozenset({"large"}))
