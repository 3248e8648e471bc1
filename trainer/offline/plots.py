"""Quality-vs-cost figure (``pareto.png``): BaRP's curve over w_q, single models as points, baselines.

Owns only drawing (matplotlib, Agg backend chosen locally, no global state changed for other users).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

CURVE_ROUTERS = ("per_task_best", "mlp_full_info", "knn", "linucb", "oracle")
_STYLES = {
    "per_task_best": ("tab:orange", "--"),
    "mlp_full_info": ("tab:green", "--"),
    "knn": ("tab:purple", ":"),
    "linucb": ("tab:brown", ":"),
    "oracle": ("0.5", "-."),
}


def _curve(results: dict[str, Any]) -> tuple[list[float], list[float]]:
    keys = sorted(results, key=float)
    return [results[k]["cost_usd"] for k in keys], [100.0 * results[k]["score"] for k in keys]


def _grouped_labels(keys: list[str], xs: list[float], ys: list[float]) -> list[tuple[str, float, float]]:
    """One "w=a–b" label per run of grid points that land on (nearly) the same (cost, score) point."""
    labels: list[tuple[str, float, float]] = []
    start = 0
    for end in range(1, len(keys) + 1):
        moved = (
            end == len(keys) or abs(math.log(xs[end] / xs[start])) > 0.03 or abs(ys[end] - ys[start]) > 0.3
        )
        if moved:
            text = f"w={keys[start]}" if end - 1 == start else f"w={keys[start]}–{keys[end - 1]}"
            labels.append((text, xs[start], ys[start]))
            start = end
    return labels


def _panel(axis: Any, setting: dict[str, Any], title: str) -> None:
    for router, (color, style) in _STYLES.items():
        if router in setting:
            xs, ys = _curve(setting[router])
            axis.plot(xs, ys, style, color=color, marker=".", markersize=4, linewidth=1.2, label=router)
    models = sorted(r for r in setting if r.startswith("model:"))
    for router in models:
        point = setting[router]["1.0"]
        axis.scatter(point["cost_usd"], 100.0 * point["score"], color="black", s=18, zorder=3)
        axis.annotate(
            router.split(":", 1)[1].split("/")[-1][:18],
            (point["cost_usd"], 100.0 * point["score"]),
            fontsize=6.5,
            xytext=(3, 2),
            textcoords="offset points",
        )
    if "barp" in setting:
        xs, ys = _curve(setting["barp"])
        axis.plot(
            xs,
            ys,
            "-",
            color="tab:red",
            marker="o",
            markersize=4,
            linewidth=2.2,
            label="BaRP (mean of seeds)",
            zorder=4,
        )
        for label, x, y in _grouped_labels(sorted(setting["barp"], key=float), xs, ys):
            axis.annotate(
                label, (x, y), fontsize=7, color="tab:red", xytext=(-6, 7), textcoords="offset points"
            )
    axis.set_xscale("log")
    axis.set_xlabel("mean cost per query (USD, log scale)")
    axis.set_ylabel("score (%; unweighted task mean)")
    axis.set_title(title, fontsize=10)
    axis.grid(True, which="both", alpha=0.3)


def write_pareto_png(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(14, 6.6))
    _panel(axes[0], report["in_distribution"], f"In-distribution (test split), τ = ${report['tau']:.4g}")
    _panel(axes[1], report["out_of_distribution"], "Out-of-distribution: train ARC + Winogrande, test MBPP")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.05, 1, 1))
    figure.savefig(path, dpi=130)
    plt.close(figure)
