"""``vitopt run | status | baseline | export``: campaigns from the command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import click
import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.table import Table

from optimizer.campaign.driver import (
    CampaignFailed,
    CampaignInterrupted,
    agent_endpoint,
    baseline_reference,
    prepare,
    run_campaign,
)
from optimizer.campaign.executor import ClusterUnavailable
from optimizer.campaign.figures import speedup
from optimizer.campaign.note import drift_line
from optimizer.campaign.storage import StorageUnavailable
from optimizer.campaign.study import (
    AGENT_POOL_ATTR,
    RESOLVED_PARAMS_ATTR,
    RETRIED_ATTR,
    baseline_trial,
    best_feasible,
    counted_trials,
    failure_reasons,
    load_existing_study,
    metric_label,
    reference_drift,
    reference_jobs,
    trial_metric,
)
from optimizer.config import Campaign, CampaignError, load_campaign
from optimizer.device.client import AgentError
from optimizer.device.pool import AgentPool
from optimizer.plugin_host.manager import PluginError
from optimizer.trial.log import LOG_NAME, LOG_TAIL_ATTR
from optimizer.trial.outcome import TrialOutcome, TrialRequest
from optimizer.trial.pipeline import run_trial

USER_ERRORS = (
    CampaignError,
    PluginError,
    CampaignFailed,
    AgentError,
    FileNotFoundError,
    StorageUnavailable,
    ClusterUnavailable,
)
_agents_option = click.option(
    "--agent",
    "agent_urls",
    multiple=True,
    metavar="URL",
    help="a device agent URL; repeat for a pool (overrides agents.urls)",
)
_storage_option = click.option(
    "--storage",
    metavar="URL",
    help="the study's Optuna storage URL, overriding the campaign file's "
    "(default sqlite:///runs/NAME/study.db); give the one 'vitopt run --storage' was given",
)
_campaign_arg = click.argument(
    "campaign_file", metavar="CAMPAIGN.yaml", type=click.Path(dir_okay=False, path_type=Path)
)


def _load(path: Path, storage: str | None = None, **overrides: Any) -> Campaign:
    """The campaign file, validated, with ``--storage`` and other command-line overrides."""
    try:
        return load_campaign(path, **{"storage.url": storage}, **overrides)
    except CampaignError as exc:
        raise click.ClickException(str(exc)) from exc


def _fmt_trial(trial: FrozenTrial) -> list[str]:
    attrs = trial.user_attrs
    return [
        str(trial.number),
        f"{attrs.get('latency_ms', float('nan')):.3f}",
        speedup(attrs.get("speedup"), attrs.get("speedup_ci")),
        f"{attrs.get('accuracy', float('nan')) * 100:.2f}",
        f"{attrs.get('accuracy_drop', float('nan')) * 100:+.2f}",
        _millions(attrs.get("params_count")),
        _millions(attrs.get("macs")),
        "yes" if attrs.get("feasible") else "no",
        ", ".join(f"{k}={_short(v)}" for k, v in sorted(trial.params.items())),
    ]


def _millions(count: Any) -> str:
    return "—" if count is None else f"{count / 1e6:.2f}"


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def trials_table(title: str, trials: list[FrozenTrial]) -> Table:
    table = Table(title=title)
    label = trial_metric(trials[0] if trials else None)
    columns = (
        "trial",
        "p50 ms",
        "speedup [95 %]",
        f"{label} %",
        "drop pt",
        "weights M",
        "MACs M",
        "feasible",
        "params",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "params" else "right")
    for trial in trials:
        table.add_row(*_fmt_trial(trial))
    return table


def print_summary(console: Console, summary: dict[str, Any]) -> None:
    base, best, counts = summary["baseline"], summary["best"], summary["trials"]
    console.print(
        f"[bold]{summary['campaign']}[/]: {counts['complete']} complete, {counts['pruned']} "
        f"pruned, {counts['failed']} failed in {summary['wall_s']:.0f} s"
    )
    if base:
        console.print(
            f"baseline: {summary['accuracy_metric']} {base['accuracy'] * 100:.2f}%, "
            f"p50 {base['latency_ms']:.3f} ms "
            f"on {base['device']} ({base['backend']})"
        )
    if best:
        console.print(
            f"[green]best feasible: trial {best['trial']}[/]: p50 {best['latency_ms']:.3f} ms, "
            f"{speedup(best['speedup'], best['speedup_ci'])} faster (paired, 95 % interval), "
            f"{summary['accuracy_metric']} "
            f"{best['accuracy'] * 100:.2f}% "
            f"(drop {best['accuracy_drop'] * 100:+.2f} pt, budget "
            f"{summary['max_accuracy_drop'] * 100:.2f} pt)"
        )
        console.print("  params: " + json.dumps(best["params"], sort_keys=True))
    else:
        console.print("[yellow]no feasible candidate yet[/]")
    print_failures(console, summary["failures"])
    print_drift(console, summary["reference"])


def print_failures(console: Console, failures: list[dict[str, Any]], shown: int = 10) -> None:
    """Why trials failed, one line each (the last ``shown``); the rest by count."""
    if not failures:
        return
    console.print(f"[red]failed trials[/] ({len(failures)}; details: vitopt status --trial N):")
    if len(failures) > shown:
        console.print(f"  … {len(failures) - shown} earlier")
    for failure in failures[-shown:]:
        console.print(f"  #{failure['trial']}: {failure['reason']}", soft_wrap=True, markup=False)


def print_drift(console: Console, drift: dict[str, Any] | None) -> None:
    """The reference's latency over the campaign: red when it drifted past the limit."""
    style = "bold red" if drift is not None and drift["flagged"] else "dim"
    console.print(f"[{style}]reference latency: {drift_line(drift)}[/]", soft_wrap=True)


