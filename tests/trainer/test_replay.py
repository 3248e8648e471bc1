"""``barp-trainer replay``: the service's learner replayed deterministically; pinned JSON; bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from barp_sidecar.domain import ExplorationMode
from barp_sidecar.gen.barp.v1 import trainer_pb2
from tests.trainer.conftest import synthetic_jsonl_rows, write_jsonl
from trainer.cli import main
from trainer.replay.memory_log import MemoryEventLog
from trainer.replay.simulation import PoolEvent, ReplayData, references, run_replay, starting_pool
from trainer.replay.trainer_router import TrainerRouter
from trainer.service.settings import load_trainer_settings


def clustered_data(seed: int = 0, dim: int = 8, rows: int = 240) -> ReplayData:
    """Two clusters; model 0 is right on cluster 0, model 1 on cluster 1, model 2 is mediocre and dear."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(2, dim))
    cluster = np.arange(rows) % 2
    x = centres[cluster] + 0.1 * rng.normal(size=(rows, dim))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    quality = np.zeros((rows, 3))
    quality[cluster == 0, 0] = 1.0
    quality[cluster == 1, 1] = 1.0
    quality[:, 2] = 0.6
    cost = np.tile([0.001, 0.001, 0.004], (rows, 1))
    tasks = tuple("a" if c == 0 else "b" for c in cluster)
    test = (np.arange(rows) // 2) % 4 == 0  # both clusters in the test rows
    train = ~test
    return ReplayData(
        names=("m0", "m1", "m2"),
        tau_usd=0.004,
        train_x=x[train],
        train_quality=quality[train],
        train_cost_usd=cost[train],
        train_tasks=tuple(t for t, keep in zip(tasks, train, strict=True) if keep),
        test_x=x[test],
        test_quality=quality[test],
        test_cost_usd=cost[test],
        test_tasks=tuple(t for t, keep in zip(tasks, test, strict=True) if keep),
    )


def trainer_router(
    data: ReplayData, kind: str, seed: int = 0, pool: tuple[str, ...] | None = None
) -> TrainerRouter:
    settings = load_trainer_settings(
        None,
        {
            "BARP_TRAINER__LEARNER__ARCHITECTURE_KIND": kind,
            "BARP_TRAINER__LEARNER__BATCH_SIZE": "16",
            "BARP_TRAINER__LEARNER__HOLDOUT_EVERY": "5",
            "BARP_TRAINER__PUBLISH__EVERY_EVENTS": "64",
            "BARP_TRAINER__PUBLISH__GATE_MIN_HOLDOUT_EVENTS": "10",
            "BARP_TRAINER__LEARNER__NEW_MODEL_MIN_EVENTS": "30",
            "BARP_TRAINER__LEARNER__RETIRE_AFTER_EVENTS": "64",
        },
    )
    return TrainerRouter(
        f"trainer-{kind}",
        settings,
        data.names,
        data.tau_usd,
        seed,
        ExplorationMode.SAMPLE,
        0.0,
        data.train_x.shape[1],
        pool=pool,
    )


def test_memory_log_deduplicates_and_reads_in_order():
    log = MemoryEventLog()
    events = [trainer_pb2.RewardEvent(event_id=f"e{i}") for i in range(3)]
    assert log.append(events) == [True, True, True]
    assert log.append([events[1], trainer_pb2.RewardEvent(event_id="e3")]) == [False, True]
    assert log.end_offset == 4
    assert [(o, e.event_id) for o, e in log.read_from(2, 10)] == [(2, "e2"), (3, "e3")]


def test_references_on_clustered_data():
    data = clustered_data()
    refs = references(data, 0.8)
    # Per-task best routes each cluster to its right model: reward 0.8·1 − 0.2·0.25 = 0.75 = oracle.
    assert refs["per_task_best"] == pytest.approx(0.75)
    assert refs["oracle"] == pytest.approx(0.75)
    assert refs["best_single"] < refs["per_task_best"]


def test_reward_model_trainer_replay_learns_routing_and_is_deterministic():
    data = clustered_data()
    first = trainer_router(data, "reward_model")
    result = run_replay(first, data, passes=3, quality_weight=0.8, seed=0, every_events=180)
    gate = first.gate_counts()
    first.close()
    second = trainer_router(data, "reward_model")
    again = run_replay(second, data, passes=3, quality_weight=0.8, seed=0, every_events=180)
    second.close()
    assert result.to_json() == again.to_json()  # event-count driven: bit-for-bit reproducible
    last = result.checkpoints[-1]
    assert last.events == 3 * len(data.train_tasks)
    assert last.greedy_reward == pytest.approx(0.75)  # per-prompt routing, learned from bandit feedback
    assert last.published_versions >= 1 and gate["published"] == last.published_versions
    assert max(last.share.values()) == pytest.approx(0.5)  # both cheap models used, not collapsed


def test_random_preferences_score_over_the_grid():
    data = clustered_data()
    router = trainer_router(data, "reward_model")
    result = run_replay(router, data, passes=2, quality_weight=None, seed=1, every_events=1000)
    router.close()
    refs = references(data, None)
    assert result.checkpoints[-1].greedy_reward >= refs["per_task_best"] - 0.02


def test_cli_json_has_exactly_the_pinned_keys(tmp_path, capsys):
    data = write_jsonl(tmp_path / "log.jsonl", synthetic_jsonl_rows())
    out = tmp_path / "replay.json"
    plot = tmp_path / "curve.png"
    code = main(
        [
            "replay",
            "--data",
            str(data),
            "--encoder-model",
            "hash:16",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--passes",
            "1",
            "--every",
            "40",
            "--seeds",
            "0,1",
            "--json",
            str(out),
            "--plot",
            str(plot),
        ]
    )
    assert code == 0
    document = json.loads(out.read_text())
    assert set(document) == {"references", "runs"}
    assert set(document["references"]) == {"best_single", "per_task_best", "oracle"}
    assert [(r["learner"], r["seed"]) for r in document["runs"]] == [
        ("trainer-reward_model", 0),
        ("trainer-reward_model", 1),
    ]
    for run in document["runs"]:
        assert set(run) == {"learner", "seed", "checkpoints"}
        for checkpoint in run["checkpoints"]:
            assert set(checkpoint) == {
                "events",
                "greedy_reward",
                "served_reward",
                "published_versions",
                "model_share",
            }
            assert set(checkpoint["model_share"]) == {"cheap-a", "cheap-b", "big"}
            assert sum(checkpoint["model_share"].values()) == pytest.approx(1.0)
    assert plot.stat().st_size > 10_000
    table = capsys.readouterr().out
    assert "| trainer-reward_model |" in table and "per-task best" in table and "gate (" in table


@pytest.mark.parametrize(
    ("rows_split", "extra", "message"),
    [
        ("train", [], "has no test rows"),
        (None, ["--models", "cheap-a,nope"], "unknown model(s) ['nope']"),
        (None, ["--models", "cheap-a"], "at least two models"),
        (None, ["--quality-weight", "1.5"], "--quality-weight"),
        (None, ["--seeds", "a,b"], "--seeds"),
        (None, ["--add-model", "nope@10"], "--add-model: unknown model 'nope'"),
        (None, ["--add-model", "big"], "expected NAME@EVENTS"),
        (None, ["--add-model", "big@10", "--retire-model", "cheap-a@5"], "at least two models"),
        (None, ["--retire-model", "big@5", "--retire-model", "big@9"], "'big' is not in the pool at event 9"),
        (None, ["--add-model", "big@10", "--peer", "vw"], "--peer: the peer has a fixed set of models"),
    ],
)
def test_bad_input_exits_2_naming_the_problem(tmp_path, capsys, rows_split, extra, message):
    rows = synthetic_jsonl_rows()
    if rows_split is not None:
        rows = [{**r, "split": rows_split} for r in rows]
    data = write_jsonl(tmp_path / "log.jsonl", rows)
    before = data.read_bytes()
    argv = ["replay", "--data", str(data), "--encoder-model", "hash:16", "--cache-dir", str(tmp_path)]
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert data.read_bytes() == before  # nothing logged is touched


def test_a_model_added_mid_stream_is_learned_and_the_others_are_kept():
    """m1 (the only good model on cluster b) joins the pool at event 120: by the end the greedy policy
    routes cluster b to it, and cluster a stays with m0 (learned before the change)."""
    data = clustered_data()
    schedule = [PoolEvent(120, "add", "m1")]
    router = trainer_router(data, "reward_model", pool=starting_pool(data.names, schedule))
    result = run_replay(router, data, 4, 0.8, 0, 180, schedule)
    router.close()
    before = result.checkpoints[0]  # at 180 events: m1 only as bounded exploration, never greedy
    assert before.share["m1"] == 0.0 and before.task_share is not None
    last = result.checkpoints[-1]
    assert last.task_share is not None
    assert last.task_share["b"]["m1"] == pytest.approx(1.0) and last.task_share["a"]["m0"] == pytest.approx(
        1.0
    )
    assert last.greedy_reward == pytest.approx(0.75)
    assert "task_share" in last.to_json()


def test_a_retired_model_stops_being_chosen():
    data = clustered_data()
    schedule = [PoolEvent(200, "retire", "m2")]
    router = trainer_router(data, "reward_model")
    result = run_replay(router, data, 3, 0.0, 0, 100, schedule)  # w_q = 0: cheapest wins, m2 is dear
    arms_after = router.loop.models
    router.close()
    assert "m2" not in arms_after  # masked, then dropped from the arm list
    assert all(c.share["m2"] == 0.0 for c in result.checkpoints if c.events > 200)


def test_vw_peer_learns_on_the_identical_stream():
    from trainer.replay.vw_peer import VowpalWabbitRouter

    data = clustered_data()
    peer = VowpalWabbitRouter(data.names, seed=0, tau_usd=data.tau_usd)
    result = run_replay(peer, data, passes=3, quality_weight=0.8, seed=0, every_events=180)
    peer.close()
    last = result.checkpoints[-1]
    assert result.learner == "vw-squarecb" and last.published_versions == 0
    assert last.greedy_reward >= references(data, 0.8)["best_single"]  # VW separates the two clusters


def test_cli_runs_the_vw_peer_side_by_side(tmp_path):
    data = write_jsonl(tmp_path / "log.jsonl", synthetic_jsonl_rows())
    out = tmp_path / "replay.json"
    argv = ["replay", "--data", str(data), "--encoder-model", "hash:16", "--cache-dir", str(tmp_path)]
    assert main([*argv, "--passes", "1", "--peer", "vw", "--json", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert [r["learner"] for r in runs] == ["trainer-reward_model", "vw-squarecb"]
    assert [c["events"] for c in runs[0]["checkpoints"]] == [c["events"] for c in runs[1]["checkpoints"]]


def test_bad_trainer_config_exits_2_naming_the_key(tmp_path, capsys):
    data = write_jsonl(tmp_path / "log.jsonl", synthetic_jsonl_rows())
    config = tmp_path / "trainer.yaml"
    config.write_text("learner:\n  ridge_lambda: -1\n")
    argv = ["replay", "--data", str(data), "--encoder-model", "hash:16", "--cache-dir", str(tmp_path)]
    assert main([*argv, "--config", str(config)]) == 2
    assert "learner.ridge_lambda" in capsys.readouterr().err
