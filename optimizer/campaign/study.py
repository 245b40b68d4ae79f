"""The Optuna study of a campaign: storage, sampler, pruner, constraints, and how one trial's
outcome is written (values, constraints, user attributes, artifacts)."""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.trial import FrozenTrial, TrialState

from optimizer.campaign.storage import open_storage, sqlite_file
from optimizer.config import Campaign
from optimizer.plugin_api.task import DEFAULT_METRIC
from optimizer.trial.log import LOG_NAME
from optimizer.trial.outcome import (
    CONTENDED_ATTR,
    REFERENCE_JOBS_ATTR,
    UNUSED_PARAMS_ATTR,
    TrialOutcome,
)

# Constraints are written as the list-valued system attribute "constraints": Optuna 5's samplers
# read it (as well as the per-name keys Trial.set_constraint writes), and optuna-dashboard 0.21
# reads only this form to show feasibility. Their names, in order, are a study user attribute.
CONSTRAINTS_KEY = "constraints"
CONSTRAINT_NAMES_ATTR = "constraint_names"
# A trial stopped before its accuracy was known cannot be called feasible.
UNKNOWN_CONSTRAINT = 1.0
BASELINE_ATTR = "baseline"
INTERRUPTED_ATTR = "interrupted"
RETRIED_ATTR = "retried"  # lost to the device or a worker, and run again: not counted
INFRA_ATTEMPT_ATTR = "infra_attempt"  # how many times this trial's parameters were re-run
BASELINE_TRAINING_ATTR = "baseline_training"  # study attribute: how the baseline converged
AGENT_POOL_ATTR = "agent_pool"  # study attribute: the pool's health as the driver last saw it
RESOLVED_PARAMS_ATTR = "resolved_params"
# The campaign's reference latency is the median of every job's (REFERENCE_JOBS_ATTR), and
# their drift is flagged beyond DRIFT_LIMIT.
DRIFT_LIMIT = 0.10
DRIFT_WINDOW = 5
# A job is judged contended against the lower quartile of the last QUIET_WINDOW reference jobs.
QUIET_WINDOW = 20
QUIET_MIN_JOBS = 3


def _sampler(campaign: Campaign) -> optuna.samplers.BaseSampler:
    seed = campaign.search.seed
    if campaign.search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if campaign.search.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    # Optuna 5's samplers read the constraints each trial sets (Trial.set_constraint).
    # group=True: the space is conditional (a parameter is active only when another says so) and
    # the baseline has no parameters at all, so a plain multivariate TPE would see an empty
    # intersection and sample every parameter independently. constant_liar: trials in flight
    # count as bad, so parallel workers do not all sample the same point.
    with warnings.catch_warnings():  # experimental in Optuna 5; said once here, not per run
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=5, multivariate=True, group=True, constant_liar=True
        )


def open_study(campaign: Campaign) -> optuna.Study:
    pareto = campaign.objective.mode == "pareto"
    # No early stop of fine-tuning: every rule measured stopped the candidates the search needs
    # (docs/architecture.md, "Fine-tuning is never stopped early"). The per-epoch values are
    # still recorded, for the dashboard's learning curves.
    return optuna.create_study(
        storage=open_storage(campaign.storage_url, campaign.storage.retry_s),
        study_name=campaign.name,
        sampler=_sampler(campaign),
        pruner=optuna.pruners.NopPruner(),
        directions=["minimize", "maximize"] if pareto else ["minimize"],
        load_if_exists=True,
    )


def load_existing_study(campaign: Campaign) -> optuna.Study:
    """The campaign's study as stored, for the commands that read it (status, export), with
    the same retries as the driver's; raises KeyError, like optuna.load_study, when no campaign
    of that name has run there. Reading creates nothing: a study file that does not exist is
    no study, not a new empty file."""
    database = sqlite_file(campaign.storage_url)
    if database is not None and not database.exists():
        raise KeyError(campaign.name)
    return optuna.load_study(
        study_name=campaign.name,
        storage=open_storage(campaign.storage_url, campaign.storage.retry_s),
    )


