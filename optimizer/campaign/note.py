"""What a reviewer reads first in optuna-dashboard: the study's note, a Markdown summary of the
campaign that the driver rewrites after each recorded trial, and the objectives' names.

The note is the dashboard's study note (optuna_dashboard.save_note, kept in the study's system
attributes), so it travels with the study, whichever database holds it. It is written by the
driver: edits made to it in the dashboard are replaced by the next trial's. Writing it is best
effort: a failure is logged and the campaign goes on.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Container
from datetime import datetime, timezone
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from optimizer.campaign.figures import ms, pct, points, speedup
from optimizer.campaign.study import (
    DRIFT_LIMIT,
    FINISHED,
    INTERRUPTED_ATTR,
    RETRIED_ATTR,
    baseline_trial,
    best_feasible,
    counted_trials,
    recipe,
    reference_summary,
    trial_metric,
)
from optimizer.config import Campaign
from optimizer.trial.outcome import DISAGREEMENT, DISAGREEMENT_ATTR

_log = logging.getLogger("vitopt.study_note")


def objective_names(campaign: Campaign, score: str) -> list[str]:
    """The study's objectives as the dashboard labels them, in the order they are told
    (``score``: what the task's accuracy is, :func:`metric_label`)."""
    latency = f"{campaign.objective.metric} latency (ms)"
    return [latency, score] if campaign.objective.mode == "pareto" else [latency]


def name_objectives(study: optuna.Study, campaign: Campaign, score: str) -> None:
    """Label the objectives (Optuna's metric names, which optuna-dashboard shows; its own
    set_objective_names is deprecated for this). Best effort, like the note."""
    names = objective_names(campaign, score)
    try:
        if study.metric_names != names:
            with warnings.catch_warnings():  # experimental in Optuna 5; said once, not per run
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(names)
    except Exception as exc:  # a label must never stop a campaign
        _log.warning("could not name the study's objectives: %s", exc)


class _Snapshot:
    """The study's trials read once, answering ``get_trials`` as the study would: the helpers
    of ``study.py`` then apply their own rules without a database round trip each (the note
    is rewritten after every trial, so its cost is the driver's)."""

    def __init__(self, study: optuna.Study) -> None:
        self._trials = study.get_trials(deepcopy=False)

    def get_trials(
        self, deepcopy: bool = False, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return [t for t in self._trials if states is None or t.state in states]


def disagreements(trials: list[Any]) -> list[dict[str, Any]]:
    """Trials whose host and device scores differ by more than the threshold (the device's
    engine scores unlike the ONNX file the host runs)."""
    return [
        {
            "trial": t.number,
            "host": t.user_attrs["host_accuracy"],
            "device": t.user_attrs["device_accuracy"],
        }
        for t in trials
        if t.user_attrs.get(DISAGREEMENT_ATTR)
    ]


def disagreement_line(rows: list[dict[str, Any]]) -> str:
    """One line on :func:`disagreements`, as the note and ``vitopt status`` print it."""
    shown = ", ".join(
        f"#{row['trial']} (host {pct(row['host'])}, device {pct(row['device'])})" for row in rows
    )
    return (
        f"host and device scores differ by more than {points(DISAGREEMENT)} on "
        f"{len(rows)} trial(s): {shown}; the campaign ranks by the device's"
    )


def digest(study: optuna.Study, campaign: Campaign) -> dict[str, Any]:
    """The numbers a reviewer wants first; the note and ``vitopt report`` both show them."""
    snapshot: Any = _Snapshot(study)
    counted = counted_trials(snapshot)
    states = [t.state for t in counted]
    rerun = [
        t
        for t in snapshot.get_trials(states=FINISHED)
        if t.user_attrs.get(RETRIED_ATTR) or t.user_attrs.get(INTERRUPTED_ATTR)
    ]
    base = baseline_trial(snapshot)
    best = best_feasible(snapshot)
    objective = campaign.objective
    score = trial_metric(base)
    result: dict[str, Any] = {
        "campaign": campaign.name,
        "mode": objective.mode,
        "metric": objective.metric,
        "objectives": objective_names(campaign, score),
        "accuracy_metric": score,
        "max_accuracy_drop": objective.max_accuracy_drop,
        "max_memory_mb": objective.max_memory_mb,
        "trials": {
            "target": campaign.search.trials,
            "complete": states.count(TrialState.COMPLETE),
            "pruned": states.count(TrialState.PRUNED),
            "failed": states.count(TrialState.FAIL),
            "rerun": len(rerun),
        },
        "device": None,
        "baseline": None,
        "best": None,
        "reference": reference_summary(snapshot.get_trials()),
        "disagreements": disagreements(counted),
        "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if base is not None:
        attrs = base.user_attrs
        result["device"] = {
            "name": attrs.get("device"),
            "type": attrs.get("device_type"),
            "backend": attrs.get("backend"),
            "backend_version": attrs.get("backend_version"),
        }
        result["baseline"] = {
            "trial": base.number,
            "accuracy": attrs.get("accuracy"),
            "latency_ms": attrs.get("latency_ms"),
            "speedup_ci": attrs.get("speedup_ci"),  # timed against itself: the noise left
        }
    if best is not None:
        result["best"] = _candidate(best)
        result["best"]["is_baseline"] = base is not None and best.number == base.number
    return result


def _candidate(trial: FrozenTrial) -> dict[str, Any]:
    attrs = trial.user_attrs
    return {
        "trial": trial.number,
        "latency_ms": attrs.get("latency_ms"),
        "accuracy": attrs.get("accuracy"),
        "speedup": attrs.get("speedup"),
        "speedup_ci": attrs.get("speedup_ci"),
        "accuracy_drop": attrs.get("accuracy_drop"),
        "params": recipe(trial),
    }


def drift_line(reference: dict[str, Any] | None) -> str:
    """The reference's latency over the campaign, and whether it drifted."""
    if reference is None:
        return "fewer than two jobs so far"
    line = (
        f"median {reference['median_ms']:.3f} ms over {reference['jobs']} jobs; drift "
        f"{reference['drift'] * 100:+.1f} % (last {reference['window']} jobs against the "
        f"first {reference['window']})"
    )
    if reference.get("retimed"):
        line += f"; {reference['retimed']} jobs timed again on a busy device"
    if reference["flagged"]:
        line += (
            f": beyond ±{DRIFT_LIMIT * 100:.0f} %, the device changed during the campaign "
            "(throttling, clocks, another tenant); speedups stay paired, absolute latencies "
            "do not compare"
        )
    return line


def _param(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def render_note(summary: dict[str, Any]) -> str:
    """The study note, in Markdown, from :func:`digest`."""
    metric = summary["metric"]
    lines = [
        f"## vitopt campaign `{summary['campaign']}`",
        "",
        f"*Updated {summary['updated_at']} by the campaign's driver, after each trial: "
        "edits made here are replaced.*",
        "",
    ]
    device = summary["device"]
    if device is None:
        lines.append("- **Device**: not measured yet (the baseline has not finished)")
    else:
        shown = device["name"] or device["type"] or "unknown"
        if device["type"] and device["type"] != device["name"]:
            shown += f" (type `{device['type']}`)"
        lines.append(f"- **Device**: {shown}")
        backend = device["backend_version"] or device["backend"] or "unknown"
        lines.append(f"- **Backend**: {backend}")
    score = summary["accuracy_metric"]
    objective = (
        f"minimise {metric} latency, subject to the accuracy budget"
        if summary["mode"] == "latency"
        else f"Pareto front of {metric} latency (min) and {score} (max)"
    )
    lines.append(f"- **Objective**: {objective}")
    budget = f"{score} at most {summary['max_accuracy_drop'] * 100:.2f} pt below the baseline's"
    if summary["max_memory_mb"] is not None:
        budget += f"; peak memory at most {summary['max_memory_mb']:g} MB"
    lines.append(f"- **Budget**: {budget}")
    lines.append("")

    base = summary["baseline"]
    if base is None:
        lines.append("### Baseline\n\nnot measured yet")
    else:
        lines.append(f"### Baseline: trial {base['trial']}")
        lines.append("")
        lines.append(f"{score} **{pct(base['accuracy'])}**, {metric} **{ms(base['latency_ms'])}**")
        if base["speedup_ci"]:
            low, high = base["speedup_ci"]
            lines.append("")
            lines.append(
                f"Every job times its candidate paired with the baseline's model; the baseline "
                f"timed against itself gave [{low:.3f}–{high:.3f}], the noise a speedup's 95 % "
                "interval carries."
            )
    lines.append("")
    reference = summary["reference"]
    warn = "**Drift**: " if reference is not None and reference["flagged"] else ""
    lines.append(f"- {warn}**Reference latency**: {drift_line(reference)}")
    if summary["disagreements"]:
        lines.append(f"- **Host ≠ device**: {disagreement_line(summary['disagreements'])}")
    lines.append("")

    best = summary["best"]
    if best is None:
        lines.append("### Best feasible\n\nnone yet")
    else:
        lines.append(f"### Best feasible: trial {best['trial']}")
        lines.append("")
        shown = speedup(best["speedup"], best["speedup_ci"])
        lines.append(
            f"{metric} **{ms(best['latency_ms'])}** (**{shown}** the baseline's speed, paired, "
            f"95 % interval), {score} **{pct(best['accuracy'])}** "
            f"(drop {points(best['accuracy_drop'])})"
        )
        lines.append("")
        if best["is_baseline"]:
            lines.append("No compressed candidate within the budget is faster than the baseline.")
        else:
            params = ", ".join(f"`{k}={_param(v)}`" for k, v in sorted(best["params"].items()))
            lines.append(f"params: {params}")
    lines.append("")

    counts = summary["trials"]
    done = counts["complete"] + counts["pruned"] + counts["failed"]
    lines.append("### Trials")
    lines.append("")
    lines.append(
        f"{done}/{counts['target']} counted: {counts['complete']} complete, "
        f"{counts['pruned']} pruned, {counts['failed']} failed; {counts['rerun']} re-run "
        f"(lost to the device, a worker or an interruption: kept as Fail, not counted)."
    )
    lines.append("")
    lines.append(
        "A trial is feasible when its user attribute `feasible` is true: its constraints "
        "(`constraint_names` in the study's user attributes) are all <= 0."
    )
    return "\n".join(lines) + "\n"


def write_note(study: optuna.Study, campaign: Campaign) -> None:
    """Rewrite the study's note. Never raises: a note is not worth a campaign."""
    try:
        from optuna_dashboard import save_note

        save_note(study, render_note(digest(study, campaign)))
    except Exception as exc:
        _log.warning("could not write the study note: %s", exc)
