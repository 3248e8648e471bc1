"""Small generated routing tables for trainer tests (no real data, no real encoder)."""

import json

import numpy as np
import pytest

from trainer.offline.datasets import RoutingTable

ARMS = ("cheap-a", "cheap-b", "big")


def learnable_table(
    rows_per_cluster: int = 60, seed: int = 0, dim: int = 16
) -> tuple[RoutingTable, np.ndarray]:
    """Two prompt clusters: cheap-a is right on cluster A, cheap-b on cluster B; big is good and costly.

    The best router sends A to cheap-a and B to cheap-b at every preference, which beats each single arm.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(2, dim))
    cluster = np.repeat([0, 1], rows_per_cluster)
    x = centres[cluster] + 0.1 * rng.normal(size=(cluster.size, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    quality = np.zeros((cluster.size, 3))
    quality[cluster == 0, 0] = 1.0
    quality[cluster == 1, 1] = 1.0
    quality[:, 2] = (rng.uniform(size=cluster.size) < 0.8).astype(float)
    cost = np.tile([0.0001, 0.0001, 0.004], (cluster.size, 1))
    table = RoutingTable(
        prompts=tuple(f"prompt {i} cluster {c}" for i, c in enumerate(cluster)),
        tasks=tuple("task_a" if c == 0 else "task_b" for c in cluster),
        splits=tuple("train" for _ in cluster),
        models=ARMS,
        quality=quality,
        cost_usd=cost,
    )
    return table, x.astype(np.float32)


@pytest.fixture
def learnable():
    return learnable_table()


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def synthetic_jsonl_rows(seed: int = 0, per_task: int = 40):
    """Prompts of three tasks (named like RouterBench's) whose words reveal which cheap model is right."""
    rng = np.random.default_rng(seed)
    rows = []
    for task, right in (("arc_challenge", "cheap-a"), ("winogrande", "cheap-b"), ("mbpp", "cheap-a")):
        for i in range(per_task):
            scores = {m: 0.0 for m in ARMS}
            scores[right] = 1.0
            scores["big"] = float(rng.uniform() < 0.8)
            rows.append(
                {
                    "prompt": f"{task} question number {i} about {task} things",
                    "task": task,
                    "scores": scores,
                    "costs": {"cheap-a": 0.0001, "cheap-b": 0.0001, "big": 0.004},
                    "split": "test" if i % 4 == 0 else "train",
                }
            )
    return rows


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The CI/dev machines are shared 2-core boxes: oversubscribed OpenMP threads make tiny nets crawl."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
