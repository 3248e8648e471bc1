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

from barp_sidecar.domain import ExplorationMode
from barp_sidecar.errors import BarpError, InvalidArgument
from barp_sidecar.policy.builtin import builtin_policy_dir
from barp_sidecar.policy.checkpoint import load_checkpoint
from barp_sidecar.policy.encoder import build_encoder
from barp_sidecar.policy.loading import encoder_model_for
from barp_sidecar.policy.mask import allowed_mask
from barp_sidecar.routing.exploration import choose_arm


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


def decide(args: argparse.Namespace) -> dict[str, object]:
    if not 0.0 <= args.quality_weight <= 1.0:
        raise InvalidArgument("quality_weight", f"must be in [0, 1], got {args.quality_weight}")
    policy = load_checkpoint(args.policy or builtin_policy_dir())
    arms = policy.manifest.arms
    # The sidecar's own rules: the same mask, encoder choice and arm choice as a Route.
    mask = allowed_mask(arms, tuple(args.allowed_models or ()))
    identity = policy.manifest.encoder
    encoder = build_encoder(identity.settings(encoder_model_for(identity, args.encoder_model), args.device))
    encoder.load()
    if encoder.dim != identity.dim:
        raise InvalidArgument("encoder_model", f"dim {encoder.dim} != the policy's {identity.dim}")
    embedding = torch.as_tensor(encoder.encode([args.prompt]))
    allowed = None if mask.all() else torch.from_numpy(mask).reshape(1, -1)
    with torch.inference_mode():
        probabilities = policy.network.probabilities(embedding, torch.tensor([args.quality_weight]), allowed)
    p = probabilities[0].numpy().astype(np.float64)
    mode = ExplorationMode.SAMPLE if args.sample else ExplorationMode.GREEDY
    index, propensity = choose_arm(p, mask, mode, 0.0, np.random.default_rng(args.seed))
    return {
        "model": arms[index],
        "propensity": propensity,
        "probabilities": {arm: round(float(v), 6) for arm, v in zip(arms, p, strict=True)},
        "policy_version": policy.version,
        "policy_sha256": policy.manifest.weights_sha256,
        "quality_weight": args.quality_weight,
        "encoder": policy.manifest.encoder.encoder_id,
        "exploration": mode.value,
    }


def run(args: argparse.Namespace) -> int:
    try:
        decision = decide(args)
    except BarpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(decision, indent=2))
    return 0
