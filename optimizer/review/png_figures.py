"""The report's figures as PNG files (matplotlib, no browser needed), from
:func:`~.report_data.collect`'s data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from optimizer.review.palette import BASELINE, FEASIBLE, FRONT, INFEASIBLE
from optimizer.review.report_data import baseline_and_others

PNG_FILES = {
    "scatter": "latency_accuracy.png",
    "pareto": "pareto_front.png",
    "importances": "param_importances.png",
    "history": "history.png",
}


def write_pngs(data: dict[str, Any], out: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")  # no display, no browser
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    metric = data["metric"]
    score = data["accuracy_metric"]
    rows = data["complete_trials"]
    base, others = baseline_and_others(data)
    written: dict[str, str] = {}

    def label(ax: Any, selected: list[dict[str, Any]]) -> None:
        for r in selected:
            ax.annotate(
                str(r["trial"]),
                (r["latency_ms"], r["accuracy"] * 100),
                textcoords="offset points",
                xytext=(5, 5),
                fontsize=8,
            )

    def save(fig: Any, key: str) -> None:
        fig.tight_layout()
        fig.savefig(out / PNG_FILES[key], dpi=110)
        plt.close(fig)
        written[key] = PNG_FILES[key]

    threshold = data["feasible_min_accuracy"] * 100
    accuracies = [r["accuracy"] * 100 for r in rows]
    top = max([*accuracies, threshold]) + 3
    fig, ax = plt.subplots(figsize=(8, 5.5))
    ax.axhspan(threshold, top, color=FEASIBLE, alpha=0.08, label=f"feasible (≥ {threshold:.2f}%)")
    ax.axhline(threshold, color=FEASIBLE, linestyle=":", linewidth=1)
    ax.axvline(base["latency_ms"], color=BASELINE, linestyle="--", linewidth=1)
    for selected, name, color in (
        ([r for r in others if r["feasible"]], "feasible", FEASIBLE),
        ([r for r in others if not r["feasible"]], "infeasible", INFEASIBLE),
    ):
        if not selected:
            continue
        ax.scatter(
            [r["latency_ms"] for r in selected],
            [r["accuracy"] * 100 for r in selected],
            c=color,
            s=45,
            label=name,
            edgecolors="black",
            linewidths=0.4,
        )
        label(ax, selected)
    ax.scatter(
        [base["latency_ms"]],
        [base["accuracy"] * 100],
        c=BASELINE,
        marker="*",
        s=260,
        label=f"baseline (trial {base['trial']})",
        edgecolors="black",
        linewidths=0.5,
    )
    ax.set_ylim(min([*accuracies, threshold]) - 3, top)
    ax.set_xlabel(f"{metric} latency (ms)")
    ax.set_ylabel(f"{score} (%)")
    ax.set_title(f"{data['campaign']}: {metric} latency vs {score} (complete trials)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    save(fig, "scatter")

    front_numbers = set(data["pareto_front"])
    front = sorted((r for r in rows if r["trial"] in front_numbers), key=lambda r: r["latency_ms"])
    dominated = [r for r in rows if r["trial"] not in front_numbers]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    if dominated:
        ax.scatter(
            [r["latency_ms"] for r in dominated],
            [r["accuracy"] * 100 for r in dominated],
            c=INFEASIBLE,
            s=45,
            label="dominated",
        )
    ax.step(
        [r["latency_ms"] for r in front],
        [r["accuracy"] * 100 for r in front],
        where="post",
        color=FRONT,
        marker="o",
        label="Pareto front",
    )
    label(ax, rows)
    ax.set_xlabel(f"{metric} latency (ms)")
    ax.set_ylabel(f"{score} (%)")
    ax.set_title(f"{data['campaign']}: Pareto front, latency (lower) vs {score} (higher)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    save(fig, "pareto")

    if data["importances"] is not None:
        latency = data["importances"]["latency"]
        names = sorted(latency, key=lambda k: latency[k])
        fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.8))
        height = 0.4
        for i, (target, values) in enumerate(data["importances"].items()):
            ax.barh(
                [n + i * height for n in range(len(names))],
                [values.get(name, 0.0) for name in names],
                height=height,
                label=target,
            )
        ax.set_yticks([n + height / 2 for n in range(len(names))], names)
        ax.set_xlabel("importance (PED-ANOVA)")
        ax.set_title(f"{data['campaign']}: parameter importances (without the baseline)")
        ax.legend(fontsize=8)
        save(fig, "importances")

    steps = data["history"]
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.scatter(
        [s["trial"] for s in steps],
        [s["latency_ms"] for s in steps],
        c=[FEASIBLE if s["feasible"] else INFEASIBLE for s in steps],
        s=40,
        label="trial latency (grey: infeasible)",
    )
    best = [(s["trial"], s["best_feasible_ms"]) for s in steps if s["best_feasible_ms"]]
    if best:
        ax.step(*zip(*best, strict=True), where="post", color=FRONT, label="best feasible so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{metric} latency (ms)")
    ax.set_title(f"{data['campaign']}: optimisation history")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, "history")
    return written


# --- the page --------------------------------------------------------------------------------
