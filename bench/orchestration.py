"""Orchestration overhead and scaling of the real campaign driver, with trials of known cost.

What it measures: ``optimizer.campaign.driver.drive`` (the loop ``vitopt run`` uses) with a real
Campaign, search space, plugin manager, sqlite study and executor, but trials whose only work is
a pure-Python integer loop calibrated here to take ``--trial-s`` seconds on one core (no sleep,
no agent, no training). Whatever the wall time exceeds the loops' own time is orchestration:
ask/sample/record on the study, Ray task dispatch and result transfer, the driver's polling.
Each worker count gets a fresh study and a private Ray runtime (``ray_address: local``, so a
cluster left running on the machine is never joined; ``execution.num_cpus`` 1 per trial);
``--workers 0`` is the in-process executor, the no-Ray reference.

    .venv/bin/python bench/orchestration.py [--quick] [--trials 16] [--trial-s 2.0]
        [--workers 0 1 2 4]

How to read the JSON: per worker count, ``efficiency`` = achieved trials/min over the ideal
``workers_effective * 60 / trial_s`` (workers_effective = min(workers, CPUs): Ray queues the
rest), and ``overhead_per_trial_s`` = (wall - trials * trial_s / workers_effective) / trials.
The baseline trial runs alone, so ``schedule_bound_wall_s`` is the best wall any driver could
reach; the gap between it and ``wall_s`` is orchestration, cold starts included.
``compute_s_mean`` is how long the loop really took inside trials: above ``trial_s`` means the
cores were contended (by the driver, Ray or another process), not that orchestration was slow.
``worker_idle_s_p50`` is the median time a worker process sat between finishing one trial and
starting its next. ``startup`` (Ray start, pool actor) is kept out of ``wall_s``;
``worker_first_loop_s`` lists, per worker process, when its first loop began after drive
started: each process pays a cold start (on Ray: spawn, unpickle, import torch through
``optimizer.campaign.executor``), and the second one only after the baseline, which runs alone.
``overhead_per_trial_warm_s`` leaves the first of them out; with few trials the cold starts
dominate, so read the full runs (16+ trials).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console

from optimizer.campaign.driver import Setup, drive
from optimizer.campaign.executor import make_executor
from optimizer.campaign.search_space import build_search_space, offered_choices
from optimizer.campaign.study import BASELINE_ATTR, counted_trials, open_study
from optimizer.config import Campaign
from optimizer.device.pool import AgentPool
from optimizer.plugin_host.registry import plugin_registry
from optimizer.trial.outcome import REFERENCE_JOBS_ATTR, ShouldPrune, TrialOutcome, TrialRequest

MAX_ACCURACY_DROP = 0.5
BASELINE_LATENCY_MS = 10.0
BASELINE_ACCURACY = 0.9
DEVICE_PRECISIONS = ["fp32", "int8"]


def spin(loops: int) -> int:
    """Pure-Python integer work: one core, no sleep, no allocation to speak of."""
    total = 0
    for i in range(loops):
        total = (total + i * i) % 1_000_003
    return total


def calibrate(trial_s: float) -> dict[str, Any]:
    """Loops per second of :func:`spin` in this process (the fastest of three runs of at least
    0.2 s, the least disturbed by other load), the loop count for ``trial_s``, and one timed
    run of that count as a check."""
    loops = 100_000
    while True:
        started = time.perf_counter()
        spin(loops)
        if time.perf_counter() - started >= 0.2:
            break
        loops *= 2
    rates = []
    for _ in range(3):
        started = time.perf_counter()
        spin(loops)
        rates.append(loops / (time.perf_counter() - started))
    rate = max(rates)
    target = round(rate * trial_s)
    started = time.perf_counter()
    spin(target)
    return {
        "loops": target,
        "loops_per_s": round(rate),
        "check_s": round(time.perf_counter() - started, 4),
    }


def fake_result(number: int, baseline: dict[str, float] | None) -> tuple[float, float]:
    """Paired speedup and accuracy of a made-up candidate, reproducible per trial number:
    mostly faster than the baseline, mostly within the accuracy budget, so the study looks like
    a real search to the sampler and to best-feasible tracking."""
    if baseline is None:
        return 1.0, BASELINE_ACCURACY
    rng = random.Random(number)
    return 1.0 / rng.uniform(0.3, 1.1), baseline["accuracy"] - rng.uniform(0.0, 0.6)


def synthetic_trial(
    request: TrialRequest, should_prune: ShouldPrune | None, *, loops: int
) -> TrialOutcome:
    """A trial whose compute is ``loops`` of :func:`spin`, returning a COMPLETE outcome that
    ``optimizer.campaign.study.record`` accepts. Module-level, so Ray can pickle it (bound with
    functools.partial). ``bench_*`` attributes say where and when the loop ran (wall clock,
    comparable across processes of one machine)."""
    started = time.time()
    spin(loops)
    finished = time.time()
    speedup, accuracy = fake_result(request.number, request.baseline)
    base = request.baseline or {"accuracy": accuracy}
    # The deployable file every later job would be timed against (the driver looks for the
    # baseline's); never sent to an agent here.
    request.work_dir.mkdir(parents=True, exist_ok=True)
    model = request.work_dir / "model.onnx"
    model.write_bytes(b"synthetic")
    return TrialOutcome(
        request.number,
        "COMPLETE",
        artifacts={"model.onnx": str(model)},
        accuracy=accuracy,
        attrs={
            "accuracy": accuracy,
            "accuracy_drop": base["accuracy"] - accuracy,
            "speedup": speedup,
            REFERENCE_JOBS_ATTR: [{"at": finished, "latency_ms": BASELINE_LATENCY_MS}],
            "bench_pid": os.getpid(),
            "bench_started": started,
            "bench_finished": finished,
        },
    )


def bench_campaign(name: str, folder: Path, trials: int, workers: int) -> Campaign:
    """A valid campaign whose study is a sqlite file in ``folder``; the model and data are
    never loaded, since the synthetic trial does not train."""
    return Campaign.model_validate(
        {
            "name": name,
            "model": {"name": "vit_tiny_patch16_224"},
            "objective": {"max_accuracy_drop": MAX_ACCURACY_DROP},
            "search": {"trials": trials, "seed": 0},
            # ray_address None would join a cluster that `ray start` left on this machine
            # (Ray's autodetection); "local" always starts a private runtime, and runtime_env
            # {} keeps the workers on the installed code, as a local campaign runs.
            "execution": {
                "workers": workers,
                "num_cpus": 1,
                "ray_address": "local",
                "runtime_env": {},
            },
            "storage": {"url": f"sqlite:///{folder / f'{name}.db'}"},
        }
    )


def dummy_checkpoint(folder: Path) -> Path:
    """A few bytes where the baseline weights would be: Ray ships them to every worker, the
    synthetic trial never reads them."""
    path = folder / "checkpoint.pt"
    path.write_bytes(b"not a checkpoint: the synthetic trial ignores it")
    return path


def bench_setup(campaign: Campaign, checkpoint: Path) -> Setup:
    """What ``prepare`` builds, minus the agents and the baseline training: the built-in
    plugins' declared space, narrowed to a device that runs fp32 and int8."""
    registry = plugin_registry(campaign.plugins.disable)
    techniques = [entry.technique for entry in registry.techniques]
    declared = registry.declared()
    device_info = {"precisions": DEVICE_PRECISIONS}
    offered = offered_choices(techniques, device_info)
    space = build_search_space(declared, campaign.search.space, offered, "bench")
    return Setup(
        campaign=campaign,
        agent_urls=[],
        silent_agents=[],
        device_type="bench",
        agent_token=None,
        device_info=device_info,
        space=space,
        checkpoint=checkpoint,
        registry=registry,
        quiet_lock=None,
    )


