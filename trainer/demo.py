"""``make demo``: a trainer, a sidecar and a traffic generator, live, from a cold uniform policy.

Starts ``barp-trainer serve`` and ``barp-sidecar serve`` as real subprocesses on 127.0.0.1 (ports picked by
the OS), then replays RouterBench training prompts (or a JSONL log) as traffic: ``Route`` at the demo's
quality weight with the sidecar's default exploration (``--exploration``, default ``sample``), then
``ReportOutcome`` with the real score and cost of the model the sidecar chose. The trainer learns from
those bandit events, publishes versions through its evaluation gate, and the sidecar hot-swaps them.
One line is printed per published version.

At the end, the last published version decides greedily (through the sidecar) on held-out prompts that were
never replayed, and the demo writes ``<out>/summary.json``, ``<out>/served.csv`` and
``<out>/learning_curve.png`` (rolling mean reward of served decisions vs the best single model).

Owns only orchestration and reporting; learning and serving are the real processes'. The RouterBench
reader here is a minimal one (5-shot CSVs: prompt is a stringified Python list; rows with a blank score
are skipped) so the demo does not depend on the offline package.

    python -m trainer.demo --data ../shared/data/routerbench --out demo-out
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from barp_sidecar.errors import DataError
from barp_sidecar.gen.barp.v1 import router_pb2, router_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from barp_sidecar.policy.checkpoint import read_manifest
from barp_sidecar.policy.encoder import BUILTIN_MODEL_ID
from barp_sidecar.policy.reward import reward_array
from trainer.offline.datasets import RoutingTable, load_table

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Row:
    prompt: str
    task: str
    scores: np.ndarray  # [K] in catalogue order
    costs_usd: np.ndarray  # [K]


def rows_of_split(table: RoutingTable, split: str, models: tuple[str, ...]) -> list[Row]:
    """The ``split`` rows of a routing table, with scores and costs in the demo catalogue's order."""
    columns = [table.models.index(m) for m in models]
    part = table.where(split=split)
    return [
        Row(prompt, task, part.quality[i, columns], part.cost_usd[i, columns])
        for i, (prompt, task) in enumerate(zip(part.prompts, part.tasks, strict=True))
    ]


# -- processes -------------------------------------------------------------------------------------------


class Process:
    """A child process whose combined output goes to a log file; waits for a JSON log event to start."""

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self, ready_event: str, timeout_s: float) -> dict[str, object]:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(self.argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        pattern = re.compile(rb'\{[^\n]*"event": "' + ready_event.encode() + rb'"[^\n]*\}')
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise SystemExit(f"{self.name} exited ({self.popen.returncode}); see {self.log_path}")
            match = pattern.search(self.log_path.read_bytes())
            if match:
                return dict(json.loads(match.group(0)))
            time.sleep(0.1)
        raise SystemExit(f"{self.name} did not start within {timeout_s:.0f}s; see {self.log_path}")

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)


def trainer_yaml(data_dir: Path, models: tuple[str, ...], tau_usd: float, args: argparse.Namespace) -> str:
    listed = ", ".join(json.dumps(m) for m in models)
    return (
        f"server:\n  host: 127.0.0.1\n  port: 0\n  grace_s: 2\n"
        f"storage:\n  data_dir: {json.dumps(str(data_dir))}\n"
        "metrics:\n  enabled: false\n"
        "learner:\n  initial_policy: cold\n"
        f"  arms: [{listed}]\n  encoder_id: {BUILTIN_MODEL_ID}\n  encoder_dim: 384\n"
        f"  encoder_max_seq_length: {args.max_seq_length}\n  encoder_truncation: tail\n"
        f"  tau_usd: {tau_usd!r}\n  batch_size: 64\n  seed: {args.seed}\n"
        f"publish:\n  every_events: {args.publish_every_events}\n  every_s: 5\n  gate_margin: 0.01\n"
    )


