"""How outcomes become Optuna trials: values, named constraints, feasibility, states."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from optuna.artifacts import get_all_artifact_meta
from optuna.trial import TrialState

from optimizer.campaign.driver import CampaignFailed, check_device_type
from optimizer.campaign.study import (
    artifact_store,
    best_feasible,
    open_study,
    quiet_reference_ms,
    record,
    reference_drift,
    reference_jobs,
)
from optimizer.config import load_campaign
from optimizer.trial.outcome import TrialOutcome

REFERENCE_MS = 3.0  # the reference's latency in every job of these outcomes


def _campaign(tmp_path: Path, mode: str = "latency", memory: float | None = None):
    data = {
        "name": f"s_{mode}",
        "model": {"name": "vit_tiny_patch16_224"},
        "objective": {"mode": mode, "max_accuracy_drop": 0.02, "max_memory_mb": memory},
        "storage": f"sqlite:///{tmp_path / 'study.db'}",
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_campaign(path)


def _paired(latency: float, reference_ms: float = REFERENCE_MS, at: float = 0.0) -> dict:
    """What a paired measurement leaves in a trial's attributes for a candidate of
    ``latency`` against a reference of ``reference_ms``."""
    return {
        "speedup": reference_ms / latency,
        "reference_jobs": [{"at": at, "latency_ms": reference_ms}],
    }


def _complete(number: int, latency: float, accuracy: float, drop: float, memory: float = 100):
    return TrialOutcome(
        number,
        "COMPLETE",
        accuracy=accuracy,
        attrs={
            "accuracy": accuracy,
            "accuracy_drop": drop,
            "peak_memory_mb": memory,
            **_paired(latency, at=number),
        },
    )


@pytest.fixture()
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_latency_mode_constraints_and_best_feasible(in_tmp: Path) -> None:
    campaign = _campaign(in_tmp, memory=150)
    study, store = open_study(campaign), artifact_store(campaign)
    outcomes = [
        _complete(0, 3.0, 0.95, 0.0),
        _complete(1, 1.0, 0.90, 0.05),  # fastest, but over the accuracy budget
        _complete(2, 2.0, 0.94, 0.01),
        _complete(3, 1.5, 0.95, 0.0, memory=200),  # over the memory budget
        TrialOutcome(4, "PRUNED", attrs={"pruned_reason": "latency first", **_paired(4.0)}),
        TrialOutcome(5, "FAIL", attrs={"fail_reason": "agent: build_failed"}),
    ]
    for outcome in outcomes:
        record(study, study.ask(), outcome, campaign, store)
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4 + [
        TrialState.PRUNED,
        TrialState.FAIL,
    ]
    assert study.user_attrs["constraint_names"] == ["accuracy_drop", "peak_memory_mb"]
    # The list form is what optuna-dashboard reads; Optuna 5 reads it as keys "0", "1".
    assert trials[1].system_attrs["constraints"] == [pytest.approx(0.03), -50]
    assert trials[1].constraints == {"0": pytest.approx(0.03), "1": -50}
    assert trials[3].constraints["1"] == 50
    assert [t.user_attrs["feasible"] for t in trials] == [True, False, True, False, False, False]
    assert trials[4].constraints["0"] > 0  # unknown accuracy is never feasible
    assert best_feasible(study).number == 2
    assert trials[4].user_attrs["latency_ms"] == 4.0
    assert "latency_ms" not in trials[5].user_attrs


def test_a_cut_trial_keeps_the_model_it_was_timed_with(in_tmp: Path) -> None:
    campaign = _campaign(in_tmp)
    study, store = open_study(campaign), artifact_store(campaign)
    model = in_tmp / "model.onnx"
    model.write_bytes(b"onnx")
    cut = TrialOutcome(
        0,
        "PRUNED",
        attrs={"pruned_reason": "latency first", **_paired(4.0)},
        artifacts={"model.onnx": str(model)},
    )
    failed = TrialOutcome(1, "FAIL", artifacts={"model.onnx": str(model)})
    for outcome in (cut, failed):
        record(study, study.ask(), outcome, campaign, store)
    kept = [get_all_artifact_meta(t, storage=study._storage) for t in study.trials]
    assert [[meta.filename for meta in metas] for metas in kept] == [["model.onnx"], []]


def _timed_study(folder: Path, jobs: list[tuple[float, float]]) -> optuna.Study:
    """A study of complete, feasible trials, one per (reference latency, paired speedup),
    each timed one second after the previous one."""
    campaign = _campaign(folder)
    study, store = open_study(campaign), artifact_store(campaign)
    for number, (reference_ms, speedup) in enumerate(jobs):
        outcome = _complete(number, reference_ms / speedup, 0.9, 0.0)
        outcome.attrs.update(_paired(reference_ms / speedup, reference_ms, at=float(number)))
        record(study, study.ask(), outcome, campaign, store)
    return study


def test_the_objective_is_the_campaigns_reference_latency_over_the_paired_speedup(
    in_tmp: Path,
) -> None:
    """Trials timed while the device drifts compare by their paired speedups: each value is
    the median reference latency so far over the trial's speedup, not its absolute time."""
    # The device slows by 30 % after trial 1: references and candidates alike.
    study = _timed_study(in_tmp, [(2.0, 1.0), (2.0, 2.0), (2.6, 2.0), (2.6, 4.0)])
    values = [t.values[0] for t in study.trials]
    # Medians of the reference so far: 2.0, 2.0, 2.0, 2.3.
    assert values == pytest.approx([2.0, 1.0, 1.0, 2.3 / 4.0])
    assert [t.user_attrs["reference_latency_ms"] for t in study.trials] == pytest.approx(
        [2.0, 2.0, 2.0, 2.3]
    )
    assert best_feasible(study).number == 3  # the fastest by its speedup, not by its 0.65 ms
    drift = reference_drift(reference_jobs(study.trials))
    assert drift["window"] == 2 and drift["first_ms"] == 2.0 and drift["recent_ms"] == 2.6
    assert drift["drift"] == pytest.approx(0.3) and drift["flagged"]


