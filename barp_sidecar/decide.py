"""``barp-sidecar decide``: load a policy in-process, route one prompt, print the decision as JSON.

Owns this one-shot command only (no server, no batching): checkpoint -> encoder built from the manifest's
encoder identity -> π(a|x, w) -> greedy or sampled arm. ``barp_sidecar.cli`` dispatches ``decide`` here.
Arguments are checked before torch is imported, so a bad one is reported at once (exit 2, one line).
``--explain`` adds the per-model numbers behind the choice (logit, probability, allowed, rank).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from barp_sidecar.errors import BarpError, InvalidArgument
from barp_sidecar.policy.encoder import BUILTIN_MODEL, BUILTIN_MODEL_ID

if TYPE_CHECKING:
    from barp_sidecar.policy.checkpoint import LoadedPolicy

GREEDY_NOTE = "greedy: the most probable allowed model is chosen with certainty, so propensity is 1.0"
SAMPLE_NOTE = "sampled from the probabilities: propensity is the chosen model's probability"


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
        "--allowed-model",
        action="append",
        default=[],
        metavar="MODEL",
        help="restrict the choice to this model (repeat)",
    )
    parser.add_argument("--sample", action="store_true", help="sample from π instead of the greedy argmax")
    parser.add_argument("--seed", type=int, default=None, help="seed for --sample")
    parser.add_argument("--device", default="cpu", help="encoder device: cpu, cuda, auto")
    parser.add_argument(
        "--explain", action="store_true", help="add each model's logit, probability and rank to the output"
    )


def encoder_model_for(policy: LoadedPolicy, override: str | None) -> str:
    """The model the encoder loads: the override, the shipped MiniLM files, or the manifest's id."""
    if override:
        return override
    encoder_id = policy.manifest.encoder.encoder_id
    return BUILTIN_MODEL if encoder_id == BUILTIN_MODEL_ID else encoder_id


def decide(args: argparse.Namespace) -> dict[str, object]:
    if not (math.isfinite(args.quality_weight) and 0.0 <= args.quality_weight <= 1.0):
        raise InvalidArgument("quality_weight", f"must be in [0, 1], got {args.quality_weight}")
    if args.policy is not None and not args.policy.is_dir():
        raise InvalidArgument("policy", f"{args.policy} is not a checkpoint directory")
    # Imported only now: a bad argument above is reported without paying for torch.
    import numpy as np
    import torch

    from barp_sidecar.policy.builtin import builtin_policy_dir
    from barp_sidecar.policy.checkpoint import load_checkpoint
    from barp_sidecar.policy.encoder import build_encoder

    policy = load_checkpoint(args.policy or builtin_policy_dir())
    arms = policy.manifest.arms
    allowed = None
    if args.allowed_model:
        unknown = sorted(set(args.allowed_model) - set(arms))
        if unknown:
            raise InvalidArgument("allowed_model", f"unknown models {unknown}; known: {list(arms)}")
        allowed = torch.tensor([[a in args.allowed_model for a in arms]])
    settings = policy.manifest.encoder.settings(encoder_model_for(policy, args.encoder_model), args.device)
    encoder = build_encoder(settings)
    encoder.load()
    if encoder.dim != policy.manifest.encoder.dim:
        raise InvalidArgument(
            "encoder_model", f"dim {encoder.dim} != the policy's {policy.manifest.encoder.dim}"
        )
    embedding = torch.as_tensor(encoder.encode([args.prompt]))
    with torch.inference_mode():
        logits = policy.network(embedding, torch.tensor([args.quality_weight]), allowed)[0].float()
    p = torch.softmax(logits, dim=-1).numpy().astype(np.float64)
    if args.sample:
        index = int(np.random.default_rng(args.seed).choice(len(arms), p=p / p.sum()))
    else:
        index = int(np.argmax(p))
    decision: dict[str, object] = {
        "model": arms[index],
        "propensity": float(p[index]) if args.sample else 1.0,
        "exploration": "sample" if args.sample else "greedy",
        "propensity_note": SAMPLE_NOTE if args.sample else GREEDY_NOTE,
        "probabilities": {arm: round(float(v), 6) for arm, v in zip(arms, p, strict=True)},
        "policy_version": policy.version,
        "policy_sha256": policy.manifest.weights_sha256,
        "quality_weight": args.quality_weight,
        "encoder": policy.manifest.encoder.encoder_id,
    }
    if args.explain:
        decision["explanation"] = explanation(arms, logits.tolist(), p.tolist(), allowed_names(args, arms))
    return decision


def allowed_names(args: argparse.Namespace, arms: tuple[str, ...]) -> set[str]:
    return set(args.allowed_model) if args.allowed_model else set(arms)


def explanation(
    arms: tuple[str, ...], logits: list[float], probabilities: list[float], allowed: set[str]
) -> list[dict[str, Any]]:
    """Per model, most probable first: the policy's logit for (prompt, w), its softmax probability over
    the allowed models (0 for masked ones), whether it was allowed, and its rank."""
    order = sorted(range(len(arms)), key=lambda i: -probabilities[i])
    return [
        {
            "rank": rank,
            "model": arms[i],
            "allowed": arms[i] in allowed,
            "logit": round(logits[i], 4) if math.isfinite(logits[i]) else None,
            "probability": round(probabilities[i], 6),
        }
        for rank, i in enumerate(order, start=1)
    ]


def run(args: argparse.Namespace) -> int:
    try:
        decision = decide(args)
    except BarpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(decision, indent=2))
    return 0