def artifact_store(campaign: Campaign) -> FileSystemArtifactStore:
    path = campaign.run_dir / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(path))


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON (and the dashboard) have no NaN or infinity
    if hasattr(value, "item"):
        return value.item()
    return value


def constraint_values(campaign: Campaign, outcome: TrialOutcome) -> dict[str, float]:
    """Constraint values by name (<= 0 is satisfied): accuracy drop minus the budget, and peak
    memory minus its budget when the campaign sets one. Always in this order."""
    objective = campaign.objective
    complete = outcome.state == "COMPLETE"
    values = {
        "accuracy_drop": outcome.attrs["accuracy_drop"] - objective.max_accuracy_drop
        if complete
        else UNKNOWN_CONSTRAINT
    }
    if objective.max_memory_mb is not None:
        values["peak_memory_mb"] = (
            (outcome.attrs.get("peak_memory_mb") or 0) - objective.max_memory_mb
            if complete
            else UNKNOWN_CONSTRAINT
        )
    return values


def reference_jobs(trials: Iterable[FrozenTrial]) -> list[dict[str, float]]:
    """Every job's reference timing recorded so far, oldest first."""
    jobs = [job for t in trials for job in t.user_attrs.get(REFERENCE_JOBS_ATTR) or []]
    return sorted(jobs, key=lambda job: job["at"])


def reference_latency_ms(jobs: list[dict[str, float]]) -> float:
    """The campaign's reference latency: the median of the reference's latency over its jobs."""
    return statistics.median(job["latency_ms"] for job in jobs)


def reference_summary(trials: Iterable[FrozenTrial]) -> dict[str, Any] | None:
    """:func:`reference_drift` over the trials' reference jobs, with how many jobs were timed
    again because the device was busy (``retimed``). None before two jobs."""
    trials = list(trials)
    drift = reference_drift(reference_jobs(trials))
    if drift is not None:
        drift["retimed"] = sum(
            len((t.user_attrs.get(CONTENDED_ATTR) or {}).get("retimed_reference_ms", ()))
            for t in trials
        )
    return drift


def quiet_reference_ms(jobs: list[dict[str, float]]) -> float | None:
    """The reference's latency on a quiet device: the lower quartile of its last
    QUIET_WINDOW jobs (recent, so that a device that slowed for good is not timed again
    forever). None before QUIET_MIN_JOBS jobs."""
    recent = [job["latency_ms"] for job in jobs[-QUIET_WINDOW:]]
    if len(recent) < QUIET_MIN_JOBS:
        return None
    return statistics.quantiles(recent, n=4, method="inclusive")[0]


