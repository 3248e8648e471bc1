"""``barp-trainer replay``: the online trainer (and optionally Vowpal Wabbit) replayed offline, side by side.

Owns the command line, loading and embedding the data (through the offline embedding cache), running
every learner × seed on the identical stream, and the outputs: a table on stdout, ``--json`` (keys pinned
by tests) and ``--plot`` (learning curve). The protocol lives in ``simulation.py``; the trainer is the
service's own ``TrainingLoop`` (``trainer_router.py``). Bad input exits 2 with one line naming the problem.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch

from barp_sidecar.domain import ExplorationMode
from barp_sidecar.errors import ConfigError, DataError
from barp_sidecar.policy.encoder import BUILTIN_MODEL, TRUNCATION_SIDES, EncoderSettings
from trainer.offline.datasets import RoutingTable, load_table
from trainer.offline.features import default_cache_dir, embed_prompts
from trainer.offline.train_command import tau_from_costs
from trainer.replay.simulation import (
    PoolEvent,
    ReplayData,
    RunResult,
    mean_curve,
    references,
    run_replay,
    starting_pool,
)
from trainer.replay.trainer_router import TrainerRouter
from trainer.service.main import configure_logging
from trainer.service.settings import ARCHITECTURE_KINDS, TrainerSettings, load_trainer_settings

PEERS = ("vw",)


class ReplayInputError(ValueError):
    """Bad command-line input or data; the message names the option or file."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="RouterBench CSV dir or JSONL with splits")
    parser.add_argument("--models", default="", help="comma-separated model names (default: all)")
    parser.add_argument("--passes", type=int, default=4, help="passes over the training rows (reshuffled)")
    parser.add_argument(
        "--quality-weight", default="0.8", help="w_q of every event, or 'random' (w_q ~ U(0,1) per event)"
    )
    parser.add_argument(
        "--exploration",
        default="sample",
        choices=[m.value for m in ExplorationMode],
        help="the sidecar's exploration mode for the trainer's decisions",
    )
    parser.add_argument("--epsilon", type=float, default=0.2, help="ε of epsilon_greedy")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (e.g. 0,1,2,3,4)")
    parser.add_argument("--every", type=int, default=500, help="events between checkpoints")
    parser.add_argument(
        "--learners",
        default="reward_model",
        help=f"trainer network kinds to replay, comma-separated ({', '.join(ARCHITECTURE_KINDS)})",
    )
    parser.add_argument("--peer", choices=PEERS, action="append", default=[], help="add a peer learner")
    parser.add_argument("--config", type=Path, default=None, help="trainer YAML (learner/publish settings)")
    parser.add_argument(
        "--publish-every-events",
        type=int,
        default=250,
        help="evaluate/publish every N training events (replaces publish.every_events: a replay has no "
        "clock, and in service the every_s timer publishes at least this often above ~4 events/s)",
    )
    parser.add_argument(
        "--add-model",
        action="append",
        default=[],
        metavar="NAME@EVENTS",
        help="model-pool schedule: NAME (one of --models) joins the pool before event EVENTS (repeat)",
    )
    parser.add_argument(
        "--retire-model",
        action="append",
        default=[],
        metavar="NAME@EVENTS",
        help="model-pool schedule: NAME leaves the pool (masked, later dropped) at event EVENTS (repeat)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--plot", type=Path, default=None, help="write the learning curve (PNG) here")
    parser.add_argument("--cache-dir", type=Path, default=None, help="embedding cache (default ~/.cache/…)")
    parser.add_argument("--encoder-model", default=BUILTIN_MODEL)
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument("--truncation", default="tail", choices=TRUNCATION_SIDES)


def parse_quality_weight(text: str) -> float | None:
    if text == "random":
        return None
    try:
        value = float(text)
    except ValueError:
        raise ReplayInputError(
            f"--quality-weight: expected a number in [0, 1] or 'random', not {text!r}"
        ) from None
    if not 0.0 <= value <= 1.0:
        raise ReplayInputError(f"--quality-weight: must be in [0, 1], not {value}")
    return value


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ReplayInputError(f"--seeds: expected comma-separated integers, not {text!r}") from None
    if not seeds:
        raise ReplayInputError("--seeds: at least one seed is needed")
    return seeds