@click.command()
@_campaign_arg
@click.option("--trials", type=click.IntRange(min=1), help="total trials (overrides search.trials)")
@click.option("--workers", type=click.IntRange(min=0), help="parallel trials; 0 = in-process")
@_agents_option
@_storage_option
@click.option(
    "--ray-address",
    help="join a running Ray cluster: auto, HOST:PORT or ray://HOST:10001 "
    "(overrides execution.ray_address; see docs/distributed.md)",
)
@click.option("--json", "as_json", is_flag=True, help="print the final summary as JSON")
def run(
    campaign_file: Path,
    trials: int | None,
    workers: int | None,
    agent_urls: tuple[str, ...],
    storage: str | None,
    ray_address: str | None,
    as_json: bool,
) -> None:
    """Run a search campaign, or resume it: finished trials are kept.

    Trials run in parallel as Ray tasks (a local Ray runtime, or a cluster with --ray-address)
    and are measured by the campaign's device agents, the least busy healthy one first.
    Ctrl-C stops within seconds; the same command resumes."""
    campaign = _load(
        campaign_file,
        storage,
        **{"search.trials": trials, "execution.ray_address": ray_address},
    )
    console = Console(stderr=as_json)
    try:
        summary = run_campaign(campaign, console, workers, list(agent_urls))
    except CampaignInterrupted as exc:
        Console(stderr=True).print(f"[yellow]{exc}[/]", soft_wrap=True)
        raise SystemExit(130) from exc
    except USER_ERRORS as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(summary))
    else:
        print_summary(console, summary)


def _open_existing(campaign: Campaign) -> optuna.Study:
    try:
        return load_existing_study(campaign)
    except KeyError as exc:
        raise click.ClickException(
            f"no study {campaign.name!r} in {campaign.storage_url}: run 'vitopt run' first"
        ) from exc
    except StorageUnavailable as exc:
        raise click.ClickException(str(exc)) from exc


