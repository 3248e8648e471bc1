"""Files of ``barp-trainer evaluate``: ``report.json``, ``report.md`` and ``quality_vs_cost.png``.

Owns only formatting and drawing of the report dict that ``evaluate_command`` builds (keys documented in
docs/training.md, pinned by tests/trainer/test_evaluate_command.py). matplotlib's Agg backend is chosen
locally, without touching global state other users rely on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SUMMARY_ROUTERS = ("policy", "policy_expected", "best_single", "per_task_best", "oracle")
PLOT_FILE = "quality_vs_cost.png"


def write_report(report: dict[str, Any], directory: Path) -> None:
    (directory / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    (directory / "report.md").write_text(markdown(report))
    write_plot(report, directory / PLOT_FILE)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _top_shares(share: dict[str, float], limit: int = 3) -> str:
    top = sorted(share.items(), key=lambda item: -item[1])[:limit]
    text = ", ".join(f"{name.split('/')[-1]} {value:.0%}" for name, value in top)
    return text + (", …" if len(share) > limit else "")


def _single_model(entry: dict[str, Any]) -> str:
    return next(iter(entry["share"])).split("/")[-1] if len(entry["share"]) == 1 else "mixed"


def markdown(report: dict[str, Any]) -> str:
    policy, data = report["policy"], report["data"]
    keys = list(report["results"])
    lines = [
        "# Policy evaluation",
        "",
        f"Policy `{policy['path']}` (version {policy['version']}, sha256 {policy['weights_sha256'][:12]}, "
        f"τ = ${policy['tau_usd']:.6g}, encoder {policy['encoder']['id']} "
        f"{policy['encoder']['truncation']} {policy['encoder']['max_seq_length']} tokens).",
        f"Data `{data['path']}`, split `{data['split']}`: {data['rows']} rows, "
        f"{len(data['tasks'])} tasks, models {', '.join(data['models_evaluated'])}.",
    ]
    if data["log_models_unknown_to_policy"]:
        unknown = ", ".join(data["log_models_unknown_to_policy"])
        lines.append(f"Log models the policy does not know (ignored): {unknown}.")
    if data["rows_without_an_allowed_model"]:
        lines.append(f"Rows dropped (no evaluated model observed): {data['rows_without_an_allowed_model']}.")
    lines += [
        "",
        "Score, cost and reward are row means (score task mean: unweighted mean over tasks); reward "
        "r = w_q·q − (1 − w_q)·min(c/τ, 1) with the policy's τ. `policy` = greedy decisions, "
        "`policy_expected` = probability-weighted. `best_single`, `per_task_best` and `oracle` are chosen "
        "in hindsight on these rows (one model for all; one model per task; the best model per row).",
        "",
        "## Routers per w_q",
        "",
        "| w_q | router | score % | score % (task mean) | cost (USD/query) | reward | shares |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for key in keys:
        for router in SUMMARY_ROUTERS:
            entry = report["results"][key][router]
            lines.append(
                f"| {key} | {router} | {_pct(entry['score'])} | {_pct(entry['score_task_mean'])} | "
                f"{entry['cost_usd']:.3g} | {entry['reward']:.4f} | {_top_shares(entry['share'])} |"
            )
    models = sorted(r for r in report["results"][keys[0]] if r.startswith("model:"))
    lines += [
        "",
        "## Single models",
        "",
        "| model | rows | score % | score % (task mean) | cost (USD/query) | "
        + " | ".join(f"r@{k}" for k in keys)
        + " |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(keys),
    ]
    for router in models:
        first = report["results"][keys[0]][router]
        rewards = " | ".join(f"{report['results'][k][router]['reward']:.4f}" for k in keys)
        lines.append(
            f"| {router.split(':', 1)[1]} | {first['rows']} | {_pct(first['score'])} | "
            f"{_pct(first['score_task_mean'])} | {first['cost_usd']:.3g} | {rewards} |"
        )
    top = keys[-1]
    lines += [
        "",
        f"## Per task at w_q = {top} (score %)",
        "",
        "| task | rows | policy | policy_expected | best_single | per_task_best | oracle |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    at_top = report["results"][top]
    for task, rows in data["tasks"].items():
        cells = [
            _pct(at_top[r]["per_task"][task]["score"]) for r in ("policy", "policy_expected", "best_single")
        ]
        cells += [_pct(at_top[r]["per_task"][task]["score"]) for r in ("per_task_best", "oracle")]
        lines.append(f"| {task} | {rows} | {' | '.join(cells)} |")
    lines += _pair_lines(report)
    lines += ["", f"Runtime {report['runtime_s']} s.", ""]
    return "\n".join(lines)


def _pair_lines(report: dict[str, Any]) -> list[str]:
    if not report["pairs"]:
        return []
    lines = [
        "",
        "## Strong/cheap pairs (RouteLLM metrics)",
        "",
        "The policy masked to the two models, traced over w_q. PGR = share of the quality gap recovered; "
        "APGR = its area over the strong-model share (a random mix: 0.5); CPT(x %) = the strong-model share "
        "needed to recover x % of the gap (a random mix: x %). `oracle ranking` sends prompts to the strong "
        "model in order of their true gain (an upper bound). `below random` = the largest shortfall of the "
        "greedy curve under the random-mix line (score, 0–1).",
        "",
        "| strong | cheap | rows | score % strong / cheap | APGR | CPT(50%) | CPT(80%) | APGR expected | "
        "APGR oracle ranking | below random |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for pair in report["pairs"]:
        if "skipped" in pair:
            lines.append(f"| {pair['strong']} | {pair['cheap']} | 0 | {pair['skipped']} | | | | | | |")
            continue
        lines.append(
            f"| {pair['strong']} | {pair['cheap']} | {pair['rows']} | {_pct(pair['strong_score'])} / "
            f"{_pct(pair['cheap_score'])} | {_num(pair['apgr'])} | {_num(pair['cpt50'])} | "
            f"{_num(pair['cpt80'])} | {_num(pair['expected']['apgr'])} | "
            f"{_num(pair['oracle_ranking']['apgr'])} | {pair['max_below_random_mix']:+.4f} |"
        )
    for pair in report["pairs"]:
        if "skipped" in pair:
            continue
        lines += [
            "",
            f"### {pair['strong']} / {pair['cheap']}: greedy curve at the report's w_q",
            "",
            "| w_q | strong share | score % | random mix at that share % | cost (USD/query) |",
            "|---|---:|---:|---:|---:|",
        ]
        wanted = {float(k) for k in report["results"]}
        for point in pair["curve"]:
            if point["quality_weight"] in wanted:
                lines.append(
                    f"| {point['quality_weight']:g} | {point['strong_share']:.3f} | {_pct(point['score'])} | "
                    f"{_pct(point['random_mix_score'])} | {point['cost_usd']:.3g} |"
                )
    return lines


def _xy(entries: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    return [e["cost_usd"] for e in entries], [100 * e["score"] for e in entries]


def write_plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    results = report["results"]
    keys = list(results)
    figure, (left, right) = plt.subplots(1, 2, figsize=(14, 6.2))
    for router, style, color, label in (
        ("oracle", "-.", "0.5", "oracle (hindsight)"),
        ("per_task_best", "--", "tab:orange", "per-task best (hindsight)"),
        ("policy_expected", ":", "tab:red", "policy, expected"),
        ("policy", "-", "tab:red", "policy, greedy"),
    ):
        xs, ys = _xy([results[k][router] for k in keys])
        left.plot(xs, ys, style, color=color, marker="o" if router == "policy" else ".", label=label)
    policy_xs, policy_ys = _xy([results[k]["policy"] for k in keys])
    for key, x, y in zip(keys, policy_xs, policy_ys, strict=True):
        left.annotate(
            f"{key}", (x, y), fontsize=6.5, color="tab:red", xytext=(3, -9), textcoords="offset points"
        )
    for router in sorted(r for r in results[keys[0]] if r.startswith("model:")):
        entry = results[keys[0]][router]
        left.scatter(entry["cost_usd"], 100 * entry["score"], color="black", s=14, zorder=3)
        left.annotate(
            router.split(":", 1)[1].split("/")[-1][:22],
            (entry["cost_usd"], 100 * entry["score"]),
            fontsize=6,
            xytext=(3, 2),
            textcoords="offset points",
        )
    colors = ("tab:blue", "tab:green", "tab:purple", "tab:brown")
    for index, pair in enumerate(p for p in report["pairs"] if "skipped" not in p):
        color = colors[index % len(colors)]
        name = f"{pair['strong'].split('/')[-1]} / {pair['cheap'].split('/')[-1]}"
        xs, ys = _xy(pair["curve"])
        left.plot(xs, ys, "-", color=color, marker=".", markersize=3, label=f"policy on {name}")
        shares = [i / 50 for i in range(51)]
        left.plot(
            [pair["cheap_cost_usd"] + s * (pair["strong_cost_usd"] - pair["cheap_cost_usd"]) for s in shares],
            [100 * (pair["cheap_score"] + s * (pair["strong_score"] - pair["cheap_score"])) for s in shares],
            ":",
            color=color,
            label=f"random mix {name}",
        )
        if pair["apgr"] is not None:
            gap = pair["strong_score"] - pair["cheap_score"]
            for curve, style, label, area in (
                (pair["curve"], "-", "greedy", pair["apgr"]),
                (pair["expected_curve"], "--", "expected", pair["expected"]["apgr"]),
            ):
                ordered = sorted(curve, key=lambda p: p["strong_share"])
                # The (0, 0) and (1, 1) ends are part of the curve APGR integrates (always-cheap/strong).
                right.plot(
                    [0.0, *(p["strong_share"] for p in ordered), 1.0],
                    [0.0, *((p["score"] - pair["cheap_score"]) / gap for p in ordered), 1.0],
                    style,
                    color=color,
                    marker="." if style == "-" else None,
                    label=f"{name}: policy {label} (APGR {area:.3f})",
                )
    right.plot([0, 1], [0, 1], ":", color="black", label="random mix (APGR 0.5)")
    right.axhline(0.5, color="0.8", linewidth=0.8)
    right.axhline(0.8, color="0.8", linewidth=0.8)
    right.set_xlabel("share of calls to the strong model")
    right.set_ylabel("PGR: share of the strong–cheap quality gap recovered")
    right.set_title("Strong/cheap pairs: PGR vs strong-model share", fontsize=10)
    right.grid(True, alpha=0.3)
    right.legend(fontsize=7, loc="lower right")
    costs = [c for line in left.get_lines() for c in line.get_xdata() if c > 0]
    if costs and max(costs) / min(costs) > 3:
        left.set_xscale("log")
        left.set_xlabel("mean cost per query (USD, log scale)")
    else:
        left.set_xlabel("mean cost per query (USD)")
    left.set_ylabel("score (%; row mean)")
    left.set_title(
        f"{Path(report['data']['path']).name} ({report['data']['split']}, {report['data']['rows']} rows): "
        "quality vs cost over w_q",
        fontsize=10,
    )
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=7, loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