def select_models(table: RoutingTable, text: str) -> tuple[str, ...]:
    """The requested models in the table's order (default all); unknown names and < 2 models are errors."""
    if not text.strip():
        wanted: tuple[str, ...] = table.models
    else:
        wanted = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in wanted if m not in table.models]
    if unknown:
        raise ReplayInputError(f"--models: unknown model(s) {unknown}; the data has {list(table.models)}")
    if len(set(wanted)) < 2:
        raise ReplayInputError(
            f"--models: routing needs at least two models, got {list(dict.fromkeys(wanted))}"
        )
    return tuple(m for m in table.models if m in wanted)


def parse_pool_schedule(args: argparse.Namespace, models: tuple[str, ...]) -> list[PoolEvent]:
    """``--add-model`` / ``--retire-model`` NAME@EVENTS, checked against the replay's models; the pool must
    keep at least two models at every point (ReplayInputError naming the option otherwise)."""
    schedule = []
    for option, action, values in (
        ("--add-model", "add", args.add_model),
        ("--retire-model", "retire", args.retire_model),
    ):
        for text in values:
            name, at, events = text.rpartition("@")[0], text.rpartition("@")[1], text.rpartition("@")[2]
            if not at or not name or not events.isdigit():
                raise ReplayInputError(
                    f"{option}: expected NAME@EVENTS (e.g. gpt-3.5-turbo-1106@3000), not {text!r}"
                )
            if name not in models:
                raise ReplayInputError(f"{option}: unknown model {name!r}; the replay has {list(models)}")
            schedule.append(PoolEvent(int(events), action, name))
    added = [p.name for p in schedule if p.action == "add"]
    if len(set(added)) != len(added):
        raise ReplayInputError("--add-model: a model can join the pool once")
    if args.peer and schedule:
        raise ReplayInputError("--peer: the peer has a fixed set of models; drop --add-model/--retire-model")
    pool = list(starting_pool(models, schedule))
    for change in sorted(schedule, key=lambda p: (p.events, p.action != "add")):
        if len(pool) < 2:
            break
        if change.action == "add":
            pool.append(change.name)
        elif change.name not in pool:
            raise ReplayInputError(
                f"--retire-model: {change.name!r} is not in the pool at event {change.events}"
            )
        else:
            pool.remove(change.name)
    if len(pool) < 2 or len(starting_pool(models, schedule)) < 2:
        raise ReplayInputError(
            "--add-model/--retire-model: the pool must keep at least two models throughout"
        )
    return sorted(schedule, key=lambda p: (p.events, p.action != "add"))


def load_replay_data(args: argparse.Namespace) -> ReplayData:
    if not args.data.exists():
        raise ReplayInputError(f"--data: {args.data} does not exist")
    table = load_table(args.data)
    models = select_models(table, args.models)
    parse_pool_schedule(args, models)  # checked before the (slow) embedding step
    train, test = table.where(split="train"), table.where(split="test")
    for name, part in (("train", train), ("test", test)):
        if len(part) == 0:
            raise ReplayInputError(f"--data: {args.data} has no {name} rows (split '{name}')")
    columns = [table.models.index(m) for m in models]
    settings = EncoderSettings(
        model=args.encoder_model, max_seq_length=args.max_seq_length, truncation=args.truncation
    )
    cache_dir = args.cache_dir or default_cache_dir()
    vectors, _, _ = embed_prompts(list(train.prompts) + list(test.prompts), settings, cache_dir)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return ReplayData(
        names=models,
        tau_usd=tau_from_costs(train.cost_usd[:, columns]),
        train_x=vectors[: len(train)],
        train_quality=train.quality[:, columns],
        train_cost_usd=train.cost_usd[:, columns],
        train_tasks=train.tasks,
        test_x=vectors[len(train) :],
        test_quality=test.quality[:, columns],
        test_cost_usd=test.cost_usd[:, columns],
        test_tasks=test.tasks,
    )