def nodes_table(trials: list[FrozenTrial]) -> Table:
    """Trials per machine: a Ray node (id and address), or the driver's host in-process."""
    rows: dict[str, dict[str, int]] = {}
    for trial in trials:
        attrs = trial.user_attrs
        if "hostname" not in attrs:
            continue
        node = attrs.get("node_id")
        where = f"{attrs.get('node_ip')} ({node[:12]})" if node else f"{attrs['hostname']} (driver)"
        counts = rows.setdefault(where, {"trials": 0, "complete": 0, "failed": 0, "re-run": 0})
        counts["trials"] += 1
        counts["complete"] += trial.state == TrialState.COMPLETE
        counts["failed"] += trial.state == TrialState.FAIL
        counts["re-run"] += bool(attrs.get(RETRIED_ATTR))
    table = Table(title="trials per node")
    for column in ("node", "trials", "complete", "failed", "re-run"):
        table.add_column(column, justify="left" if column == "node" else "right")
    for where, counts in sorted(rows.items()):
        table.add_row(where, *(str(v) for v in counts.values()))
    return table


def agents_table(trials: list[FrozenTrial], pool: list[dict[str, Any]]) -> Table:
    """Measurements per agent, from the trials' records, with each agent's health as the
    campaign's driver last saw it."""
    jobs: dict[str, dict[str, int]] = {}
    for trial in trials:
        for job in trial.user_attrs.get("agent_jobs") or []:
            counts = jobs.setdefault(job["agent"], {"jobs": 0, "ok": 0, "lost": 0})
            counts["jobs"] += 1
            counts["ok"] += job["status"] == "ok"
            counts["lost"] += job["status"] == "infra_error"
    health = {state["url"]: state for state in pool}
    table = Table(title="measurements per agent")
    table.add_column("agent")
    for column in ("jobs", "ok", "lost to the agent"):
        table.add_column(column, justify="right")
    table.add_column("health (last seen)")
    for url in sorted(jobs.keys() | health.keys()):
        counts = jobs.get(url, {"jobs": 0, "ok": 0, "lost": 0})
        state = health.get(url)
        if state is None:
            seen = "-"
        else:
            seen = "healthy" if state["healthy"] else f"resting: {state['last_error']}"
        table.add_row(url, *(str(v) for v in counts.values()), seen)
    return table


@click.command()
@_campaign_arg
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True)
@click.option(
    "--trial",
    "number",
    type=click.IntRange(min=0),
    help="show this trial alone: state, why it failed or was cut, its figures, its log's end",
)
@_storage_option
def status(campaign_file: Path, top: int, number: int | None, storage: str | None) -> None:
    """Show progress, baseline, best feasible candidate, top trials, the Pareto front and why
    trials failed; with --trial N, that trial in full."""
    campaign = _load(campaign_file, storage)
    study = _open_existing(campaign)
    console = Console()
    if number is not None:
        print_trial(console, campaign, _pick(study, str(number), complete=False))
        return
    trials = counted_trials(study)
    states = [t.state for t in trials]
    running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    console.print(
        f"[bold]{campaign.name}[/] ({campaign.storage_url}): {len(trials)}/"
        f"{campaign.search.trials} trials — {states.count(TrialState.COMPLETE)} complete, "
        f"{states.count(TrialState.PRUNED)} pruned, {states.count(TrialState.FAIL)} failed, "
        f"{running} running"
    )
    base = baseline_trial(study)
    if base is not None:
        console.print(trials_table("baseline (timed against itself)", [base]))
    print_drift(console, reference_drift(reference_jobs(study.get_trials(deepcopy=False))))
    best = best_feasible(study)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    ranked = sorted(
        complete,
        key=lambda t: (
            not t.user_attrs.get("feasible"),
            t.user_attrs.get("latency_ms", float("inf")),
        ),
    )
    console.print(trials_table(f"top {top} (feasible first, by latency)", ranked[:top]))
    if campaign.objective.mode == "pareto":
        console.print(trials_table("Pareto front (latency, accuracy)", study.best_trials))
    finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    console.print(agents_table(finished, study.user_attrs.get(AGENT_POOL_ATTR) or []))
    console.print(nodes_table(finished))
    if best is None:
        console.print("[yellow]no feasible candidate yet[/]")
    print_failures(console, failure_reasons(trials))