def test_the_best_feasible_is_the_highest_paired_speedup_not_the_lowest_latency(
    in_tmp: Path,
) -> None:
    """Trial 3 has the higher speedup; the device slowed before it was recorded, so its
    latency (the reference's median then, over its speedup) is the higher one."""
    study = _timed_study(in_tmp, [(2.0, 1.0), (2.0, 4.0), (3.0, 1.0), (3.0, 4.2)])
    latency = {t.number: t.user_attrs["latency_ms"] for t in study.trials}
    assert latency[3] > latency[1]  # 2.5 / 4.2 against 2.0 / 4.0
    assert best_feasible(study).number == 3


def test_no_drift_is_flagged_within_the_limit_and_none_before_two_jobs() -> None:
    jobs = [{"at": float(i), "latency_ms": 2.0 + 0.02 * (i % 3)} for i in range(12)]
    drift = reference_drift(jobs)
    assert drift["window"] == 5 and not drift["flagged"] and abs(drift["drift"]) < 0.02
    assert reference_drift(jobs[:1]) is None
    slow = [*jobs, *({"at": 20.0 + i, "latency_ms": 2.4} for i in range(5))]
    assert reference_drift(slow)["flagged"]  # the last five are 20 % slower than the first


def test_the_quiet_reference_is_the_recent_lower_quartile() -> None:
    """Busy jobs (a slower reference) do not raise the quiet latency; a device that slowed for
    good does, once the recent window is mostly slow, so its jobs are not all timed again."""
    jobs = [{"at": float(i), "latency_ms": ms} for i, ms in enumerate([5.0, 6.5, 5.2, 7.0])]
    assert quiet_reference_ms(jobs[:2]) is None
    assert quiet_reference_ms(jobs) == pytest.approx(5.15)  # not the median, 5.85
    slowed = [*jobs, *({"at": 10.0 + i, "latency_ms": 6.0} for i in range(20))]
    assert quiet_reference_ms(slowed) == 6.0


def test_pareto_mode_records_latency_and_accuracy(in_tmp: Path) -> None:
    campaign = _campaign(in_tmp, mode="pareto")
    study, store = open_study(campaign), artifact_store(campaign)
    for outcome in (
        _complete(0, 3.0, 0.95, 0.0),
        _complete(1, 1.0, 0.93, 0.02),
        _complete(2, 2.0, 0.90, 0.05),
    ):
        record(study, study.ask(), outcome, campaign, store)
    assert study.trials[1].values == [1.0, 0.93]
    front = {t.number for t in study.best_trials}
    assert front == {0, 1}  # trial 2 is slower than 1 and less accurate


def test_tpe_models_parameters_jointly_despite_the_parameterless_baseline(tmp_path: Path) -> None:
    study = open_study(_campaign(tmp_path))
    store = artifact_store(_campaign(tmp_path))
    baseline = study.ask()  # the baseline samples nothing
    record(study, baseline, _complete(baseline.number, 2.0, 0.9, 0.0), _campaign(tmp_path), store)
    for number in range(1, 4):
        trial = study.ask()
        trial.suggest_float("prune.ratio", 0.1, 0.7)
        trial.suggest_int("train.epochs", 0, 3)
        outcome = _complete(number, 1.0 + number / 10, 0.9, 0.01)
        record(study, trial, outcome, _campaign(tmp_path), store)
    trial = study.ask()
    joint = study.sampler.infer_relative_search_space(study, trial)
    assert set(joint) == {"prune.ratio", "train.epochs"}


def test_a_resumed_campaign_keeps_its_device_type(tmp_path: Path) -> None:
    campaign = _campaign(tmp_path)
    study = open_study(campaign)
    check_device_type(study, "orin")  # nothing measured yet: any type
    baseline = study.ask()
    outcome = _complete(baseline.number, 2.0, 0.9, 0.0)
    outcome.attrs["device_type"] = "nano-maxn"
    outcome.attrs["baseline"] = True
    record(study, baseline, outcome, campaign, artifact_store(campaign))
    check_device_type(study, "nano-maxn")
    with pytest.raises(CampaignFailed, match=r"baseline was measured on 'nano-maxn'.*'orin'"):
        check_device_type(study, "orin")


@pytest.mark.parametrize("curve", [[0.1, 0.2, 0.3], [0.97, 0.98, 0.99]])
def test_the_study_never_stops_fine_tuning(in_tmp: Path, curve: list[float]) -> None:
    """Neither a candidate far behind the feasible ones (the fastest cuts recover slowest, and
    only cuts faster than the best feasible one are fine-tuned) nor one ahead of them (what
    Optuna's MedianPruner stopped in a latency study) is stopped; the values are recorded."""
    campaign = _campaign(in_tmp)
    study, store = open_study(campaign), artifact_store(campaign)
    for number, start in enumerate([0.50, 0.83, 0.55, 0.60, 0.70, 0.65]):
        trial = study.ask()
        for step in range(3):
            trial.report(start + 0.1 * step, step)
        record(study, trial, _complete(number, 2.0 - number / 10, 0.9, 0.0), campaign, store)
    trial = study.ask()
    stops = []
    for step, value in enumerate(curve):
        trial.report(value, step)
        stops.append(trial.should_prune())
    assert stops == [False, False, False]
    assert study._storage.get_trial(trial._trial_id).intermediate_values == dict(enumerate(curve))