def trainer_settings(args: argparse.Namespace) -> TrainerSettings:
    settings = load_trainer_settings(args.config, {})
    if args.publish_every_events is not None:
        if args.publish_every_events < 1:
            raise ReplayInputError("--publish-every-events: must be >= 1")
        settings = dataclasses.replace(
            settings, publish=dataclasses.replace(settings.publish, every_events=args.publish_every_events)
        )
    return settings


def build_routers(
    args: argparse.Namespace, data: ReplayData, seed: int, schedule: list[PoolEvent] | None = None
) -> list[Any]:
    settings = trainer_settings(args)
    routers: list[Any] = []
    kinds = [k.strip() for k in args.learners.split(",") if k.strip()]
    for kind in kinds:
        if kind not in ARCHITECTURE_KINDS:
            raise ReplayInputError(f"--learners: unknown kind {kind!r} (one of {ARCHITECTURE_KINDS})")
        kind_settings = dataclasses.replace(
            settings, learner=dataclasses.replace(settings.learner, architecture_kind=kind)
        )
        routers.append(
            TrainerRouter(
                f"trainer-{kind}",
                kind_settings,
                data.names,
                data.tau_usd,
                seed,
                ExplorationMode(args.exploration),
                args.epsilon,
                data.train_x.shape[1],
                pool=starting_pool(data.names, schedule or []),
            )
        )
    for peer in args.peer:
        if peer == "vw":
            from trainer.replay.vw_peer import VowpalWabbitRouter

            routers.append(VowpalWabbitRouter(data.names, seed, data.tau_usd))
    return routers


def format_table(refs: dict[str, float], runs: list[RunResult]) -> str:
    """Mean over seeds per learner and checkpoint, then the references."""
    by_learner: dict[str, list[RunResult]] = {}
    for run in runs:
        by_learner.setdefault(run.learner, []).append(run)
    lines = [
        "| learner | events | greedy held-out | served | published | top model share |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for learner, group in by_learner.items():
        events, greedy = mean_curve(group, "greedy_reward")
        _, served = mean_curve(group, "served_reward")
        _, published = mean_curve(group, "published_versions")
        for i, count in enumerate(events):
            top = float(np.mean([max(run.checkpoints[i].share.values()) for run in group]))
            cells = [learner, str(count), f"{greedy[i]:.4f}", f"{served[i]:.4f}", f"{published[i]:.1f}"]
            lines.append("| " + " | ".join([*cells, f"{top:.2f}"]) + " |")
    lines.append("")
    lines.append(
        f"references (test rows): best single {refs['best_single']:.4f}, "
        f"per-task best {refs['per_task_best']:.4f}, oracle {refs['oracle']:.4f}"
    )
    for learner, group in by_learner.items():
        if group[0].gate:
            totals = {k: sum(run.gate.get(k, 0) for run in group) for k in group[0].gate}
            lines.append(
                f"gate ({learner}, {len(group)} seeds): published {totals['published']}, "
                f"rejected {totals['rejected']}, skipped {totals['skipped']}"
            )
    return "\n".join(lines)


def format_pool_table(data: ReplayData, schedule: list[PoolEvent], runs: list[RunResult]) -> str:
    """Per checkpoint (mean over seeds): the greedy reward and, for each added model, its share of the
    greedy decisions overall and on the task where the per-task best (at the run's w_q) is that model."""
    added = [p.name for p in schedule if p.action == "add"]
    tasks = sorted({t for run in runs for c in run.checkpoints for t in (c.task_share or {})})
    header = ["learner", "events", "greedy held-out"]
    for model in added:
        header += [f"{model} share"] + [f"{model} on {task}" for task in tasks]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    by_learner: dict[str, list[RunResult]] = {}
    for run in runs:
        by_learner.setdefault(run.learner, []).append(run)
    for learner, group in by_learner.items():
        events, greedy = mean_curve(group, "greedy_reward")
        for i, count in enumerate(events):
            cells = [learner, str(count), f"{greedy[i]:.4f}"]
            for model in added:
                cells.append(f"{np.mean([r.checkpoints[i].share[model] for r in group]):.2f}")
                for task in tasks:
                    share = [(r.checkpoints[i].task_share or {}).get(task, {}).get(model, 0.0) for r in group]
                    cells.append(f"{np.mean(share):.2f}")
            lines.append("| " + " | ".join(cells) + " |")
    changes = ", ".join(f"{p.action} {p.name} at {p.events}" for p in schedule)
    lines.append(f"pool schedule: {changes}; starting pool {len(starting_pool(data.names, schedule))} models")
    return "\n".join(lines)


def write_plot(refs: dict[str, float], runs: list[RunResult], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 5.5))
    by_learner: dict[str, list[RunResult]] = {}
    for run in runs:
        by_learner.setdefault(run.learner, []).append(run)
    for index, (learner, group) in enumerate(by_learner.items()):
        colour = f"C{index}"
        events, greedy = mean_curve(group, "greedy_reward")
        _, served = mean_curve(group, "served_reward")
        axis.plot(events, greedy, color=colour, marker="o", ms=3, label=f"{learner}: greedy, held out")
        axis.plot(events, served, color=colour, ls=":", label=f"{learner}: served (with exploration)")
    for (name, value), style in zip(refs.items(), ("--", "-.", ":"), strict=True):
        axis.axhline(value, color="grey", ls=style, lw=1, label=f"{name.replace('_', ' ')} {value:.3f}")
    axis.set_xlabel("events streamed")
    axis.set_ylabel("mean reward")
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=8, loc="lower right")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run(args: argparse.Namespace) -> int:
    # The loop logs every gate decision at info; the replay reports them in its table instead. Restored on
    # return, so an in-process caller (tests) keeps its own logging.
    previous_logging = structlog.get_config()
    previous_threads = torch.get_num_threads()
    configure_logging("warning")
    torch.set_num_threads(1)  # small matrices: one thread is fastest and keeps shared machines usable
    try:
        return _run(args)
    finally:
        structlog.configure(**previous_logging)
        torch.set_num_threads(previous_threads)


