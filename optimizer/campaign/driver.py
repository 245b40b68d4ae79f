"""The campaign driver: the only writer of the study.

ask → sample → submit to the executor → record outcomes as they come. The baseline runs first
and alone, so every later trial's speedup and accuracy drop are relative to a measurement taken
on the same agent. Ctrl-C (or SIGTERM) stops within seconds: in-flight trials are marked
interrupted (FAIL with a reason) and re-queued, so ``vitopt run`` again resumes where it was.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from rich.console import Console

from optimizer.campaign.executor import Executor, make_executor
from optimizer.campaign.note import name_objectives, write_note
from optimizer.campaign.progress import (
    baseline_training_bar,
    convergence_summary,
    status_line,
    trials_bar,
)
from optimizer.campaign.search_space import SearchSpace, build_search_space, offered_choices
from optimizer.campaign.study import (
    AGENT_POOL_ATTR,
    BASELINE_ATTR,
    BASELINE_TRAINING_ATTR,
    INFRA_ATTEMPT_ATTR,
    INTERRUPTED_ATTR,
    RESOLVED_PARAMS_ATTR,
    RETRIED_ATTR,
    artifact_store,
    baseline_trial,
    best_feasible,
    best_feasible_among,
    counted_trials,
    failure_reasons,
    open_study,
    quiet_reference_ms,
    recipe,
    record,
    reference_jobs,
    reference_summary,
    trial_metric,
)
from optimizer.config import Campaign, CampaignError
from optimizer.device import colocation
from optimizer.device.client import Reference
from optimizer.device.local_agent import AgentStartError, local_agent
from optimizer.device.pool import AgentLease, AgentPool, AgentPoolError, probe_agents
from optimizer.plugin_api.task import scores_outputs
from optimizer.plugin_host.registry import Registry, plugin_registry
from optimizer.trial.baseline import convergence_path, prepare_baseline
from optimizer.trial.outcome import UNUSED_PARAMS_ATTR, TrialOutcome, TrialRequest
from optimizer.trial.pipeline import check_defaults, load_splits, preflight_subject
from optimizer.trial.stages import (
    DefaultsChangeTheModel,
    TechniqueFailed,
    TechniqueRefuses,
    model_choices,
    preflight_techniques,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


class CampaignFailed(Exception):
    """The campaign cannot go on (e.g. its baseline failed); the message says why."""


class CampaignInterrupted(Exception):
    """Stopped by the user; finished trials are kept and ``vitopt run`` resumes."""


@dataclass
class Setup:
    campaign: Campaign
    agent_urls: list[str]  # the pool: agents of the target device type
    silent_agents: list[str]  # of those, the ones that did not answer the first probe
    device_type: str
    agent_token: str | None
    device_info: dict[str, Any]
    space: SearchSpace
    checkpoint: Path
    registry: Registry
    quiet_lock: Path | None  # the embedded agent's measurement lock (None: remote agents)
    evaluate_on: str = "host"  # where accuracy is measured: host or device (evaluation_place)
    baseline_training: dict[str, Any] | None = None  # how it converged (None: user checkpoint)

    def pool_args(self) -> tuple[Any, ...]:
        """What :class:`AgentPool` is built from, wherever it lives."""
        agents = self.campaign.agents
        return (
            self.agent_urls,
            self.device_type,
            self.agent_token,
            agents.reprobe_s,
            self.silent_agents,
        )


@dataclass
class Endpoint:
    """Where the campaign measures: its agents' URLs and token, and, for an embedded agent
    that pauses this host's trials while it times, its lock folder."""

    urls: list[str]
    token: str | None
    quiet_lock: Path | None = None


@contextlib.contextmanager
def agent_endpoint(
    campaign: Campaign, console: Console, urls: list[str] | None = None
) -> Iterator[Endpoint]:
    """The campaign's agents, or an embedded one on 127.0.0.1 (onnxruntime backend) for the
    duration of the run when the campaign names none."""
    token = os.environ.get(campaign.agents.token_env) or None
    urls = list(urls or campaign.agents.urls)
    if urls:
        yield Endpoint(urls, token)
        return
    env = dict(os.environ)
    env.setdefault("JETSON_AGENT_ORT_THREADS", "1")  # steadier timings on a shared CPU
    cache = campaign.run_dir / "agent-cache"
    quiet = colocation.host_lock_folder() if campaign.agents.measure.quiet else None
    args = ["--backend", "onnxruntime", "--log-level", "WARNING"]
    if quiet is not None:
        args += ["--quiet-lock", str(quiet)]
    try:
        with local_agent(cache, *args, env=env) as url:
            console.print(
                f"[dim]no agent in the campaign: started an embedded one at {url} "
                "(onnxruntime on this machine's CPU"
                + ("; trials pause while it times" if quiet else "")
                + ")[/]"
            )
            yield Endpoint([url], None, quiet)
    except AgentStartError as exc:
        raise CampaignFailed(str(exc)) from exc


