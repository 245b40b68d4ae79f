"""``vitopt report``: a self-contained review of a campaign, for people without the dashboard.

One folder: ``report.html`` (plotly figures, plotly.js inlined, so it opens offline), the same
figures as PNG files (drawn with matplotlib, which needs no browser) and ``summary.json`` with
every number shown. The figures:

- latency against top-1 for every complete trial, the feasible region (top-1 at least the
  baseline's minus the budget) shaded and the baseline marked;
- the Pareto front of latency (min) and top-1 (max) over complete trials, in either mode;
- parameter importances for latency and for top-1, over complete trials other than the
  baseline (Optuna's default evaluator, PED-ANOVA); skipped, with the reason, when fewer than
  two such trials exist or fewer than two parameters vary among them;
- the optimisation history: each complete trial's latency and the best feasible one so far.
"""

from __future__ import annotations

import html
import json
import math
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.importance import PedAnovaImportanceEvaluator
from optuna.trial import FrozenTrial, TrialState

from optimizer.campaign.figures import ms, pct, points, speedup
from optimizer.campaign.note import digest, drift_line
from optimizer.campaign.study import BASELINE_ATTR, baseline_trial
from optimizer.config import Campaign
from optimizer.plugin_api.task import DEFAULT_METRIC

PNG_FILES = {
    "scatter": "latency_accuracy.png",
    "pareto": "pareto_front.png",
    "importances": "param_importances.png",
    "history": "history.png",
}
_FEASIBLE, _INFEASIBLE, _BASELINE, _FRONT = "#1f77b4", "#b0b0b0", "#d62728", "#2ca02c"


class ReportError(Exception):
    """Nothing to report yet (no baseline); the message says why."""


def _trial_row(trial: FrozenTrial) -> dict[str, Any]:
    attrs = trial.user_attrs
    return {
        "trial": trial.number,
        "baseline": bool(attrs.get(BASELINE_ATTR)),
        "latency_ms": attrs.get("latency_ms"),
        "accuracy": attrs.get("accuracy"),
        "speedup": attrs.get("speedup"),
        "speedup_ci": attrs.get("speedup_ci"),
        "accuracy_drop": attrs.get("accuracy_drop"),
        "feasible": bool(attrs.get("feasible")),
        "params_count": attrs.get("params_count"),
        "model_size_bytes": attrs.get("model_size_bytes"),
        "params": dict(trial.params),
    }


def pareto_front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows no other row beats on both latency (lower) and top-1 (higher), by latency."""

    def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
        no_worse = a["latency_ms"] <= b["latency_ms"] and a["accuracy"] >= b["accuracy"]
        better = a["latency_ms"] < b["latency_ms"] or a["accuracy"] > b["accuracy"]
        return no_worse and better

    front = [r for r in rows if not any(dominates(o, r) for o in rows if o is not r)]
    return sorted(front, key=lambda r: (r["latency_ms"], -r["accuracy"]))


def importances(
    study: optuna.Study, trials: list[FrozenTrial], score: str = DEFAULT_METRIC
) -> tuple[dict[str, dict[str, float]] | None, str | None]:
    """Importances for latency and for the score (``score`` names it: top-1, mIoU) over
    ``trials``, or None and why they were skipped."""
    if len(trials) < 2:
        return None, f"{len(trials)} complete trial(s) besides the baseline: at least 2 needed"
    values: dict[str, set[str]] = {}
    for trial in trials:
        for name, value in trial.params.items():
            values.setdefault(name, set()).add(repr(value))
    varying = sorted(name for name, seen in values.items() if len(seen) > 1)
    if len(varying) < 2:
        return None, f"{len(varying)} parameter(s) vary among those trials: at least 2 needed"
    scratch = optuna.create_study(directions=study.directions)
    scratch.add_trials(trials)
    result = {}
    try:
        with warnings.catch_warnings():  # PED-ANOVA says it ranks for low targets: both are
            warnings.simplefilter("ignore")
            for name, target in (
                ("latency", lambda t: t.user_attrs["latency_ms"]),
                (score, lambda t: -t.user_attrs["accuracy"]),
            ):
                found = optuna.importance.get_param_importances(
                    scratch, target=target, evaluator=PedAnovaImportanceEvaluator()
                )
                result[name] = {k: float(v) for k, v in found.items()}
    except (ValueError, RuntimeError) as exc:
        return None, f"Optuna could not assess them: {exc}"
    return result, None


def history(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per complete trial, in trial order: its latency and the best feasible latency so far."""
    best = math.inf
    steps = []
    for row in sorted(rows, key=lambda r: r["trial"]):
        if row["feasible"]:
            best = min(best, row["latency_ms"])
        steps.append(
            {
                "trial": row["trial"],
                "latency_ms": row["latency_ms"],
                "feasible": row["feasible"],
                "best_feasible_ms": None if math.isinf(best) else best,
            }
        )
    return steps


