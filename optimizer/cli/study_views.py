"""How the commands show a campaign's study in the terminal (tables, summaries, one trial in
full) and the options and loading they share. Cheap to import: no torch, no Ray, so that
``vitopt status`` starts in well under a second."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.table import Table

from optimizer.campaign.figures import speedup
from optimizer.campaign.note import drift_line
from optimizer.campaign.storage import StorageUnavailable
from optimizer.campaign.study import (
    RESOLVED_PARAMS_ATTR,
    RETRIED_ATTR,
    best_feasible,
    load_existing_study,
    recipe,
    trial_metric,
)
from optimizer.config import Campaign, CampaignError, load_campaign
from optimizer.trial.log import LOG_NAME, LOG_TAIL_ATTR

campaign_arg = click.argument(
    "campaign_file", metavar="CAMPAIGN.yaml", type=click.Path(dir_okay=False, path_type=Path)
)
storage_option = click.option(
    "--storage",
    metavar="URL",
    help="the study's Optuna storage URL, overriding the campaign file's "
    "(default sqlite:///runs/NAME/study.db); give the one 'vitopt run --storage' was given",
)
_campaign_arg = click.argument(
    "campaign_file", metavar="CAMPAIGN.yaml", type=click.Path(dir_okay=False, path_type=Path)
)


def load_campaign_file(path: Path, storage: str | None = None, **overrides: Any) -> Campaign:
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
        ", ".join(f"{k}={_short(v)}" for k, v in sorted(recipe(trial).items())),
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
        if best["unused_params"]:
            unused = ", ".join(best["unused_params"])
            console.print(f"  [dim]not used (nothing to fine-tune): {unused}[/]")
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


def open_existing(campaign: Campaign) -> optuna.Study:
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


def pick_trial(study: optuna.Study, which: str, complete: bool = True) -> FrozenTrial:
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
