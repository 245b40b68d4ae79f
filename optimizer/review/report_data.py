"""What ``vitopt report`` shows, as plain data: every complete trial's row, the Pareto front,
the parameter importances (or why they were skipped) and the optimisation history. The
renderers (:mod:`.plotly_figures`, :mod:`.png_figures`, :mod:`.report`) read only this."""

from __future__ import annotations

import warnings
from typing import Any

import optuna
from optuna.importance import PedAnovaImportanceEvaluator
from optuna.trial import FrozenTrial, TrialState

from optimizer.campaign.note import digest
from optimizer.campaign.study import BASELINE_ATTR, baseline_trial, recipe
from optimizer.config import Campaign
from optimizer.plugin_api.task import DEFAULT_METRIC


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
        "params": recipe(trial),
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
    """Per complete trial, in trial order: its latency and the latency of the best feasible
    trial so far (the highest paired speedup, as ``best_feasible`` picks it)."""
    best: dict[str, Any] | None = None
    steps = []
    for row in sorted(rows, key=lambda r: r["trial"]):
        if row["feasible"] and (best is None or row["speedup"] > best["speedup"]):
            best = row
        steps.append(
            {
                "trial": row["trial"],
                "latency_ms": row["latency_ms"],
                "feasible": row["feasible"],
                "best_feasible_ms": None if best is None else best["latency_ms"],
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


def baseline_and_others(data: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The baseline's row and every other complete trial's, from :func:`collect`'s data."""
    rows = data["complete_trials"]
    base = next(r for r in rows if r["trial"] == data["baseline"]["trial"])
    return base, [r for r in rows if not r["baseline"]]