def baseline_reference(campaign: Campaign, base: optuna.trial.FrozenTrial) -> Reference:
    """The baseline's deployable model, which every later job is timed against, at the
    precision it was measured at (kept under the campaign's run folder)."""
    path = (campaign.run_dir / "trials" / f"{base.number:05d}" / "model.onnx").resolve()
    if not path.exists():
        raise CampaignFailed(
            f"the baseline's model {path} is gone: every candidate is timed against it; "
            "start a new campaign name"
        )
    return Reference(path, base.user_attrs.get("precision", "fp32"))


def against_baseline(campaign: Campaign, base: optuna.trial.FrozenTrial | None) -> dict[str, Any]:
    """A trial request's ``baseline`` (its accuracy, for the drop) and ``reference`` (its model,
    for the paired timing); both None for the baseline itself (``base`` None), which is timed
    against itself."""
    if base is None:
        return {"baseline": None, "reference": None}
    return {
        "baseline": {"accuracy": base.user_attrs["accuracy"]},
        "reference": baseline_reference(campaign, base),
    }


def evaluation_place(campaign: Campaign, info: dict[str, Any], task: Any) -> tuple[str, str | None]:
    """Where the campaign measures accuracy (``host`` or ``device``) for ``objective.evaluate_on``
    against the agent's ``GET /v1/info``, and a note when ``auto`` falls back to the host.
    CampaignFailed when ``device`` is asked but the agent or the task cannot do it."""
    asked = campaign.objective.evaluate_on
    backend = (info.get("backend") or {}).get("name", "?")
    why_not = None
    if not info.get("evaluates"):
        why_not = f"the agent's {backend} backend does not evaluate models (GET /v1/info)"
    elif not scores_outputs(task):
        why_not = f"task {campaign.task.name} scores ONNX files only (it has no score_rows)"
    if asked == "device":
        if why_not is not None:
            raise CampaignFailed(f"objective.evaluate_on: device, but {why_not}; use host")
        return "device", None
    if asked == "host" or backend == "onnxruntime":
        return "host", None  # the host runs what an onnxruntime agent runs
    if why_not is not None:
        return "host", f"accuracy is measured on the host's onnxruntime: {why_not}"
    return "device", None


def preflight(campaign: Campaign) -> Registry:
    """What the campaign file names that only the enabled plugins know, checked by them: the
    plugins themselves (PluginError for a broken one), its data source and the ``data`` settings
    that source needs, its task and the ``model`` it can build, and a model family for the
    model when a technique works by one (CampaignError naming the key)."""

    def key(name: str) -> str:  # as load_campaign names them: FILE: KEY
        return f"{campaign.source}: {name}" if campaign.source else name

    registry = plugin_registry(campaign.plugins.disable)
    source = registry.data_source(campaign.data.source, key("data.source"))
    task = registry.task(campaign.task.name, key("task.name"))
    try:
        source.check(campaign.data)
    except ValueError as exc:
        raise CampaignError(f"{key('data.source')}: {campaign.data.source} {exc}") from exc
    try:
        task.check_model(campaign.model)
    except ValueError as exc:
        raise CampaignError(f"{key('model.name')}: {exc}") from exc
    needing = [
        entry.technique.name
        for entry in registry.techniques
        if getattr(entry.technique, "needs_model_family", False)
    ]
    if needing and registry.model_family(campaign.model.name) is None:
        raise CampaignError(
            f"{registry.no_family(campaign.model.name, key('model.name'))}: "
            f"{', '.join(needing)} works by a family's rules (plugins.disable turns it off)"
        )
    return registry