def print_trial(console: Console, campaign: Campaign, trial: FrozenTrial) -> None:
    """One trial in full: its state and why, its figures, parameters and its log's last lines."""
    attrs = trial.user_attrs
    console.print(f"[bold]trial {trial.number}[/]: {trial.state.name}")
    for key in ("fail_reason", "pruned_reason"):
        if attrs.get(key):
            console.print(f"  {key.replace('_', ' ')}: {attrs[key]}", soft_wrap=True, markup=False)
    console.print(trials_table(f"trial {trial.number}", [trial]))
    resolved = attrs.get(RESOLVED_PARAMS_ATTR) or trial.params
    console.print("  params: " + json.dumps(resolved, sort_keys=True), soft_wrap=True)
    log = campaign.run_dir / "trials" / f"{trial.number:05d}" / LOG_NAME
    tail = attrs.get(LOG_TAIL_ATTR) or []
    console.print(
        f"  log ({log if log.exists() else 'the dashboard lists it as an artifact'}), "
        f"last {len(tail)} lines:"
    )
    for line in tail:
        console.print(f"    {line}", soft_wrap=True, markup=False, highlight=False)


def _run_one(
    campaign: Campaign,
    console: Console,
    agent_urls: tuple[str, ...],
    *,
    number: int,
    params: dict[str, Any] | None,
    work_dir: Path,
    base: FrozenTrial | None = None,
    save_weights: Path | None = None,
) -> TrialOutcome:
    """One trial outside the study, in this process (``params=None``: the baseline's), timed
    against the campaign's baseline ``base`` (None: against itself)."""
    try:
        with agent_endpoint(campaign, console, list(agent_urls)) as endpoint:
            setup = prepare(campaign, console, endpoint)
            return run_trial(
                TrialRequest(
                    campaign=campaign,
                    number=number,
                    params=dict(setup.space.baseline) if params is None else params,
                    checkpoint=setup.checkpoint,
                    agents=AgentPool(*setup.pool_args()),
                    agent_token=endpoint.token,
                    device_info=setup.device_info,
                    work_dir=work_dir.resolve(),
                    baseline=None if base is None else {"accuracy": base.user_attrs["accuracy"]},
                    reference=None if base is None else baseline_reference(campaign, base),
                    save_weights=save_weights.resolve() if save_weights else None,
                )
            )
    except USER_ERRORS as exc:
        raise click.ClickException(str(exc)) from exc


@click.command()
@_campaign_arg
@_agents_option
@_storage_option
def baseline(campaign_file: Path, agent_urls: tuple[str, ...], storage: str | None) -> None:
    """Measure the uncompressed model only: its accuracy and latency on the device."""
    campaign = _load(campaign_file, storage)
    console = Console()
    outcome = _run_one(
        campaign,
        console,
        agent_urls,
        number=0,
        params=None,
        work_dir=campaign.run_dir / "baseline-measure",
    )
    if outcome.state != "COMPLETE":
        raise click.ClickException(f"baseline failed: {outcome.attrs.get('fail_reason')}")
    attrs = outcome.attrs
    console.print(
        f"baseline {campaign.model.name}: {metric_label(attrs)} {attrs['accuracy'] * 100:.2f}%, "
        f"p50 {attrs['latency_p50_ms']:.3f} ms (p90 {attrs['latency_p90_ms']:.3f}, CV "
        f"{attrs['latency_cv'] * 100:.1f}%) on {attrs['device']} ({attrs['backend_version']}), "
        f"{attrs['params_count']:,} parameters, {attrs['macs']:,} MACs"
    )


