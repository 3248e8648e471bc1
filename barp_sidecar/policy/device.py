"""Where inference runs: pick the device and precision from the setting and what the machine has (pure).

Owns only the decision. ``select_device("auto", cuda_available=...)`` is pure so the GPU path is testable
on machines without one; the caller passes ``torch.cuda.is_available()``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from barp_sidecar.errors import ConfigError

_CUDA = re.compile(r"^cuda(:\d+)?$")


@dataclass(frozen=True)
class DevicePlacement:
    """A torch device string and whether weights run in half precision there."""

    device: str
    half_precision: bool

    @property
    def dtype_name(self) -> str:
        return "float16" if self.half_precision else "float32"

    def torch_dtype(self) -> Any:  # torch is imported lazily
        import torch

        return torch.float16 if self.half_precision else torch.float32


def select_device(requested: str, cuda_available: bool) -> DevicePlacement:
    """``auto`` = CUDA in float16 when present, else CPU float32; ``cpu``; ``cuda`` / ``cuda:N``.

    Raises ConfigError("policy.device") for an unknown value or CUDA requested without CUDA.
    """
    if requested == "auto":
        return DevicePlacement("cuda", True) if cuda_available else DevicePlacement("cpu", False)
    if requested == "cpu":
        return DevicePlacement("cpu", False)
    if _CUDA.match(requested):
        if not cuda_available:
            raise ConfigError("policy.device", f"{requested!r} requested but CUDA is not available")
        return DevicePlacement(requested, True)
    raise ConfigError("policy.device", f"must be 'auto', 'cpu', 'cuda' or 'cuda:N', not {requested!r}")