def prepare(campaign: Campaign, console: Console, endpoint: Endpoint) -> Setup:
    """Everything a run or a baseline needs: device facts, the search space, the baseline."""
    urls, token = endpoint.urls, endpoint.token
    try:
        plan = probe_agents(urls, token, campaign.agents.device)
    except AgentPoolError as exc:
        raise CampaignFailed(str(exc)) from exc
    for note in plan.notes:
        console.print(f"[yellow]agents:[/] {note}")
    info = next(iter(plan.infos.values()))
    registry = preflight(campaign)
    declared = registry.declared()
    offered = offered_choices([entry.technique for entry in registry.techniques], info)
    with tempfile.TemporaryDirectory(prefix="vitopt-preflight-") as work:
        model, ctx = preflight_subject(campaign, registry, info, Path(work))
        try:
            allowed = model_choices(registry.techniques, model, ctx)
            space = build_search_space(
                declared,
                campaign.search.space,
                offered,
                str(campaign.source or "campaign"),
                allowed,
            )
            for note in space.notes:
                console.print(f"[yellow]search space:[/] {note}")
            preflight_techniques(registry.techniques, model, space.possible, ctx)
        except (TechniqueFailed, TechniqueRefuses) as exc:
            raise CampaignFailed(str(exc)) from exc
    place, note = evaluation_place(campaign, info, registry.task(campaign.task.name))
    if note is not None:
        console.print(f"[yellow]evaluation:[/] {note}")
    splits = load_splits(campaign)
    with baseline_training_bar(console, campaign.model.train.epochs) as on_epoch:
        checkpoint, trained = prepare_baseline(campaign, splits, on_epoch)
    if trained:
        console.print(f"baseline trained and cached at {checkpoint}")
    record_path = convergence_path(checkpoint)
    convergence = json.loads(record_path.read_text()) if record_path.exists() else None
    if convergence is not None:
        console.print(f"baseline: {convergence_summary(convergence)}")
    with tempfile.TemporaryDirectory(prefix="vitopt-defaults-") as work:
        try:
            check_defaults(campaign, registry, checkpoint, info, dict(space.baseline), Path(work))
        except (DefaultsChangeTheModel, TechniqueFailed) as exc:
            raise CampaignFailed(str(exc)) from exc
    return Setup(
        campaign=campaign,
        agent_urls=[*plan.infos, *plan.silent],
        silent_agents=plan.silent,
        device_type=plan.device_type,
        agent_token=token,
        device_info=info,
        space=space,
        checkpoint=checkpoint.resolve(),
        registry=registry,
        quiet_lock=endpoint.quiet_lock,
        evaluate_on=place,
        baseline_training=convergence,
    )


def _requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial | optuna.Trial, why: str) -> None:
    storage, trial_id = study._storage, trial._trial_id
    storage.set_trial_user_attr(trial_id, INTERRUPTED_ATTR, True)
    storage.set_trial_user_attr(trial_id, "fail_reason", why)
    baseline = bool(trial.user_attrs.get(BASELINE_ATTR))
    study.tell(trial.number, state=TrialState.FAIL)
    study.enqueue_trial(trial.params, user_attrs={BASELINE_ATTR: True} if baseline else None)


def check_device_type(study: optuna.Study, device_type: str) -> None:
    """A resumed campaign measures on the device type its baseline was measured on: speedups
    and the latency-first cut compare with the baseline's latency."""
    base = baseline_trial(study)
    measured_on = base.user_attrs.get("device_type") if base is not None else None
    if measured_on is not None and measured_on != device_type:
        raise CampaignFailed(
            f"this campaign's baseline was measured on {measured_on!r}, but its agents now are "
            f"{device_type!r}: list agents of that type, or start a new campaign name"
        )


def recover_interrupted(
    study: optuna.Study, why: str = "interrupted: the driver stopped before this trial finished"
) -> int:
    """Trials left RUNNING by a driver that stopped: fail them with ``why``, run them again."""
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        _requeue(study, trial, why)
    return len(stale)


def _summary(study: optuna.Study, campaign: Campaign, wall_s: float) -> dict[str, Any]:
    trials = counted_trials(study)
    states = [t.state for t in trials]
    base = baseline_trial(study)
    best = best_feasible(study)
    summary: dict[str, Any] = {
        "campaign": campaign.name,
        "storage": campaign.storage_url,
        "trials": {
            "complete": states.count(TrialState.COMPLETE),
            "pruned": states.count(TrialState.PRUNED),
            "failed": states.count(TrialState.FAIL),
        },
        "wall_s": wall_s,
        "max_accuracy_drop": campaign.objective.max_accuracy_drop,
        "accuracy_metric": trial_metric(base),
        "baseline": None,
        "best": None,
        "reference": reference_summary(trials),
        "failures": failure_reasons(trials),
    }
    if base is not None:
        summary["baseline"] = {
            "trial": base.number,
            "accuracy": base.user_attrs["accuracy"],
            "latency_ms": base.user_attrs["latency_ms"],
            "device": base.user_attrs.get("device"),
            "backend": base.user_attrs.get("backend_version"),
        }
    if best is not None:
        summary["best"] = {
            "trial": best.number,
            "params": recipe(best),
            "unused_params": best.user_attrs.get(UNUSED_PARAMS_ATTR) or [],
            "accuracy": best.user_attrs["accuracy"],
            "latency_ms": best.user_attrs["latency_ms"],
            "speedup": best.user_attrs["speedup"],
            "speedup_ci": best.user_attrs.get("speedup_ci"),
            "accuracy_drop": best.user_attrs["accuracy_drop"],
        }
    return summary


