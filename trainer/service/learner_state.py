"""The learner's resumable state, saved next to every published checkpoint and read back at a restart.

Owns the file format: ``<state dir>/v{N}.safetensors``, one per published version N, holding tensors
(optimiser moments, regression statistics, buffered events as bytes, RNG states) and a JSON skeleton in
the safetensors metadata that puts nested structures (an optimiser's ``state_dict``) back together.
Written to a temporary file, fsync'd and renamed: a crash leaves the previous file or none, never half a
file. Knows nothing about what a learner keeps (``loop.py`` and the learners decide); a missing or
unreadable file only means a fresh start of those statistics (the caller logs it), never a failed start.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors import safe_open as _safe_open
from safetensors.torch import load_file, save_file

_SKELETON_KEY = "skeleton"


def flatten(value: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON-able skeleton of ``value`` whose tensors are moved into ``tensors`` under dotted names."""
    if isinstance(value, torch.Tensor):
        tensors[prefix] = value.detach().to("cpu").contiguous().clone()
        return {"__tensor__": prefix}
    if isinstance(value, dict):
        return {
            "__dict__": [
                [flatten(k, f"{prefix}.k{i}", tensors), flatten(v, f"{prefix}.{i}", tensors)]
                for i, (k, v) in enumerate(value.items())
            ]
        }
    if isinstance(value, list | tuple):
        items = [flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(value)]
        return {"__list__": items} if isinstance(value, list) else {"__tuple__": items}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"cannot save a {type(value).__name__} in the learner state ({prefix})")


def unflatten(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__dict__" in skeleton:
            return {unflatten(k, tensors): unflatten(v, tensors) for k, v in skeleton["__dict__"]}
        if "__list__" in skeleton:
            return [unflatten(v, tensors) for v in skeleton["__list__"]]
        if "__tuple__" in skeleton:
            return tuple(unflatten(v, tensors) for v in skeleton["__tuple__"])
    return skeleton


def state_path(directory: Path, version: int) -> Path:
    return Path(directory) / f"v{version}.safetensors"


def save_state(directory: Path, version: int, state: dict[str, Any]) -> Path:
    """Write ``state`` (nested dicts/lists of tensors and JSON scalars) for ``version`` atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten(state, "s", tensors)
    handle, temp = tempfile.mkstemp(prefix=".state.", dir=directory)
    os.close(handle)
    try:
        save_file(tensors, temp, metadata={_SKELETON_KEY: json.dumps(skeleton)})
        with open(temp, "rb") as file:
            os.fsync(file.fileno())
        final = state_path(directory, version)
        os.replace(temp, final)
        return final
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def load_state(directory: Path, version: int) -> dict[str, Any] | None:
    """The state saved for ``version``, or None when there is none. A damaged file raises ValueError."""
    path = state_path(directory, version)
    if not path.is_file():
        return None
    try:
        with _safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
        tensors = load_file(str(path))
        skeleton = json.loads(metadata[_SKELETON_KEY])
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable learner state ({exc})") from exc
    state = unflatten(skeleton, tensors)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: learner state is not a mapping")
    return state