def new_study(campaign: Campaign) -> Any:
    """The campaign's study with the baseline queued first, as ``run_campaign`` does."""
    study = open_study(campaign)
    study.enqueue_trial({}, user_attrs={BASELINE_ATTR: True})
    return study


@contextlib.contextmanager
def scratch_folder() -> Iterator[Path]:
    """A temporary folder that is also the working directory: ``drive`` writes runs/NAME/
    under the working directory, which must not be the repository's."""
    previous = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="vitopt-bench-") as tmp:
        os.chdir(tmp)
        try:
            yield Path(tmp)
        finally:
            os.chdir(previous)


def _idle_gaps(trials: list[Any]) -> list[float]:
    """Per worker process, the time between the end of one trial's loop and the start of the
    next one's."""
    by_pid: dict[int, list[tuple[float, float]]] = {}
    for trial in trials:
        attrs = trial.user_attrs
        by_pid.setdefault(attrs["bench_pid"], []).append(
            (attrs["bench_started"], attrs["bench_finished"])
        )
    gaps = []
    for spans in by_pid.values():
        spans.sort()
        gaps += [start - end for (_, end), (start, _) in itertools.pairwise(spans)]
    return gaps


def run_once(
    workers: int, trials: int, trial_s: float, loops: int, folder: Path, console: Console
) -> dict[str, Any]:
    """One campaign of ``trials`` synthetic trials at ``workers``, fresh study, fresh Ray."""
    campaign = bench_campaign(f"orchestration-w{workers}", folder, trials, workers)
    setup = bench_setup(campaign, dummy_checkpoint(folder))
    study = new_study(campaign)
    started = time.perf_counter()
    trial_fn = functools.partial(synthetic_trial, loops=loops)
    executor = make_executor(campaign.execution, workers, trial_fn=trial_fn)
    ray_start_s = time.perf_counter() - started
    try:
        started = time.perf_counter()
        pool = executor.share(AgentPool, [], "bench", None, 10.0, [])
        pool.snapshot()  # on Ray: wait for the actor to exist, outside the timed loop
        pool_start_s = time.perf_counter() - started
        drive_wall_clock = time.time()
        started = time.perf_counter()
        drive(study, setup, executor, pool, console, time.monotonic())
        wall_s = time.perf_counter() - started
    finally:
        executor.shutdown()
    done = counted_trials(study)
    states = sorted({t.state.name for t in done})
    effective = max(1, min(workers, os.cpu_count() or 1))
    ideal_wall = len(done) * trial_s / effective
    throughput = len(done) * 60 / wall_s
    ideal = effective * 60 / trial_s
    gaps = _idle_gaps(done)
    computes = [t.user_attrs["bench_finished"] - t.user_attrs["bench_started"] for t in done]
    first_loops: dict[int, float] = {}
    for trial in done:
        pid, loop_started = trial.user_attrs["bench_pid"], trial.user_attrs["bench_started"]
        first_loops[pid] = min(first_loops.get(pid, loop_started), loop_started)
    worker_first_loop_s = sorted(t - drive_wall_clock for t in first_loops.values())
    cold_s = worker_first_loop_s[0]
    return {
        "workers": workers,
        "executor": "ray" if workers else "in-process",
        "workers_effective": effective,
        "startup": {"ray_init_s": round(ray_start_s, 3), "pool_actor_s": round(pool_start_s, 3)}
        if workers
        else None,
        "wall_s": round(wall_s, 3),
        "trials": len(done),
        "states": states,
        "throughput_per_min": round(throughput, 3),
        "ideal_per_min": round(ideal, 3),
        "efficiency": round(throughput / ideal, 4),
        "overhead_per_trial_s": round((wall_s - ideal_wall) / len(done), 4),
        "overhead_per_trial_warm_s": round((wall_s - cold_s - ideal_wall) / len(done), 4),
        "schedule_bound_wall_s": round(trial_s * (1 + math.ceil((len(done) - 1) / effective)), 3),
        "compute_s_mean": round(statistics.mean(computes), 4),
        "worker_idle_s_p50": round(statistics.median(gaps), 4) if gaps else None,
        "worker_first_loop_s": [round(t, 3) for t in worker_first_loop_s],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=16, help="trials per run (default 16)")
    parser.add_argument(
        "--trial-s", type=float, default=2.0, help="CPU seconds per trial (default 2.0)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[0, 1, 2, 4],
        help="worker counts to run; 0 is the in-process executor (default 0 1 2 4)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="6 trials of 0.5 s at workers 0 1 2 (a smoke run)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars on stderr")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.trial_s, args.workers = 6, 0.5, [0, 1, 2]
    load_before = os.getloadavg()[0]  # other work on the machine skews the figures
    console = Console(stderr=True, quiet=args.quiet)
    print(f"calibrating a {args.trial_s:g} s loop …", file=sys.stderr)
    calibration = calibrate(args.trial_s)
    runs = []
    with scratch_folder() as folder:
        for workers in args.workers:
            print(f"workers={workers} …", file=sys.stderr)
            runs.append(
                run_once(workers, args.trials, args.trial_s, calibration["loops"], folder, console)
            )
    cpus = os.cpu_count()
    print(
        json.dumps(
            {
                "bench": "orchestration",
                "machine": {
                    "cpus": cpus,
                    "load_avg_1m_before": round(load_before, 2),
                    "python": sys.version.split()[0],
                },
                "trial_s": args.trial_s,
                "trials": args.trials,
                "calibration": calibration,
                "sampler": "TPE (multivariate, group, constant liar, 5 startup trials)",
                "runs": runs,
                "note": (
                    f"{cpus} CPU(s): each Ray trial holds 1 CPU, so workers beyond {cpus} queue "
                    f"and cannot beat {cpus}; the driver and Ray's own processes share those "
                    "cores. The baseline trial runs alone before the others."
                ),
            }
        )
    )


if __name__ == "__main__":
    main()
