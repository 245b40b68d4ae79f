"""``vitopt status``: a campaign's progress read from its study, without loading torch."""

from __future__ import annotations

from pathlib import Path

import click
from optuna.trial import TrialState
from rich.console import Console

from optimizer.campaign.note import disagreement_line, disagreements
from optimizer.campaign.progress import convergence_summary
from optimizer.campaign.study import (
    AGENT_POOL_ATTR,
    BASELINE_TRAINING_ATTR,
    baseline_trial,
    best_feasible,
    counted_trials,
    failure_reasons,
    reference_summary,
)
from optimizer.cli.study_views import (
    agents_table,
    campaign_arg,
    load_campaign_file,
    nodes_table,
    open_existing,
    pick_trial,
    print_drift,
    print_failures,
    print_trial,
    storage_option,
    trials_table,
)


@click.command()
@campaign_arg
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True)
@click.option(
    "--trial",
    "number",
    type=click.IntRange(min=0),
    help="show this trial alone: state, why it failed or was cut, its figures, its log's end",
)
@storage_option
def status(campaign_file: Path, top: int, number: int | None, storage: str | None) -> None:
    """Show progress, baseline, best feasible candidate, top trials, the Pareto front and why
    trials failed; with --trial N, that trial in full."""
    campaign = load_campaign_file(campaign_file, storage)
    study = open_existing(campaign)
    console = Console()
    if number is not None:
        print_trial(console, campaign, pick_trial(study, str(number), complete=False))
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
    convergence = study.user_attrs.get(BASELINE_TRAINING_ATTR)
    if convergence is not None:
        console.print(f"baseline training: {convergence_summary(convergence)}")
    print_drift(console, reference_summary(study.get_trials(deepcopy=False)))
    best = best_feasible(study)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    ranked = sorted(
        complete,
        key=lambda t: (
            not t.user_attrs.get("feasible"),
            -(t.user_attrs.get("speedup") or 0.0),
        ),
    )
    console.print(trials_table(f"top {top} (feasible first, by paired speedup)", ranked[:top]))
    if campaign.objective.mode == "pareto":
        console.print(trials_table("Pareto front (latency, accuracy)", study.best_trials))
    finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    console.print(agents_table(finished, study.user_attrs.get(AGENT_POOL_ATTR) or []))
    console.print(nodes_table(finished))
    if best is None:
        console.print("[yellow]no feasible candidate yet[/]")
    flagged = disagreements(trials)
    if flagged:
        console.print(f"[bold red]{disagreement_line(flagged)}[/]", soft_wrap=True)
    print_failures(console, failure_reasons(trials))
