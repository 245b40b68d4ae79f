"""What the driver shows while it works: the baseline's training bar and how it converged, the
trials' bar with a status line (done, pruned, failed, the best feasible so far). The loop
reports to these; it draws nothing itself."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import optuna
from optuna.trial import TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from optimizer.campaign.figures import speedup
from optimizer.campaign.study import best_feasible, counted_trials


@contextlib.contextmanager
def baseline_training_bar(
    console: Console, epochs: int
) -> Iterator[Callable[[int, int, float], None]]:
    """A transient bar of the baseline's epochs (out of its most); yields
    ``on_epoch(epoch, total, summary)``."""
    columns = (
        TextColumn("baseline training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[summary]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("train", total=epochs, summary="")

        def on_epoch(epoch: int, total: int, summary: str) -> None:
            progress.update(task, completed=epoch + 1, summary=summary)

        yield on_epoch


@contextlib.contextmanager
def trials_bar(console: Console, target: int, done: int) -> Iterator[Callable[[int, str], None]]:
    """The trials' bar towards ``target``; yields ``show(done, status)``."""
    columns = (
        TextColumn("trials"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
    )
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("trials", total=target, status="", completed=done)

        def show(done: int, status: str) -> None:
            progress.update(bar, completed=done, status=status)

        yield show


def status_line(study: optuna.Study) -> str:
    """One line: trials done, pruned and failed, and the best feasible candidate so far."""
    trials = counted_trials(study)
    states = [t.state for t in trials]
    best = best_feasible(study)
    line = (
        f"done {states.count(TrialState.COMPLETE)} · pruned {states.count(TrialState.PRUNED)}"
        f" · failed {states.count(TrialState.FAIL)}"
    )
    if best is not None:
        attrs = best.user_attrs
        line += (
            f" · best #{best.number}: {attrs['latency_ms']:.3f} ms "
            f"({speedup(attrs['speedup'], attrs.get('speedup_ci'))}, "
            f"drop {attrs['accuracy_drop'] * 100:+.1f} pt)"
        )
    return line


def convergence_summary(record: dict[str, Any]) -> str:
    """One line of how the baseline converged, from the record its training wrote."""
    best = record.get("best_epoch")
    at = f" at epoch {best + 1}" if best is not None else ""
    return (
        f"validation {record['val_accuracy']:.4f}{at} of {record['epochs_run']} epochs run; "
        f"stopped by {record['stopped']}"
    )