def sidecar_yaml(work: Path, trainer_port: int, args: argparse.Namespace) -> str:
    return (
        "server:\n  host: 127.0.0.1\n  port: 0\n  grace_s: 2\n"
        "metrics:\n  enabled: false\n"
        "admin:\n  enabled: false\n"
        f"policy:\n  checkpoint_dir: {json.dumps(str(work / 'trainer' / 'checkpoints'))}\n"
        "  device: cpu\n  cpu_threads: 2\n"
        "batching:\n  max_batch_size: 16\n  embedding_cache_entries: 20000\n"
        f"routing:\n  default_quality_weight: {args.quality_weight}\n"
        f"  default_exploration: {args.exploration}\n  epsilon: {args.epsilon}\n  seed: {args.seed}\n"
        f"rewards:\n  spool_dir: {json.dumps(str(work / 'spool'))}\n  spool_fsync_interval_ms: 5\n"
        f"trainer:\n  target: 127.0.0.1:{trainer_port}\n"
        f"  checkpoint_cache_dir: {json.dumps(str(work / 'sidecar-policies'))}\n"
        "  reconnect_initial_backoff_s: 0.2\n  reconnect_max_backoff_s: 2\n"
    )


# -- traffic and reporting -------------------------------------------------------------------------------


@dataclass
class Served:
    index: int
    at_s: float
    reward: float
    best_single_reward: float
    policy_version: int
    model: str


