"""``barp-sidecar decide``: load a policy in-process, route one prompt, print the decision as JSON.

Owns this one-shot command only (no server, no batching): checkpoint -> encoder built from the manifest's
encoder identity -> π(a|x, w) -> greedy or sampled arm. ``barp_sidecar.cli`` dispatches ``decide`` here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from barp_sidecar.errors import BarpError, InvalidArgument
from barp_sidecar.policy.builtin import builtin_policy_dir
from barp_sidecar.policy.checkpoint import LoadedPolicy, load_checkpoint
from barp_sidecar.policy.encoder import BUILTIN_MODEL, BUILTIN_MODEL_ID, build_encoder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="the prompt to route")
    parser.add_argument("--quality-weight", type=float, default=0.5, help="w_q in [0, 1]; w_c = 1 − w_q")
    parser.add_argument(
        "--policy", type=Path, default=None, help="checkpoint directory (default: the shipped one)"
    )
    parser.add_argument(
        "--encoder-model",
        default=None,
        help="sentence-transformers name or path overriding the manifest's encoder (same model family!)",
    )
    parser.add_argument(
        "--allowed-models", nargs="+", default=None, help="restrict the choice to these models"
    )
    parser.add_argument("--sample", action="store_true", help="sample from π instead of the greedy argmax")
    parser.add_argument("--seed", type=int, default=None, help="seed for --sample")
    parser.add_argument("--device", default="cpu", help="encoder device: cpu, cuda, auto")


def encoder_model_for(policy: LoadedPolicy, override: str | None) -> str:
    """The model the encoder loads: the override, the shipped MiniLM files, or the manifest's id."""
    if override:
        return override
    encoder_id = policy.manifest.encoder.encoder_id
    return BUILTIN_MODEL if encoder_id == BUILTIN_MODEL_ID else encoder_id


def decide(args: argparse.Namespace) -> dict[str, object]:
    if not 0.0 <= args.quality_weight <= 1.0:
        raise InvalidArgument("quality_weight", f"must be in [0, 1], got {args.quality_weight}")
    policy = load_checkpoint(args.policy or builtin_policy_dir())
    arms = policy.manifest.arms
    allowed = None
    if args.allowed_models:
        unknown = sorted(set(args.allowed_models) - set(arms))
        if unknown:
            raise InvalidArgument("allowed_models", f"unknown models {unknown}; known: {list(arms)}")
        allowed = torch.tensor([[a in args.allowed_models for a in arms]])
    settings = policy.manifest.encoder.settings(encoder_model_for(policy, args.encoder_model), args.device)
    encoder = build_encoder(settings)
    encoder.load()
    if encoder.dim != policy.manifest.encoder.dim:
        raise InvalidArgument(
            "encoder_model", f"dim {encoder.dim} != the policy's {policy.manifest.encoder.dim}"
        )
    embedding = torch.as_tensor(encoder.encode([args.prompt]))
    with torch.inference_mode():
        probabilities = policy.network.probabilities(embedding, torch.tensor([args.quality_weight]), allowed)[
            0
        ]
    p = probabilities.numpy().astype(np.float64)
    if args.sample:
        index = int(np.random.default_rng(args.seed).choice(len(arms), p=p / p.sum()))
    else:
        index = int(np.argmax(p))
    return {
        "model": arms[index],
        "propensity": float(p[index]) if args.sample else 1.0,
        "probabilities": {arm: round(float(v), 6) for arm, v in zip(arms, p, strict=True)},
        "policy_version": policy.version,
        "policy_sha256": policy.manifest.weights_sha256,
        "quality_weight": args.quality_weight,
        "encoder": policy.manifest.encoder.encoder_id,
        "exploration": "sample" if args.sample else "greedy",
    }


def run(args: argparse.Namespace) -> int:
    try:
        decision = decide(args)
    except BarpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(decision, indent=2))
    return 0