def collect(study: optuna.Study, campaign: Campaign) -> dict[str, Any]:
    """Everything the report shows, as plain data (``summary.json``)."""
    base = baseline_trial(study)
    if base is None:
        raise ReportError(
            f"campaign {campaign.name!r} has no finished baseline yet: nothing to report"
        )
    complete = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get("latency_ms") is not None and t.user_attrs.get("accuracy") is not None
    ]
    rows = [_trial_row(t) for t in complete]
    summary = digest(study, campaign)
    threshold = base.user_attrs["accuracy"] - campaign.objective.max_accuracy_drop
    candidates = [t for t in complete if not t.user_attrs.get("baseline")]
    found, skipped = importances(study, candidates, summary["accuracy_metric"])
    summary.update(
        {
            "feasible_min_accuracy": threshold,
            "complete_trials": rows,
            "pareto_front": [r["trial"] for r in pareto_front(rows)],
            "history": history(rows),
            "importances": found,
            "importances_skipped": skipped,
        }
    )
    return summary


def _hover(row: dict[str, Any]) -> str:
    params = "<br>".join(f"{k}={v}" for k, v in sorted(row["params"].items()))
    return f"trial {row['trial']}<br>{params}" if params else f"trial {row['trial']} (baseline)"


# --- plotly (report.html) --------------------------------------------------------------------


def _plotly_figures(data: dict[str, Any]) -> dict[str, Any]:
    import plotly.graph_objects as go

    metric = data["metric"]
    score = data["accuracy_metric"]
    rows = data["complete_trials"]
    base = next(r for r in rows if r["trial"] == data["baseline"]["trial"])
    others = [r for r in rows if not r["baseline"]]
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
        fillcolor=_FEASIBLE,
        opacity=0.08,
        line_width=0,
        annotation_text=f"feasible: {score} ≥ {threshold:.2f}%",
        annotation_position="top left",
    )
    scatter.add_hline(y=threshold, line_dash="dot", line_color=_FEASIBLE)
    scatter.add_vline(x=base["latency_ms"], line_dash="dash", line_color=_BASELINE)
    scatter.add_trace(points_of([r for r in others if r["feasible"]], "feasible", _FEASIBLE))
    scatter.add_trace(
        points_of([r for r in others if not r["feasible"]], "infeasible", _INFEASIBLE)
    )
    scatter.add_trace(points_of([base], "baseline", _BASELINE, symbol="star", size=18))
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
        points_of([r for r in rows if r["trial"] not in front_numbers], "dominated", _INFEASIBLE)
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
            marker={"color": _FRONT, "size": 11},
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
                "color": [_FEASIBLE if s["feasible"] else _INFEASIBLE for s in steps],
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
            line={"color": _FRONT},
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


def _write_pngs(data: dict[str, Any], out: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")  # no display, no browser
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    metric = data["metric"]
    score = data["accuracy_metric"]
    rows = data["complete_trials"]
    base = next(r for r in rows if r["trial"] == data["baseline"]["trial"])
    others = [r for r in rows if not r["baseline"]]
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
    ax.axhspan(threshold, top, color=_FEASIBLE, alpha=0.08, label=f"feasible (≥ {threshold:.2f}%)")
    ax.axhline(threshold, color=_FEASIBLE, linestyle=":", linewidth=1)
    ax.axvline(base["latency_ms"], color=_BASELINE, linestyle="--", linewidth=1)
    for selected, name, color in (
        ([r for r in others if r["feasible"]], "feasible", _FEASIBLE),
        ([r for r in others if not r["feasible"]], "infeasible", _INFEASIBLE),
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
        c=_BASELINE,
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
            c=_INFEASIBLE,
            s=45,
            label="dominated",
        )
    ax.step(
        [r["latency_ms"] for r in front],
        [r["accuracy"] * 100 for r in front],
        where="post",
        color=_FRONT,
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
        c=[_FEASIBLE if s["feasible"] else _INFEASIBLE for s in steps],
        s=40,
        label="trial latency (grey: infeasible)",
    )
    best = [(s["trial"], s["best_feasible_ms"]) for s in steps if s["best_feasible_ms"]]
    if best:
        ax.step(*zip(*best, strict=True), where="post", color=_FRONT, label="best feasible so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{metric} latency (ms)")
    ax.set_title(f"{data['campaign']}: optimisation history")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, "history")
    return written


