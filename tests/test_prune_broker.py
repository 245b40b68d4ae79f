"""Optuna's pruner reaches Ray trials: worker questions answered by the driver, over real Ray."""

from __future__ import annotations

import time

import pytest
import ray

from optimizer.campaign.prune_broker import PruneBroker, RemoteShouldPrune


@ray.remote(num_cpus=0)
def _fake_training(should_prune: RemoteShouldPrune, accuracies: list[float]) -> list[bool]:
    answers = []
    for step, value in enumerate(accuracies):
        answers.append(should_prune(step, value))
        if answers[-1]:
            break
    return answers


@pytest.mark.slow
def test_worker_reports_reach_the_driver_and_its_answers_come_back() -> None:
    started_here = not ray.is_initialized()
    if started_here:
        # "local": a runtime of its own, never a cluster another test left a pointer to.
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        broker = PruneBroker()
        seen: list[tuple[int, int, float]] = []

        def decide(trial: int, step: int, value: float) -> bool:
            seen.append((trial, step, value))
            return value < 0.5  # the driver's pruner: stop a trial that falls below 50%

        ref = _fake_training.remote(broker.for_trial(7), [0.8, 0.6, 0.3, 0.9])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _ = ray.wait([ref], timeout=0.1)
            broker.serve(decide)
            if ready:
                break
        assert ray.get(ref) == [False, False, True]
        assert seen == [(7, 0, 0.8), (7, 1, 0.6), (7, 2, 0.3)]
    finally:
        if started_here:
            ray.shutdown()