def _run(args: argparse.Namespace) -> int:
    try:
        quality_weight = parse_quality_weight(args.quality_weight)
        seeds = parse_seeds(args.seeds)
        if args.passes < 1:
            raise ReplayInputError("--passes: must be >= 1")
        if args.every < 1:
            raise ReplayInputError("--every: must be >= 1")
        if not 0.0 <= args.epsilon <= 1.0:
            raise ReplayInputError("--epsilon: must be in [0, 1]")
        trainer_settings(args)  # validate the config before the (slow) embedding step
        data = load_replay_data(args)
        schedule = parse_pool_schedule(args, data.names)
    except (ReplayInputError, ConfigError, DataError) as exc:
        print(f"barp-trainer replay: {exc}", file=sys.stderr)
        return 2
    refs = references(data, quality_weight)
    runs: list[RunResult] = []
    for seed in seeds:
        for router in build_routers(args, data, seed, schedule):
            started = time.monotonic()
            result = run_replay(router, data, args.passes, quality_weight, seed, args.every, schedule)
            if isinstance(router, TrainerRouter):
                result.gate = router.gate_counts()
            router.close()
            runs.append(result)
            last = result.checkpoints[-1]
            print(
                f"{router.name} seed {seed}: greedy {last.greedy_reward:.4f}, served "
                f"{last.served_reward:.4f} after {last.events} events ({time.monotonic() - started:.0f} s)",
                file=sys.stderr,
            )
    print(format_table(refs, runs))
    if schedule:
        print(format_pool_table(data, schedule, runs))
    if args.json is not None:
        document = {"references": refs, "runs": [r.to_json() for r in runs]}
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    if args.plot is not None:
        weight = "random w_q" if quality_weight is None else f"w_q = {quality_weight}"
        title = f"{len(data.names)} models, {weight}, {args.passes} passes, {len(seeds)} seed(s), mean"
        write_plot(refs, runs, args.plot, title)
    return 0
