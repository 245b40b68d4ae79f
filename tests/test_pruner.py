"""The pruner of fine-tuning epochs, on a real Optuna study that minimizes latency."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from optimizer.campaign.pruner import FeasibleFloorPruner


def _study(feasible_curves: list[list[float]], infeasible: list[float]) -> optuna.Study:
    study = optuna.create_study(direction="minimize", pruner=FeasibleFloorPruner())
    for curve, feasible in [*((c, True) for c in feasible_curves), (infeasible, False)]:
        trial = study.ask()
        for step, value in enumerate(curve):
            trial.report(value, step)
        trial.set_user_attr("feasible", feasible)
        study.tell(trial, 1.0)
    return study


def _pruned(study: optuna.Study, curve: list[float]) -> list[bool]:
    trial = study.ask()
    answers = []
    for step, value in enumerate(curve):
        trial.report(value, step)
        answers.append(trial.should_prune())
    study.tell(trial, state=TrialState.PRUNED)
    return answers


FEASIBLE = [[0.50, 0.77, 0.89], [0.83, 0.90, 0.93], [0.55, 0.85, 0.90]]


def test_a_trial_behind_every_feasible_one_is_stopped_after_the_warm_up() -> None:
    study = _study(FEASIBLE, infeasible=[0.2, 0.3, 0.4])  # an infeasible one sets no floor
    assert _pruned(study, [0.30, 0.60, 0.95]) == [False, True, False]
    assert _pruned(study, [0.30, 0.80, 0.85]) == [False, False, True]


def test_the_most_accurate_trials_go_on() -> None:
    """What Optuna's MedianPruner stopped in a latency study: the accuracy above the median."""
    study = _study(FEASIBLE, infeasible=[0.1, 0.1, 0.1])
    assert _pruned(study, [0.95, 0.96, 0.97]) == [False, False, False]
    median = optuna.create_study(direction="minimize", pruner=optuna.pruners.MedianPruner(3, 1))
    for curve in FEASIBLE:
        trial = median.ask()
        for step, value in enumerate(curve):
            trial.report(value, step)
        median.tell(trial, 1.0)
    assert True in _pruned(median, [0.95, 0.96, 0.97])


def test_nothing_is_stopped_before_three_feasible_trials() -> None:
    study = _study(FEASIBLE[:2], infeasible=[0.9, 0.9, 0.9])
    assert _pruned(study, [0.1, 0.1, 0.1]) == [False, False, False]
