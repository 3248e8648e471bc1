"""``barp-trainer offline``: train a BaRP policy on a routing table's train split and write a checkpoint.

Owns the command's arguments and the composition load -> embed (cached) -> τ -> train -> save; the
pieces live in their own modules. The checkpoint directory follows DESIGN §4 (policy.safetensors +
manifest.json) and records τ, the encoder identity, the training config, the data digest and the seed;
its calibration.safetensors holds evenly spaced training-prompt embeddings (policy/calibration.py).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from barp_sidecar.errors import DataError
from barp_sidecar.policy.calibration import CalibrationSet, select_calibration
from barp_sidecar.policy.checkpoint import EncoderIdentity, PolicyManifest, load_checkpoint, save_checkpoint
from barp_sidecar.policy.encoder import BUILTIN_MODEL, TRUNCATION_SIDES, EncoderSettings
from barp_sidecar.policy.network import PolicyNetwork
from trainer.offline.datasets import RoutingTable, load_tables
from trainer.offline.evaluate_command import evaluate_table, summary_lines
from trainer.offline.features import default_cache_dir, embed_table, progress_bar
from trainer.offline.preferences import PREFERENCE_SAMPLINGS
from trainer.offline.reinforce import BASELINES, OfflineTrainingConfig, train_offline
from trainer.offline.reward_model_fit import REGRESSORS, RewardModelFitConfig, fit_reward_model
from trainer.offline.simulator import BanditSimulator

TAU_PERCENTILE = 95.0
ARCHITECTURES = ("barp", "reward_model")
TRAINING_METHODS = {
    "barp": "offline REINFORCE on simulated bandit feedback (BaRP)",
    "reward_model": "full-information per-model quality/normalised-cost regression (reward_model)",
}


def tau_from_costs(
    cost_usd: np.ndarray, percentile: float = TAU_PERCENTILE, observed: np.ndarray | None = None
) -> float:
    """τ = the given percentile of every observed (prompt, model) cost in the training table."""
    costs = np.asarray(cost_usd, dtype=np.float64)
    if observed is not None:
        costs = costs[np.asarray(observed, dtype=bool)]
    tau = float(np.percentile(costs, percentile))
    if not tau > 0:
        raise ValueError("training costs are all zero: τ would be 0")
    return tau


def table_digest(table: RoutingTable) -> str:
    digest = hashlib.sha256()
    digest.update("\x1f".join(table.models).encode())
    for prompt, task in zip(table.prompts, table.tasks, strict=True):
        digest.update(hashlib.sha256(prompt.encode()).digest() + task.encode())
    digest.update(np.ascontiguousarray(table.quality).tobytes())
    digest.update(np.ascontiguousarray(table.cost_usd).tobytes())
    return digest.hexdigest()


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``offline`` and ``reproduce``."""
    defaults = OfflineTrainingConfig()
    parser.add_argument(
        "--data",
        type=Path,
        nargs="+",
        required=True,
        help="RouterBench CSV dir, .pkl or .jsonl; several sources may have different models",
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="embedding cache (default ~/.cache/…)")
    parser.add_argument(
        "--encoder-model", default=BUILTIN_MODEL, help="sentence-transformers name/path or hash:<dim>"
    )
    parser.add_argument("--max-seq-length", type=int, default=256, help="tokens per prompt incl. [CLS]/[SEP]")
    parser.add_argument("--truncation", choices=TRUNCATION_SIDES, default="tail", help="which tokens to keep")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--baseline", choices=BASELINES, default=defaults.baseline)
    parser.add_argument(
        "--preference-sampling", choices=PREFERENCE_SAMPLINGS, default=defaults.preference_sampling
    )
    parser.add_argument("--augment-preferences", type=int, default=defaults.augment_preferences)
    parser.add_argument("--conditioning", choices=("concat", "film"), default=defaults.conditioning)
    parser.add_argument(
        "--tau-percentile", type=float, default=TAU_PERCENTILE, help="τ = this percentile of train costs"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for training (small nets: 1 is fastest on shared CPUs)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def training_config(args: argparse.Namespace, seed: int) -> OfflineTrainingConfig:
    return OfflineTrainingConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        baseline=args.baseline,
        preference_sampling=args.preference_sampling,
        augment_preferences=args.augment_preferences,
        conditioning=args.conditioning,
        seed=seed,
    )


def encoder_settings(args: argparse.Namespace) -> EncoderSettings:
    return EncoderSettings(
        model=args.encoder_model, max_seq_length=args.max_seq_length, truncation=args.truncation, device="cpu"
    )


def fit_policy(
    embeddings: np.ndarray,
    table: RoutingTable,
    tau_usd: float,
    config: OfflineTrainingConfig,
    show_progress: bool,
    description: str = "train",
) -> tuple[PolicyNetwork, int]:
    """Train on bandit feedback simulated from ``table``; returns (network, number of reveals)."""
    simulator = BanditSimulator(table)
    with progress_bar(total=config.steps, desc=description, unit="step", enabled=show_progress) as bar:

        def progress(step: int, stats: dict[str, float]) -> None:
            bar.update(1)
            if step % 100 == 0:
                bar.set_postfix(reward=f"{stats['reward']:.3f}", entropy=f"{stats['entropy']:.2f}")

        network = train_offline(embeddings, simulator, tau_usd, config, progress)
    return network, simulator.reveals