@click.command()
@_campaign_arg
@click.option("--trial", "which", default="best", show_default=True, help="a trial number or best")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@_agents_option
@_storage_option
def export(
    campaign_file: Path, which: str, out: Path, agent_urls: tuple[str, ...], storage: str | None
) -> None:
    """Rebuild a candidate deterministically: ONNX model, safetensors weights and a report."""
    campaign = _load(campaign_file, storage)
    study = _open_existing(campaign)
    trial = _pick(study, which)
    base = baseline_trial(study)
    console = Console()
    out.mkdir(parents=True, exist_ok=True)
    outcome = _run_one(
        campaign,
        console,
        agent_urls,
        number=trial.number,
        params=dict(trial.user_attrs[RESOLVED_PARAMS_ATTR]),
        work_dir=out / "work",
        base=None if base is None or base.number == trial.number else base,
        save_weights=out / "model.safetensors",
    )
    if outcome.state != "COMPLETE":
        raise click.ClickException(f"rebuild failed: {outcome.attrs.get('fail_reason')}")
    shutil.copy(outcome.artifacts["model.onnx"], out / "model.onnx")
    shutil.copy(outcome.artifacts["measurement.json"], out / "measurement.json")
    recorded = {
        k: trial.user_attrs.get(k) for k in ("accuracy", "latency_ms", "speedup", "speedup_ci")
    }
    report = {
        "campaign": campaign.name,
        "trial": trial.number,
        "params": trial.user_attrs[RESOLVED_PARAMS_ATTR],
        "recorded": recorded,
        "rebuilt": {
            k: outcome.attrs.get(k) for k in ("accuracy", "latency_p50_ms", "speedup", "speedup_ci")
        },
        "attrs": outcome.attrs,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "report.md").write_text(_markdown(report))
    console.print(
        f"trial {trial.number} rebuilt in {out}: {metric_label(outcome.attrs)} "
        f"{outcome.attrs['accuracy'] * 100:.2f}% "
        f"(recorded {trial.user_attrs.get('accuracy', float('nan')) * 100:.2f}%), "
        f"p50 {outcome.attrs['latency_p50_ms']:.3f} ms, "
        f"{speedup(outcome.attrs['speedup'], outcome.attrs.get('speedup_ci'))} the baseline's "
        f"speed (recorded {speedup(recorded['speedup'], recorded['speedup_ci'])})"
    )


def _pick(study: optuna.Study, which: str, complete: bool = True) -> FrozenTrial:
    """The trial ``which`` names ('best' or its number); ``complete``: it must have completed."""
    if which == "best":
        best = best_feasible(study)
        if best is None:
            raise click.ClickException("no feasible trial yet")
        return best
    if not which.isdigit():
        raise click.BadParameter(f"'best' or a trial number, got {which!r}", param_hint="--trial")
    numbers = {trial.number: trial for trial in study.get_trials(deepcopy=False)}
    trial = numbers.get(int(which))
    if trial is None:
        raise click.ClickException(
            f"no trial {which} in {study.study_name!r}: its trials are 0 to {max(numbers)}"
            if numbers
            else f"no trial {which}: {study.study_name!r} has no trials yet"
        )
    if complete and trial.state != TrialState.COMPLETE:
        raise click.ClickException(f"trial {trial.number} is {trial.state.name}, not COMPLETE")
    return trial


def _markdown(report: dict[str, Any]) -> str:
    rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(report["params"].items()))
    rec, new = report["recorded"], report["rebuilt"]
    return (
        f"# {report['campaign']}: trial {report['trial']}\n\n"
        f"| parameter | value |\n|---|---|\n{rows}\n\n"
        f"| | recorded | rebuilt |\n|---|---|---|\n"
        f"| {metric_label(report['attrs'])} | {rec['accuracy']} | {new['accuracy']} |\n"
        f"| p50 latency (ms) | {rec['latency_ms']} | {new['latency_p50_ms']} |\n"
        f"| speedup | {rec['speedup']} | {new['speedup']} |\n"
    )
