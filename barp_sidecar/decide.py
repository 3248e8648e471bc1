"""``barp-sidecar decide``: load a policy in-process, route one prompt, print the decision as JSON.

Owns this one-shot command only (no server, no batching): checkpoint -> encoder built from the manifest's
encoder identity -> π(a|x, w) -> greedy or sampled model. ``barp_sidecar.cli`` dispatches ``decide`` here.
Arguments are checked before torch is imported, so a bad one is reported at once (exit 2, one line).
``--explain`` adds the per-model numbers behind the choice (logit, probability, allowed, rank).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from barp_sidecar.errors import BarpError, InvalidArgument

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


def decide(args: argparse.Namespace) -> dict[str, object]:
    if not (math.isfinite(args.quality_weight) and 0.0 <= args.quality_weight <= 1.0):
        raise InvalidArgument("quality_weight", f"must be in [0, 1], got {args.quality_weight}")
    if args.policy is not None and not args.policy.is_dir():
        raise InvalidArgument("policy", f"{args.policy} is not a checkpoint directory")
    # Imported only now: a bad argument above is reported without paying for torch.
    import numpy as np
    import torch

    from barp_sidecar.domain import ExplorationMode
    from barp_sidecar.policy.builtin import builtin_policy_dir
    from barp_sidecar.policy.checkpoint import load_checkpoint
    from barp_sidecar.policy.encoder import build_encoder
    from barp_sidecar.policy.loading import encoder_model_for
    from barp_sidecar.policy.mask import allowed_mask
    from barp_sidecar.routing.exploration import choose_model

    policy = load_checkpoint(args.policy or builtin_policy_dir())
    models = policy.manifest.models
    # The sidecar's own rules: the same mask, encoder choice and model choice as a Route.
    mask = allowed_mask(models, tuple(args.allowed_model))
    identity = policy.manifest.encoder
    encoder = build_encoder(identity.settings(encoder_model_for(identity, args.encoder_model), args.device))
    encoder.load()
    if encoder.dim != identity.dim:
        raise InvalidArgument("encoder_model", f"dim {encoder.dim} != the policy's {identity.dim}")
    embedding = torch.as_tensor(encoder.encode([args.prompt]))
    allowed = None if mask.all() else torch.from_numpy(mask).reshape(1, -1)
    with torch.inference_mode():
        logits = policy.network(embedding, torch.tensor([args.quality_weight]), allowed)[0].float()
    p = torch.softmax(logits, dim=-1).numpy().astype(np.float64)
    mode = ExplorationMode.SAMPLE if args.sample else ExplorationMode.GREEDY
    index, propensity = choose_model(p, mask, mode, 0.0, np.random.default_rng(args.seed))
    decision: dict[str, object] = {
        "model": models[index],
        "propensity": propensity,
        "exploration": mode.value,
        "propensity_note": SAMPLE_NOTE if args.sample else GREEDY_NOTE,
        "probabilities": {model: round(float(v), 6) for model, v in zip(models, p, strict=True)},
        "policy_version": policy.version,
        "policy_sha256": policy.manifest.weights_sha256,
        "quality_weight": args.quality_weight,
        "encoder": policy.manifest.encoder.encoder_id,
    }
    if args.explain:
        allowed_names = {model for model, ok in zip(models, mask, strict=True) if ok}
        decision["explanation"] = explanation(models, logits.tolist(), p.tolist(), allowed_names)
    return decision


def explanation(
    models: tuple[str, ...], logits: list[float], probabilities: list[float], allowed: set[str]
) -> list[dict[str, Any]]:
    """Per model, most probable first: the policy's logit for (prompt, w), its softmax probability over
    the allowed models (0 for masked ones), whether it was allowed, and its rank."""
    order = sorted(range(len(models)), key=lambda i: -probabilities[i])
    return [
        {
            "rank": rank,
            "model": models[i],
            "allowed": models[i] in allowed,
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