def positive_float(text: str) -> float:
    """argparse type: a float > 0 (argparse then exits 2 naming the option)."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def add_architecture_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``offline`` (and the research harnesses) that choose what is trained."""
    defaults = RewardModelFitConfig()
    architecture_help = (
        "barp: REINFORCE on simulated bandit feedback; reward_model: per-model quality/cost regression "
        "on the full table (observed outcomes only)"
    )
    parser.add_argument("--architecture", choices=ARCHITECTURES, default="barp", help=architecture_help)
    parser.add_argument(
        "--regressor", choices=REGRESSORS, default=defaults.regressor, help="reward_model only"
    )
    scale_help = "reward_model: s in π ∝ exp(s·r̂) when sampling"
    parser.add_argument(
        "--exploration-scale", type=positive_float, default=defaults.exploration_scale, help=scale_help
    )


def train_network(
    args: argparse.Namespace,
    embeddings: np.ndarray,
    table: RoutingTable,
    tau_usd: float,
    seed: int,
    show_progress: bool,
) -> tuple[PolicyNetwork, OfflineTrainingConfig | RewardModelFitConfig, dict[str, Any]]:
    """(network, its config, facts for the manifest) for ``--architecture``."""
    if args.architecture == "reward_model":
        fit_config = RewardModelFitConfig(
            regressor=args.regressor, exploration_scale=args.exploration_scale, seed=seed
        )
        network, facts = fit_reward_model(embeddings, table, tau_usd, fit_config)
        return network, fit_config, {"fit": facts}
    config = training_config(args, seed)
    network, reveals = fit_policy(embeddings, table, tau_usd, config, show_progress)
    return network, config, {"bandit_reveals": reveals}


def build_manifest(
    network: PolicyNetwork,
    table: RoutingTable,
    settings: EncoderSettings,
    encoder_id: str,
    dim: int,
    tau_usd: float,
    config: OfflineTrainingConfig | RewardModelFitConfig,
    extra: dict[str, Any],
) -> PolicyManifest:
    return PolicyManifest(
        version=1,
        models=table.models,
        encoder=EncoderIdentity.from_settings(encoder_id, dim, settings),
        tau_usd=tau_usd,
        architecture=network.architecture,
        training={
            "method": TRAINING_METHODS[network.architecture.kind],
            "config": config.to_dict(),
            "data": table.source,
            "data_sha256": table_digest(table),
            "rows": len(table),
            "tasks": list(table.task_names),
            "skipped_rows": table.skipped_rows,
            **extra,
        },
    )


def write_checkpoint(
    out: Path,
    network: PolicyNetwork,
    manifest: PolicyManifest,
    force: bool,
    calibration: CalibrationSet | None = None,
) -> PolicyManifest:
    """Save to ``out`` with its calibration set; with ``force`` an existing checkpoint there is replaced
    (never half-written)."""
    out = Path(out)
    if not out.exists():
        return save_checkpoint(out, network, manifest, calibration)
    if not force:
        raise FileExistsError(f"{out} exists; pass --force to replace it")
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.new.", dir=out.parent)) / "checkpoint"
    final = save_checkpoint(staging, network, manifest, calibration)
    shutil.rmtree(out)
    staging.rename(out)
    shutil.rmtree(staging.parent, ignore_errors=True)
    return final


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser)
    add_architecture_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    parser.add_argument("--tasks", nargs="+", default=None, help="train only on these tasks (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="replace an existing checkpoint at --out")


def run(args: argparse.Namespace) -> int:
    # Checked before minutes of embedding and training, not after.
    if Path(args.out).exists() and not args.force:
        raise FileExistsError(f"--out {args.out} exists; pass --force to replace it")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    started = time.monotonic()
    full = load_tables(args.data)
    table = full.where(split="train", tasks=args.tasks)
    if len(table) == 0:
        raise DataError(f"{full.source}: no training rows for tasks {args.tasks or 'all'}")
    settings = encoder_settings(args)
    embeddings, encoder_id, dim = embed_table(
        table, settings, args.cache_dir or default_cache_dir(), not args.no_progress
    )
    torch.set_num_threads(args.threads)
    tau_usd = tau_from_costs(table.cost_usd, args.tau_percentile, table.observed_mask)
    tau_by_source = {
        source: tau_from_costs(part.cost_usd, args.tau_percentile, part.observed_mask)
        for source in dict.fromkeys(table.sources)
        for part in [table.from_source(source)]
    }
    network, config, facts = train_network(args, embeddings, table, tau_usd, args.seed, not args.no_progress)
    manifest = build_manifest(
        network,
        table,
        settings,
        encoder_id,
        dim,
        tau_usd,
        config,
        {
            "tau_percentile": args.tau_percentile,
            "tau_usd_by_source": tau_by_source,
            "sources": [str(p) for p in args.data],
            **facts,
            "seed": args.seed,
        },
    )
    # The training prompts' own embeddings: every load and swap dry-runs the policy on them.
    final = write_checkpoint(args.out, network, manifest, args.force, select_calibration(embeddings))
    print(
        f"wrote {args.out} (rows={len(table)}, tasks={list(table.task_names)}, τ=${tau_usd:.6g}, "
        f"sha256={final.weights_sha256[:12]}, {time.monotonic() - started:.0f}s)"
    )
    print_held_out_summary(args, full)
    return 0


def print_held_out_summary(args: argparse.Namespace, full: RoutingTable) -> None:
    """The written policy on each source's test split (same ``--tasks``), as ``evaluate`` reports it."""
    policy = load_checkpoint(args.out)
    print("held-out summary (barp-trainer evaluate for the full report):")
    for source in args.data:
        held_out = full.from_source(str(source)).where(split="test", tasks=args.tasks)
        if len(held_out) == 0:
            print(f"{source}: no test split for these tasks")
            continue
        report = evaluate_table(
            policy,
            args.out,
            held_out,
            source,
            split="test",
            cache_dir=args.cache_dir or default_cache_dir(),
            weights=[0.0, 0.5, 1.0],
            show_progress=not args.no_progress,
        )
        print(summary_lines(report, ("0.0", "0.5", "1.0")))
