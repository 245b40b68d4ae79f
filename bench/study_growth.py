"""Driver-side cost per trial as the study grows (to 2,000 trials by default).

What it measures: ``optimizer.campaign.driver.drive`` with the in-process executor (``workers=0``)
and an instant synthetic trial (``bench/orchestration.py``'s, with no loop), on a sqlite study,
so the time from one trial function call to the next is all driver: recording the outcome,
the hooks, the progress line, the study reads that decide what to submit, Optuna's ask and
the sampling of the next candidate. As reference, raw Optuna on a second fresh sqlite study
with the same storage, sampler and space and a parameterless baseline trial first, as the
driver's study has: ask, sample the space, set the constraint, tell.

    .venv/bin/python bench/study_growth.py [--quick] [--trials 2000]

How to read the JSON: ``windows`` gives, for trials 1-100, 401-500, 901-1000 and 1901-2000
(with --trials 2000; other sizes use windows of min(100, trials/8) ending at 1/4, 1/2 and all
of the trials), the p50/p90 of the per-trial cost in ms of the driver (``drive_*``) and of raw
Optuna (``optuna_*``); ``driver_overhead_p50_ms`` is their difference, the part vitopt adds.
Both grow with the study: the sampler is TPE, whose cost per ask grows with the number of
finished trials, and anything that re-reads every trial per step adds to the driver's share.
The two runs are sequential, so a change in the machine's load between them skews the
difference (even below zero): compare on a quiet machine, and check ``load_avg_1m_before``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from typing import Any

from orchestration import (
    BASELINE_ACCURACY,
    BASELINE_LATENCY_MS,
    MAX_ACCURACY_DROP,
    bench_campaign,
    bench_setup,
    dummy_checkpoint,
    fake_result,
    new_study,
    scratch_folder,
    synthetic_trial,
)
from rich.console import Console

from optimizer.campaign.driver import Setup, drive
from optimizer.campaign.executor import TrialFn, make_executor
from optimizer.campaign.study import counted_trials, open_study
from optimizer.device.pool import AgentPool
from optimizer.trial.outcome import ShouldPrune, TrialOutcome, TrialRequest


def windows(trials: int) -> list[tuple[int, int]]:
    """1-based inclusive trial ranges: the first, and those ending at 1/4, 1/2 and the end."""
    size = max(1, min(100, trials // 8))
    ends = sorted({size, trials // 4, trials // 2, trials})
    return [(end - size + 1, end) for end in ends if end >= size]


def stamped_instant_trial(stamps: list[float]) -> TrialFn:
    """The synthetic trial with no work, noting when the driver called it."""

    def trial_fn(request: TrialRequest, should_prune: ShouldPrune | None) -> TrialOutcome:
        stamps.append(time.perf_counter())
        return synthetic_trial(request, should_prune, loops=0)

    return trial_fn


def time_drive(setup: Setup, console: Console) -> tuple[list[float], float]:
    """Per-trial driver cost (s) of a whole campaign, in trial order, and its wall time."""
    study = new_study(setup.campaign)
    stamps: list[float] = []
    executor = make_executor(setup.campaign.execution, 0, trial_fn=stamped_instant_trial(stamps))
    pool = executor.share(AgentPool, [], "bench", None, 10.0, [])
    stamps.append(time.perf_counter())
    drive(study, setup, executor, pool, console, time.monotonic())
    wall_s = time.perf_counter() - stamps[0]
    executor.shutdown()
    if len(counted_trials(study)) != setup.campaign.search.trials:
        raise RuntimeError("the driver stopped before the target number of trials")
    return [b - a for a, b in itertools.pairwise(stamps)], wall_s


def time_optuna(setup: Setup, trials: int) -> tuple[list[float], float]:
    """Per-trial cost (s) of Optuna alone on a fresh study of the same storage and sampler,
    shaped like the driver's: first a baseline trial with no parameters, then ask, sample the
    same space, set the constraint and tell the value the synthetic trial gives."""
    study = open_study(setup.campaign)
    baseline = {"latency_ms": BASELINE_LATENCY_MS, "accuracy": BASELINE_ACCURACY}
    costs = []
    wall_started = time.perf_counter()
    for number in range(trials):
        started = time.perf_counter()
        trial = study.ask()
        if number == 0:
            latency_ms, accuracy = fake_result(trial.number, None)
        else:
            setup.space.sample(trial)
            latency_ms, accuracy = fake_result(trial.number, baseline)
        trial.set_constraint("accuracy_drop", BASELINE_ACCURACY - accuracy - MAX_ACCURACY_DROP)
        study.tell(trial, latency_ms)
        costs.append(time.perf_counter() - started)
    return costs, time.perf_counter() - wall_started


def _percentiles_ms(costs: list[float]) -> tuple[float, float]:
    p90 = statistics.quantiles(costs, n=10)[8] if len(costs) > 1 else costs[0]
    return round(statistics.median(costs) * 1000, 3), round(p90 * 1000, 3)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=2000, help="study size (default 2000)")
    parser.add_argument("--quick", action="store_true", help="200 trials (a smoke run)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    args = parser.parse_args()
    if args.quick:
        args.trials = 200
    load_before = os.getloadavg()[0]  # other work on the machine skews the figures
    console = Console(stderr=True, quiet=args.quiet)
    with scratch_folder() as folder:
        checkpoint = dummy_checkpoint(folder)
        print(f"drive: {args.trials} trials …", file=sys.stderr)
        drive_setup = bench_setup(bench_campaign("growth", folder, args.trials, 0), checkpoint)
        drive_costs, drive_wall = time_drive(drive_setup, console)
        print(f"optuna ask/tell: {args.trials} trials …", file=sys.stderr)
        reference = bench_setup(bench_campaign("reference", folder, args.trials, 0), checkpoint)
        optuna_costs, optuna_wall = time_optuna(reference, args.trials)
    rows: list[dict[str, Any]] = []
    for first, last in windows(args.trials):
        drive_p50, drive_p90 = _percentiles_ms(drive_costs[first - 1 : last])
        optuna_p50, optuna_p90 = _percentiles_ms(optuna_costs[first - 1 : last])
        rows.append(
            {
                "trials": f"{first}-{last}",
                "drive_p50_ms": drive_p50,
                "drive_p90_ms": drive_p90,
                "optuna_p50_ms": optuna_p50,
                "optuna_p90_ms": optuna_p90,
                "driver_overhead_p50_ms": round(drive_p50 - optuna_p50, 3),
            }
        )
    print(
        json.dumps(
            {
                "bench": "study_growth",
                "machine": {
                    "cpus": os.cpu_count(),
                    "load_avg_1m_before": round(load_before, 2),
                    "python": sys.version.split()[0],
                },
                "trials": args.trials,
                "storage": "sqlite file (vitopt's retrying storage over Optuna's cache)",
                "sampler": "TPE (multivariate, group, constant liar, 5 startup trials): "
                "its cost grows with trials",
                "space_params": len(drive_setup.space.params),
                "drive_wall_s": round(drive_wall, 3),
                "optuna_wall_s": round(optuna_wall, 3),
                "windows": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