def _report(trial: optuna.Trial, step: int, value: float) -> bool:
    """Write one epoch's validation value and ask Optuna's pruner whether to stop."""
    trial.report(value, step)
    return trial.should_prune()


def _answer_pruner(running: dict[Any, optuna.Trial], number: int, step: int, value: float) -> bool:
    """A Ray trial's per-epoch question, answered by the driver (the study's only writer)."""
    for trial in running.values():
        if trial.number == number:
            return _report(trial, step, value)
    return False


# Set by Ctrl-C or SIGTERM, and checked by the search loop before each step: the
# KeyboardInterrupt the handler raises is lost when it lands in a finalizer (Python ignores
# exceptions there; seen with SQLAlchemy's weakref callbacks), and the run must stop anyway.
_STOP = threading.Event()


def _raise_interrupt(signum: int, frame: Any) -> None:
    _STOP.set()
    raise KeyboardInterrupt


def _check_stop() -> None:
    if _STOP.is_set():
        raise KeyboardInterrupt


def run_campaign(
    campaign: Campaign,
    console: Console,
    workers: int | None = None,
    agent_urls: list[str] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the campaign until ``search.trials`` trials have finished."""
    started = time.monotonic()
    workers = campaign.execution.workers if workers is None else workers
    # SIGTERM stops a run the way Ctrl-C does, set-up included (the embedded agent is stopped).
    _STOP.clear()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    previous_int = signal.signal(signal.SIGINT, _raise_interrupt)
    try:
        # Names only the plugins and timm know, then the study: a campaign file that cannot
        # run fails before anything is written or trained.
        preflight(campaign)
        study = open_study(campaign)
        with agent_endpoint(campaign, console, agent_urls) as endpoint:
            setup = prepare(campaign, console, endpoint)
            check_device_type(study, setup.device_type)
            if setup.baseline_training is not None:
                study.set_user_attr(BASELINE_TRAINING_ATTR, setup.baseline_training)
            recovered = recover_interrupted(study)
            if recovered:
                console.print(f"resuming: {recovered} interrupted trial(s) queued again")
            if not study.trials:
                study.enqueue_trial({}, user_attrs={BASELINE_ATTR: True})
            executor = make_executor(campaign.execution, workers)
            for stop in (signal.SIGTERM, signal.SIGINT):  # ray.init installs its own
                signal.signal(stop, _raise_interrupt)
            try:
                pool = executor.share(AgentPool, *setup.pool_args())
                drive(study, setup, executor, pool, console, started)
            finally:
                executor.shutdown()
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
    summary = _summary(study, campaign, time.monotonic() - started)
    setup.registry.manager.hook.vitopt_campaign_finished(summary=summary)
    return summary


def drive(
    study: optuna.Study,
    setup: Setup,
    executor: Executor,
    pool: AgentLease,
    console: Console,
    started: float,
) -> None:
    """The search loop: keep the executor full, record outcomes as they come, until the
    target is reached. ``run_campaign`` wraps it with the set-up; benchmarks call it with a
    synthetic trial function to time the orchestration alone."""
    campaign = setup.campaign
    target = campaign.search.trials
    deadline = started + campaign.search.timeout_s if campaign.search.timeout_s else None
    store = artifact_store(campaign)
    name_objectives(study, campaign, setup.registry.task(campaign.task.name).metric_name)
    running: dict[Any, optuna.Trial] = {}
    with trials_bar(console, target, len(counted_trials(study))) as show:
        try:
            while True:
                _check_stop()
                _submit_more(study, setup, executor, pool, running, target, deadline)
                if not running:
                    break
                decide = functools.partial(_answer_pruner, running)
                for handle, outcome in executor.wait(list(running), 0.5, decide):
                    trial = running.pop(handle)
                    retry = _retry_on_infra(trial, outcome, campaign.execution.infra_retries)
                    frozen = record(study, trial, outcome, campaign, store)
                    if retry is not None:
                        study.enqueue_trial(trial.params, user_attrs=retry)
                    study.set_user_attr(AGENT_POOL_ATTR, pool.snapshot())
                    write_note(study, campaign)  # best effort: logs a warning on failure
                    setup.registry.manager.hook.vitopt_trial_finished(
                        trial_number=frozen.number,
                        state=frozen.state.name,
                        values=frozen.values,
                        attrs=frozen.user_attrs,
                    )
                    baseline_lost = frozen.user_attrs.get(BASELINE_ATTR) and retry is None
                    if baseline_lost and frozen.state != TrialState.COMPLETE:
                        raise CampaignFailed(
                            f"the baseline trial failed: {frozen.user_attrs.get('fail_reason')}"
                        )
                    show(len(counted_trials(study)), status_line(study))
        except KeyboardInterrupt:
            executor.cancel(list(running))
            # Every RUNNING trial, not only those in ``running``: a Ctrl-C inside study.ask()
            # or inside an in-process submit lands before the trial is in ``running``.
            recover_interrupted(study, "interrupted by the user")
            raise CampaignInterrupted(
                "stopped; finished trials are kept and interrupted ones will re-run. "
                "Run the same command again to resume."
            ) from None
    write_note(study, campaign)


def _retry_on_infra(
    trial: optuna.Trial, outcome: TrialOutcome, limit: int
) -> dict[str, Any] | None:
    """A trial lost to the device or to its worker, not to its candidate, runs again (at most
    ``limit`` times; the lost one is kept as FAIL with its reason but not counted). Returns
    the user attributes of the re-run, or None."""
    if outcome.state != "FAIL" or outcome.attrs.get("candidate_fault") is not False:
        return None
    attempt = int(trial.user_attrs.get(INFRA_ATTEMPT_ATTR, 0))
    if attempt >= limit:
        return None
    outcome.attrs[RETRIED_ATTR] = True
    retry: dict[str, Any] = {INFRA_ATTEMPT_ATTR: attempt + 1}
    if trial.user_attrs.get(BASELINE_ATTR):
        retry[BASELINE_ATTR] = True
    return retry


def _submit_more(study, setup: Setup, executor, pool, running, target, deadline) -> None:
    while len(running) < max(executor.capacity, 1):
        _check_stop()
        if len(counted_trials(study)) + len(running) >= target:
            return
        if deadline is not None and time.monotonic() >= deadline:
            return
        base = baseline_trial(study)
        if base is None and running:
            return  # the baseline runs alone: every later trial is measured against it
        trial = study.ask()  # a Ctrl-C from here on leaves it RUNNING: drive() requeues it
        running[_submit(study, setup, executor, pool, trial, base)] = trial


def _submit(study, setup: Setup, executor, pool, trial: optuna.Trial, base: Any) -> Any:
    """Sample ``trial``'s candidate (the defaults, for the baseline trial), record what it
    will run, and hand it to the executor; returns the executor's handle."""
    campaign = setup.campaign
    is_baseline = bool(trial.user_attrs.get(BASELINE_ATTR))
    if base is None and not is_baseline:
        raise CampaignFailed("no baseline trial in the study; start a new campaign name")
    # The baseline is not sampled: the uncompressed model, whatever the space's ranges.
    params = dict(setup.space.baseline) if is_baseline else setup.space.sample(trial)
    # Everything the pipeline saw, fixed and inactive values included, so that
    # 'vitopt export' rebuilds exactly this candidate.
    trial.set_user_attr(RESOLVED_PARAMS_ATTR, params)
    setup.registry.manager.hook.vitopt_trial_started(trial_number=trial.number, params=params)
    trials = study.get_trials(deepcopy=False)  # read once: the best so far and the quiet latency
    best = best_feasible_among(trials)
    cut = None
    if (
        not is_baseline
        and best is not None
        and campaign.objective.latency_first_cut
        and campaign.objective.mode == "latency"
    ):
        cut = best.user_attrs["speedup"]
    request = TrialRequest(
        campaign=campaign,
        number=trial.number,
        params=params,
        checkpoint=setup.checkpoint,
        agents=pool,
        agent_token=setup.agent_token,
        device_info=setup.device_info,
        work_dir=(campaign.run_dir / "trials" / f"{trial.number:05d}").resolve(),
        **against_baseline(campaign, None if is_baseline else base),
        evaluate_on=setup.evaluate_on,
        cut_speedup=cut,
        quiet_reference_ms=quiet_reference_ms(reference_jobs(trials)),
        quiet_lock=setup.quiet_lock,
    )
    return executor.submit(request, functools.partial(_report, trial))
