"""Where the shipped default policy lives inside the installed package (no I/O beyond resolving a path)."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

BUILTIN_POLICY_NAME = "routerbench-11"


def builtin_policy_dir(name: str = BUILTIN_POLICY_NAME) -> Path:
    """Directory of a checkpoint shipped in ``barp_sidecar/policies/`` (policy.safetensors, manifest.json,
    calibration.safetensors).

    Requires a regular (not zipped) install, which pip's wheels and editable installs both are.
    """
    return Path(str(importlib.resources.files("barp_sidecar") / "policies" / name))
