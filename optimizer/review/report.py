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
from pathlib import Path
from typing import Any

import optuna

from optimizer.campaign.figures import ms, pct, points, speedup
from optimizer.campaign.note import drift_line
from optimizer.config import Campaign
from optimizer.review.plotly_figures import plotly_figures
from optimizer.review.png_figures import write_pngs
from optimizer.review.report_data import collect


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
    data["png"] = write_pngs(data, out)
    figures = plotly_figures(data)
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