async def watch_versions(
    port: int, store: Path, served: list[Served], published: list[dict[str, object]], start_s: float
) -> None:
    """Print one line per published version (events served so far, the gate's estimate)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = trainer_pb2_grpc.TrainerStub(channel)
        async for announcement in stub.WatchPolicy(trainer_pb2.WatchRequest(sidecar_id="demo")):
            manifest = await asyncio.to_thread(read_manifest, store / f"v{announcement.version}")
            # "snips_candidate": manifests published before the gate's keys were renamed.
            estimate = manifest.metrics.get("gate_candidate") or manifest.metrics.get("snips_candidate") or {}
            entry = {
                "version": announcement.version,
                "events": len(served),
                "at_s": round(time.monotonic() - start_s, 1),
                "estimated_reward": estimate.get("value"),
                "ci": [estimate.get("ci_low"), estimate.get("ci_high")],
                "events_trained": manifest.training.get("events_trained", 0),
            }
            published.append(entry)
            if estimate:
                print(
                    f"  v{announcement.version:<3} published  events={len(served):<6} "
                    f"trained_on={entry['events_trained']:<6} estimated reward={estimate['value']:.3f} "
                    f"[{estimate['ci_low']:.3f}, {estimate['ci_high']:.3f}]  ({entry['at_s']}s)",
                    flush=True,
                )
            else:
                print(f"  v{announcement.version:<3} initial policy (cold, uniform)", flush=True)


async def replay(
    port: int,
    rows: list[Row],
    models: tuple[str, ...],
    quality_weight: float,
    tau_usd: float,
    passes: int,
    greedy_passes: int,
    concurrency: int,
    seed: int,
    served: list[Served],
    start_s: float,
) -> None:
    rewards = reward_array(
        np.stack([r.scores for r in rows]), np.stack([r.costs_usd for r in rows]), quality_weight, tau_usd
    )
    best_single = int(rewards.mean(axis=0).argmax())
    index = {m: i for i, m in enumerate(models)}
    rng = random.Random(seed)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        for number in range(passes):
            order = list(range(len(rows)))
            rng.shuffle(order)
            queue: asyncio.Queue[int] = asyncio.Queue()
            for i in order:
                queue.put_nowait(i)

            # The last ``greedy_passes`` passes exploit: exploration off (propensity 1, honestly logged).
            mode = router_pb2.EXPLORATION_GREEDY if number >= passes - greedy_passes else 0

            async def worker(queue: asyncio.Queue[int] = queue, mode: int = mode) -> None:
                while not queue.empty():
                    i = queue.get_nowait()
                    decision = await stub.Route(
                        router_pb2.RouteRequest(
                            prompt=rows[i].prompt,
                            preference=router_pb2.Preference(quality_weight=quality_weight),
                            exploration=mode,  # type: ignore[arg-type]
                        ),
                        timeout=120,
                    )
                    column = index[decision.model]
                    await stub.ReportOutcome(
                        router_pb2.OutcomeRequest(
                            decision_id=decision.decision_id,
                            quality=float(rows[i].scores[column]),
                            cost_usd=float(rows[i].costs_usd[column]),
                        ),
                        timeout=30,
                    )
                    served.append(
                        Served(
                            len(served),
                            time.monotonic() - start_s,
                            float(rewards[i, column]),
                            float(rewards[i, best_single]),
                            decision.policy_version,
                            decision.model,
                        )
                    )

            started = time.monotonic()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            recent = served[-len(rows) :]
            mean_served = np.mean([s.reward for s in recent])
            mean_best = np.mean([s.best_single_reward for s in recent])
            print(
                f"pass {number + 1}/{passes}: {len(rows)} prompts in {time.monotonic() - started:.0f}s, "
                f"mean served reward {mean_served:.4f} "
                f"(best single model {models[best_single]}: {mean_best:.4f})",
                flush=True,
            )


async def greedy_on_heldout(
    port: int,
    rows: list[Row],
    models: tuple[str, ...],
    quality_weight: float,
    tau_usd: float,
    concurrency: int,
) -> tuple[float, float, str, list[int]]:
    """(policy reward, best single model reward, best model, versions that answered) on held-out rows."""
    rewards = reward_array(
        np.stack([r.scores for r in rows]), np.stack([r.costs_usd for r in rows]), quality_weight, tau_usd
    )
    index = {m: i for i, m in enumerate(models)}
    chosen = np.zeros(len(rows), dtype=int)
    versions: set[int] = set()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(len(rows)):
            queue.put_nowait(i)

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                decision = await stub.Route(
                    router_pb2.RouteRequest(
                        prompt=rows[i].prompt,
                        preference=router_pb2.Preference(quality_weight=quality_weight),
                        exploration=router_pb2.EXPLORATION_GREEDY,
                    ),
                    timeout=120,
                )
                chosen[i] = index[decision.model]
                versions.add(decision.policy_version)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    policy_reward = float(rewards[np.arange(len(rows)), chosen].mean())
    best = int(rewards.mean(axis=0).argmax())
    return policy_reward, float(rewards[:, best].mean()), models[best], sorted(versions)


async def wait_until_serving(port: int, version: int, timeout_s: float) -> None:
    """Poll Route until the sidecar answers with ``version`` (the last published one)."""
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        while time.monotonic() < deadline:
            response = await stub.Route(
                router_pb2.RouteRequest(prompt="version probe", exploration=router_pb2.EXPLORATION_GREEDY)
            )
            if response.policy_version == version:
                return
            await asyncio.sleep(0.2)
    raise SystemExit(f"the sidecar did not switch to v{version} within {timeout_s}s")


def plot(
    path: Path, served: list[Served], published: list[dict[str, object]], window: int, title: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rewards = np.array([s.reward for s in served])
    baseline = np.array([s.best_single_reward for s in served])
    kernel = np.ones(window) / window
    x = np.arange(window, len(served) + 1)
    fig, ax = plt.subplots(figsize=(9, 4.8), dpi=120)
    ax.plot(x, np.convolve(rewards, kernel, mode="valid"), label=f"online policy (served, rolling {window})")
    ax.plot(
        x,
        np.convolve(baseline, kernel, mode="valid"),
        label="best single model on the same prompts",
        linestyle="--",
    )
    for entry in published[1:]:
        ax.axvline(int(entry["events"]), color="grey", alpha=0.25, linewidth=0.8)  # type: ignore[call-overload]
    ax.set_xlabel("served decisions (grey lines: published versions)")
    ax.set_ylabel("reward  w·q − (1−w)·min(c/τ, 1)")
    ax.set_title(title)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


async def run_demo(args: argparse.Namespace) -> int:
    out: Path = args.out
    work = out / "work"
    if work.exists():
        import shutil

        shutil.rmtree(work)
    work.mkdir(parents=True)
    start_s = time.monotonic()
    # The same loaders as offline training (trainer.offline.datasets): RouterBench CSVs or a JSONL log,
    # train split replayed as traffic, test split held out.
    try:
        table = load_table(args.log if args.log is not None else args.data)
    except DataError as exc:
        raise SystemExit(str(exc)) from exc
    # Every model of the table by default (RouterBench: 11): the reward-model learner separates them.
    models = tuple(args.models.split(",")) if args.models else table.models
    unknown = sorted(set(models) - set(table.models))
    if unknown:
        raise SystemExit(f"--models: unknown {unknown}; the data has {list(table.models)}")
    traffic = rows_of_split(table, "train", models)
    heldout = rows_of_split(table, "test", models)
    if not traffic or not heldout:
        raise SystemExit(f"{table.source}: needs rows in both the train and the test split")
    all_costs = table.where(split="train").cost_usd.ravel()
    if args.max_prompts:
        traffic = random.Random(args.seed).sample(traffic, min(args.max_prompts, len(traffic)))
        heldout = random.Random(args.seed + 1).sample(heldout, min(args.max_prompts, len(heldout)))
    tau_usd = float(np.percentile(all_costs, 95))
    print(
        f"demo: {len(traffic)} traffic prompts x {args.passes} passes, {len(heldout)} held-out prompts, "
        f"{len(models)} models, w_q={args.quality_weight}, tau=${tau_usd:.5f}, "
        f"exploration={args.exploration} (last {args.greedy_passes} pass(es) greedy)",
        flush=True,
    )

    (work / "trainer.yaml").write_text(trainer_yaml(work / "trainer", models, tau_usd, args))
    trainer = Process(
        "trainer",
        [sys.executable, "-m", "trainer.service.main", "--config", str(work / "trainer.yaml")],
        out / "trainer.log",
    )
    sidecar: Process | None = None
    served: list[Served] = []
    published: list[dict[str, object]] = []
    watcher: asyncio.Task[None] | None = None
    try:
        started = await asyncio.to_thread(trainer.start, "trainer_started", 120)
        trainer_port = int(started["port"])  # type: ignore[call-overload]
        (work / "sidecar.yaml").write_text(sidecar_yaml(work, trainer_port, args))
        sidecar = Process(
            "sidecar",
            [sys.executable, "-m", "barp_sidecar.cli", "serve", "--config", str(work / "sidecar.yaml")],
            out / "sidecar.log",
        )
        ready = await asyncio.to_thread(sidecar.start, "server_started", 180)
        sidecar_port = int(ready["port"])  # type: ignore[call-overload]
        print(f"trainer on :{trainer_port}, sidecar on :{sidecar_port} ({time.monotonic() - start_s:.0f}s)")
        store = work / "trainer" / "checkpoints"
        watcher = asyncio.create_task(watch_versions(trainer_port, store, served, published, start_s))
        await replay(
            sidecar_port,
            traffic,
            models,
            args.quality_weight,
            tau_usd,
            args.passes,
            args.greedy_passes,
            args.concurrency,
            args.seed,
            served,
            start_s,
        )
        # Let the trainer consume the tail of the traffic and make its last gate decision (it evaluates
        # every 5 s while new events arrive): wait until no version was announced for ``settle_s``.
        traffic_end = time.monotonic()
        deadline = traffic_end + 120
        while time.monotonic() < deadline:
            last_at = max([traffic_end] + [start_s + float(p["at_s"]) for p in published])  # type: ignore[arg-type]
            if time.monotonic() - last_at >= args.settle_s:
                break
            await asyncio.sleep(0.2)
        last_version = int(published[-1]["version"]) if published else 1  # type: ignore[call-overload]
        await wait_until_serving(sidecar_port, last_version, 60)
        policy_reward, best_reward, best_model, versions = await greedy_on_heldout(
            sidecar_port, heldout, models, args.quality_weight, tau_usd, args.concurrency
        )
    finally:
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        if sidecar is not None:
            await asyncio.to_thread(sidecar.stop)
        await asyncio.to_thread(trainer.stop)

    summary = {
        "events": len(served),
        "versions_published": max(0, len(published) - 1),
        "quality_weight": args.quality_weight,
        "final_policy_reward": round(policy_reward, 6),
        "best_single_model_reward": round(best_reward, 6),
        "best_single_model": best_model,
        "final_policy_version": last_version,
        "heldout_prompts": len(heldout),
        "heldout_answered_by_versions": versions,
        "models": list(models),
        "tau_usd": tau_usd,
        "exploration": args.exploration,
        "epsilon": args.epsilon,
        "passes": args.passes,
        "seconds": round(time.monotonic() - start_s, 1),
        "published": published,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    with (out / "served.csv").open("w") as handle:
        handle.write("index,at_s,reward,best_single_reward,policy_version,model\n")
        for s in served:
            handle.write(
                f"{s.index},{s.at_s:.3f},{s.reward:.6f},{s.best_single_reward:.6f},{s.policy_version},{s.model}\n"
            )
    window = max(50, min(500, len(served) // 10))
    plot(
        out / "learning_curve.png",
        served,
        published,
        window,
        f"Online BaRP from a cold start, w_q={args.quality_weight} "
        f"(held-out greedy: {policy_reward:.3f} vs best single {best_reward:.3f})",
    )
    verdict = "overtakes" if policy_reward > best_reward else "does NOT overtake"
    print(
        f"held-out ({len(heldout)} prompts never replayed): policy v{last_version} greedy reward "
        f"{policy_reward:.4f} vs best single model ({best_model}) {best_reward:.4f}: "
        f"the online policy {verdict} it",
        flush=True,
    )
    print(f"wrote {out / 'summary.json'}, {out / 'learning_curve.png'} in {summary['seconds']}s", flush=True)
    return 0 if policy_reward > best_reward or not args.require_overtake else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, default=Path("../shared/data/routerbench"), help="RouterBench CSVs"
    )
    parser.add_argument("--log", type=Path, help="replay a JSONL log instead (70%% traffic, 30%% held out)")
    parser.add_argument("--out", type=Path, default=Path("demo-out"))
    parser.add_argument("--models", help="comma-separated catalogue (default: 5 RouterBench models)")
    parser.add_argument("--quality-weight", type=float, default=0.8)
    parser.add_argument(
        "--exploration",
        default="sample",
        choices=("greedy", "sample", "epsilon_greedy"),
        help="the sidecar's default exploration (sample: draw from π, whose shape the trainer sets)",
    )
    parser.add_argument("--epsilon", type=float, default=0.2, help="ε when --exploration epsilon_greedy")
    parser.add_argument("--passes", type=int, default=5, help="passes over the traffic prompts")
    parser.add_argument("--greedy-passes", type=int, default=1, help="last passes without exploration")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-prompts", type=int, default=0, help="sample at most this many (0 = all)")
    parser.add_argument("--max-seq-length", type=int, default=128, help="encoder tokens (tail-truncated)")
    parser.add_argument("--publish-every-events", type=int, default=250)
    parser.add_argument(
        "--settle-s", type=float, default=12.0, help="quiet time (no new version) before the held-out run"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--require-overtake", action="store_true", help="exit 1 if the policy does not win")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 <= args.quality_weight <= 1:
        parser.error("--quality-weight must be in [0, 1]")
    if not 0 <= args.epsilon <= 1:
        parser.error("--epsilon must be in [0, 1]")
    if args.passes < 1 or args.concurrency < 1:
        parser.error("--passes and --concurrency must be >= 1")
    if not 0 <= args.greedy_passes < args.passes:
        parser.error("--greedy-passes must be in [0, --passes)")
    if args.log is None and not args.data.is_dir():
        parser.error(f"--data {args.data}: no such directory")
    return asyncio.run(run_demo(args))


if __name__ == "__main__":
    sys.exit(main())
