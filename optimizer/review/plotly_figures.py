"""The report's interactive figures (plotly), from :func:`~.report_data.collect`'s data."""

from __future__ import annotations

import math
from typing import Any

from optimizer.review.palette import BASELINE, FEASIBLE, FRONT, INFEASIBLE
from optimizer.review.report_data import baseline_and_others


def _hover(row: dict[str, Any]) -> str:
    params = "<br>".join(f"{k}={v}" for k, v in sorted(row["params"].items()))
    return f"trial {row['trial']}<br>{params}" if params else f"trial {row['trial']} (baseline)"


# --- plotly (report.html) --------------------------------------------------------------------


def plotly_figures(data: dict[str, Any]) -> dict[str, Any]:
    import plotly.graph_objects as go

    metric = data["metric"]
    score = data["accuracy_metric"]
    rows = data["complete_trials"]
    base, others = baseline_and_others(data)
    figures: dict[str, Any] = {}

    def points_of(selected: list[dict[str, Any]], name: str, color: str, **marker: Any) -> Any:
        return go.Scatter(
            x=[r["latency_ms"] for r in selected],
            y=[r["accuracy"] * 100 for r in selected],
            mode="markers+text",
            text=[str(r["trial"]) for r in selected],
            textposition="top center",
            hovertext=[_hover(r) for r in selected],
            hoverinfo="text+x+y",
            name=name,
            marker={"color": color, "size": 11, **marker},
        )

    accuracies = [r["accuracy"] * 100 for r in rows]
    threshold = data["feasible_min_accuracy"] * 100
    top = max([*accuracies, threshold]) + 3
    scatter = go.Figure()
    scatter.add_hrect(
        y0=threshold,
        y1=top,
        fillcolor=FEASIBLE,
        opacity=0.08,
        line_width=0,
        annotation_text=f"feasible: {score} ≥ {threshold:.2f}%",
        annotation_position="top left",
    )
    scatter.add_hline(y=threshold, line_dash="dot", line_color=FEASIBLE)
    scatter.add_vline(x=base["latency_ms"], line_dash="dash", line_color=BASELINE)
    scatter.add_trace(points_of([r for r in others if r["feasible"]], "feasible", FEASIBLE))
    scatter.add_trace(points_of([r for r in others if not r["feasible"]], "infeasible", INFEASIBLE))
    scatter.add_trace(points_of([base], "baseline", BASELINE, symbol="star", size=18))
    scatter.update_layout(
        title=f"{metric} latency vs {score} (complete trials)",
        xaxis_title=f"{metric} latency (ms)",
        yaxis_title=f"{score} (%)",
        yaxis_range=[min([*accuracies, threshold]) - 3, top],
    )
    figures["scatter"] = scatter

    front_numbers = set(data["pareto_front"])
    front = [r for r in rows if r["trial"] in front_numbers]
    front.sort(key=lambda r: r["latency_ms"])
    pareto = go.Figure()
    pareto.add_trace(
        points_of([r for r in rows if r["trial"] not in front_numbers], "dominated", INFEASIBLE)
    )
    pareto.add_trace(
        go.Scatter(
            x=[r["latency_ms"] for r in front],
            y=[r["accuracy"] * 100 for r in front],
            mode="lines+markers+text",
            line_shape="hv",
            text=[str(r["trial"]) for r in front],
            textposition="top center",
            hovertext=[_hover(r) for r in front],
            hoverinfo="text+x+y",
            name="Pareto front",
            marker={"color": FRONT, "size": 11},
        )
    )
    pareto.update_layout(
        title=f"Pareto front: latency (lower) vs {score} (higher)",
        xaxis_title=f"{metric} latency (ms)",
        yaxis_title=f"{score} (%)",
    )
    figures["pareto"] = pareto

    if data["importances"] is not None:
        imp = go.Figure()
        for target, values in data["importances"].items():
            names = sorted(values, key=lambda k: data["importances"]["latency"].get(k, 0))
            imp.add_trace(
                go.Bar(x=[values[n] for n in names], y=names, orientation="h", name=target)
            )
        imp.update_layout(
            title="parameter importances (PED-ANOVA, complete trials without the baseline)",
            xaxis_title="importance",
            barmode="group",
        )
        figures["importances"] = imp

    steps = data["history"]
    hist = go.Figure()
    hist.add_trace(
        go.Scatter(
            x=[s["trial"] for s in steps],
            y=[s["latency_ms"] for s in steps],
            mode="markers",
            name="trial latency",
            marker={
                "color": [FEASIBLE if s["feasible"] else INFEASIBLE for s in steps],
                "size": 10,
            },
        )
    )
    hist.add_trace(
        go.Scatter(
            x=[s["trial"] for s in steps],
            y=[s["best_feasible_ms"] for s in steps],
            mode="lines",
            line_shape="hv",
            name="best feasible so far",
            line={"color": FRONT},
        )
    )
    hist.update_layout(
        title="optimisation history",
        xaxis_title="trial",
        xaxis_dtick=max(1, math.ceil(len(steps) / 12)),  # whole trial numbers
        yaxis_title=f"{metric} latency (ms)",
    )
    figures["history"] = hist
    return figures


# --- matplotlib (PNG files) ------------------------------------------------------------------