def reference_drift(jobs: list[dict[str, float]]) -> dict[str, Any] | None:
    """How far the reference's latency moved over the campaign: the median of its last
    DRIFT_WINDOW jobs against that of its first (fewer when there are few jobs), flagged
    beyond DRIFT_LIMIT (thermal throttling, a clock change, another tenant). None before two
    jobs."""
    if len(jobs) < 2:
        return None
    window = max(1, min(DRIFT_WINDOW, len(jobs) // 2))
    first = reference_latency_ms(jobs[:window])
    recent = reference_latency_ms(jobs[-window:])
    drift = recent / first - 1.0
    return {
        "jobs": len(jobs),
        "window": window,
        "first_ms": first,
        "recent_ms": recent,
        "median_ms": reference_latency_ms(jobs),
        "drift": drift,
        "flagged": abs(drift) > DRIFT_LIMIT,
    }


def record(
    study: optuna.Study,
    trial: optuna.Trial,
    outcome: TrialOutcome,
    campaign: Campaign,
    store: FileSystemArtifactStore,
) -> FrozenTrial:
    reported = study._storage.get_trial(trial._trial_id).intermediate_values
    for step, value in outcome.intermediate:
        if step not in reported:
            trial.report(value, step)
    attrs = dict(outcome.attrs)
    latency = None
    if "speedup" in attrs and outcome.state != "FAIL":
        # The objective: the campaign's reference latency over the paired speedup, so trials
        # timed at different moments (the device drifting between them) compare as ratios do.
        jobs = reference_jobs(study.get_trials(deepcopy=False)) + attrs[REFERENCE_JOBS_ATTR]
        attrs["reference_latency_ms"] = reference_latency_ms(jobs)
        latency = attrs["latency_ms"] = attrs["reference_latency_ms"] / attrs["speedup"]
    constraints = constraint_values(campaign, outcome)
    attrs["feasible"] = outcome.state == "COMPLETE" and all(c <= 0 for c in constraints.values())
    for key, value in attrs.items():
        trial.set_user_attr(key, _jsonable(value))
    study._storage.set_trial_system_attr(
        trial._trial_id, CONSTRAINTS_KEY, [float(v) for v in constraints.values()]
    )
    if study.user_attrs.get(CONSTRAINT_NAMES_ATTR) != list(constraints):
        study.set_user_attr(CONSTRAINT_NAMES_ATTR, list(constraints))
    for name, path in outcome.artifacts.items():
        # The log always; the model as timed when complete or cut after its probe.
        if outcome.state != "FAIL" or name == LOG_NAME:
            upload_artifact(artifact_store=store, file_path=path, study_or_trial=trial)
    if outcome.state == "COMPLETE":
        values: Any = latency
        if campaign.objective.mode == "pareto":
            values = [latency, outcome.accuracy]
        return study.tell(trial, values)
    state = TrialState.PRUNED if outcome.state == "PRUNED" else TrialState.FAIL
    return study.tell(trial, state=state)


def metric_label(attrs: Mapping[str, Any]) -> str:
    """What a trial's ``accuracy`` is: top-1 unless its task named it (segmentation: mIoU)."""
    return attrs.get("accuracy_metric") or DEFAULT_METRIC


def trial_metric(trial: FrozenTrial | None) -> str:
    """:func:`metric_label` of ``trial`` (the baseline, say); top-1 when there is none yet."""
    return metric_label(trial.user_attrs if trial is not None else {})


def recipe(trial: FrozenTrial) -> dict[str, Any]:
    """The parameters that shaped ``trial``'s candidate: its sampled ones less those that had
    no effect on it (``unused_params``: the train stage's, when nothing was fine-tuned)."""
    unused = set(trial.user_attrs.get(UNUSED_PARAMS_ATTR) or ())
    return {name: value for name, value in trial.params.items() if name not in unused}


def baseline_trial(study: optuna.Study) -> FrozenTrial | None:
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if trial.user_attrs.get(BASELINE_ATTR):
            return trial
    return None


def best_feasible(study: optuna.Study) -> FrozenTrial | None:
    """The feasible trial with the highest paired speedup. Not the lowest ``latency_ms``: that
    is the reference's median *at record time* over the speedup, so it also moves with the
    device's drift between the two trials' records."""
    return best_feasible_among(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def best_feasible_among(trials: Iterable[FrozenTrial]) -> FrozenTrial | None:
    """:func:`best_feasible` among ``trials`` (the study's, read once for several figures)."""
    feasible = [
        t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("feasible")
    ]
    return max(feasible, key=lambda t: t.user_attrs["speedup"], default=None)


#: The states of a trial that has ended.
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def counted_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Finished trials that count towards the campaign's target (interrupted ones re-run)."""
    return [
        t
        for t in study.get_trials(deepcopy=False, states=FINISHED)
        if not (t.user_attrs.get(INTERRUPTED_ATTR) or t.user_attrs.get(RETRIED_ATTR))
    ]


def failure_reasons(trials: Iterable[FrozenTrial]) -> list[dict[str, Any]]:
    """Each failed trial's number and the first line of why it failed, in trial order."""
    failed = []
    for trial in trials:
        if trial.state == TrialState.FAIL:
            reason = str(trial.user_attrs.get("fail_reason") or "").strip()
            first = reason.splitlines()[0] if reason else "no reason recorded"
            failed.append({"trial": trial.number, "reason": first})
    return failed