# --- the page --------------------------------------------------------------------------------


def _summary_html(data: dict[str, Any]) -> str:
    metric = data["metric"]
    score = data["accuracy_metric"]
    device = data["device"] or {}
    base, best, counts = data["baseline"], data["best"], data["trials"]
    items = [
        ("device", device.get("name") or "-"),
        ("backend", device.get("backend_version") or device.get("backend") or "-"),
        ("objective", ", ".join(data["objectives"]) + f" ({data['mode']} mode)"),
        ("budget", f"{score} at most {data['max_accuracy_drop'] * 100:.2f} pt below the baseline"),
        (
            "baseline",
            f"trial {base['trial']}: {score} {pct(base['accuracy'])}, {metric} "
            f"{ms(base['latency_ms'])}",
        ),
    ]
    if best is None:
        items.append(("best feasible", "none yet"))
    else:
        params = ", ".join(f"{k}={v}" for k, v in sorted(best["params"].items())) or "(baseline)"
        items.append(
            (
                "best feasible",
                f"trial {best['trial']}: {metric} {ms(best['latency_ms'])} "
                f"({speedup(best['speedup'], best['speedup_ci'])}), "
                f"{score} {pct(best['accuracy'])} "
                f"(drop {points(best['accuracy_drop'])}); {params}",
            )
        )
    items.append(("reference latency", drift_line(data["reference"])))
    items.append(
        (
            "trials",
            f"{counts['complete']} complete, {counts['pruned']} pruned, {counts['failed']} "
            f"failed, {counts['rerun']} re-run (target {counts['target']})",
        )
    )
    items.append(("generated", data["updated_at"]))
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in items)
    return f"<table class='summary'>{body}</table>"


def _trials_html(data: dict[str, Any]) -> str:
    front = set(data["pareto_front"])
    latency = f"{data['metric']} ms"
    columns = (
        "trial",
        latency,
        "speedup [95 %]",
        data["accuracy_metric"],
        "drop",
        "feasible",
        "Pareto",
    )
    head = "".join(f"<th>{h}</th>" for h in (*columns, "params"))
    rows = []
    for r in sorted(data["complete_trials"], key=lambda r: r["trial"]):
        params = ", ".join(f"{k}={v}" for k, v in sorted(r["params"].items())) or "(baseline)"
        cells = [
            str(r["trial"]),
            f"{r['latency_ms']:.3f}",
            speedup(r["speedup"], r["speedup_ci"]),
            pct(r["accuracy"]),
            points(r["accuracy_drop"]),
            "yes" if r["feasible"] else "no",
            "yes" if r["trial"] in front else "",
            params,
        ]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return f"<table class='trials'><tr>{head}</tr>{''.join(rows)}</table>"


_STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 1100px; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
.summary th { background: #f4f4f4; }
.note { color: #666; font-style: italic; }
"""


def write_report(study: optuna.Study, campaign: Campaign, out: Path) -> dict[str, Any]:
    """Write report.html, the PNG files and summary.json into ``out``; returns the summary."""
    data = collect(study, campaign)
    out.mkdir(parents=True, exist_ok=True)
    data["png"] = _write_pngs(data, out)
    figures = _plotly_figures(data)
    parts = [
        f"<h1>vitopt campaign {html.escape(campaign.name)}</h1>",
        _summary_html(data),
    ]
    first = True
    for key in ("scatter", "pareto", "importances", "history"):
        if key == "importances" and key not in figures:
            parts.append(
                "<h2>parameter importances</h2><p class='note'>skipped: "
                f"{html.escape(data['importances_skipped'] or '')}</p>"
            )
            continue
        # plotly.js is inlined once, with the first figure: the page needs no network.
        parts.append(
            figures[key].to_html(
                full_html=False, include_plotlyjs=first, config={"displaylogo": False}
            )
        )
        first = False
    parts.append("<h2>complete trials</h2>" + _trials_html(data))
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>vitopt report: {html.escape(campaign.name)}</title>"
        f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>"
    )
    (out / "report.html").write_text(page, encoding="utf-8")
    data["html"] = "report.html"
    (out / "summary.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    return data
