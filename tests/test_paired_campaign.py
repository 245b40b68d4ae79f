"""Campaigns measure every candidate paired with the baseline: what they record, how the
latency-first cut reads the interval, and a device that drifts part-way (a real agent on
loopback whose backend throttles after a few jobs)."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from agent_helpers import start_agent
from campaign_helpers import write_campaign
from click.testing import CliRunner
from optuna.trial import TrialState
from optuna_dashboard import get_note
from rich.console import Console

from optimizer.campaign.driver import Endpoint, prepare
from optimizer.campaign.study import reference_drift, reference_jobs
from optimizer.cli import main
from optimizer.config import load_campaign
from optimizer.device.client import Reference, sha256_file
from optimizer.device.pool import AgentPool
from optimizer.trial.outcome import CONTENDED_ATTR, TrialOutcome, TrialRequest
from optimizer.trial.pipeline import run_trial, slower_than_best


@pytest.fixture()
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_a_drifting_device_is_flagged_and_speedups_stay_paired(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After 4 backends built (one more than the timing jobs of the baseline and of the first
    # candidate's two: seen here, the first throttled job was the 3rd with "3") every model
    # runs 40 % slower.
    monkeypatch.setenv("THROTTLE_STATE", str(in_tmp / "throttle"))
    monkeypatch.setenv("THROTTLE_AFTER_JOBS", "4")
    monkeypatch.setenv("THROTTLE_FACTOR", "1.4")
    # Each inference 1 ms of fixed work plus the model's own 0.1 ms, whose job-to-job spread
    # alone (0.06-0.15 ms measured) could hide or fake the throttle.
    monkeypatch.setenv("THROTTLE_BASE_MS", "1")
    agent = start_agent(in_tmp, "--backend", "drift_backends:ThrottlingBackend")
    try:
        campaign = write_campaign(
            in_tmp,
            **{
                "search.trials": 5,
                "objective.latency_first_cut": False,
                "execution.workers": 0,
                "search.space": {
                    # Every candidate prunes, so it is fine-tuned and timed twice (one that
                    # removes nothing is not fine-tuned: one job, and the throttle would start
                    # elsewhere in the campaign).
                    "prune.method": {"choices": ["heads", "mlp", "heads+mlp"]},
                    "train.epochs": {"low": 1, "high": 1},
                    "prune.ratio": {"low": 0.4, "high": 0.7},
                    "quantize.precision": {"fixed": "fp32"},
                },
            },
        )
        result = CliRunner().invoke(main, ["run", str(campaign), "--agent", agent.url, "--json"])
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        status = CliRunner().invoke(main, ["status", str(campaign)])
        report = CliRunner().invoke(main, ["report", str(campaign), "--out", "review"])
    finally:
        agent.stop()

    study = optuna.load_study(study_name="tiny", storage="sqlite:///runs/tiny/study.db")
    jobs = reference_jobs(study.trials)
    assert len(jobs) >= 6
    drift = reference_drift(jobs)
    assert drift["flagged"] and 0.2 < drift["drift"] < 0.6, drift
    assert summary["reference"]["flagged"]
    assert status.exit_code == 0, status.output
    assert "beyond ±10 %" in status.output
    assert "**Drift**" in get_note(study)
    assert report.exit_code == 0, report.output
    assert "beyond ±10 %" in (in_tmp / "review" / "report.html").read_text()

    base = study.trials[0]
    # The absolute latency moved by the throttle, the paired objective did not: each value is
    # the campaign's reference latency over the trial's speedup.
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):
        attrs = trial.user_attrs
        low, high = attrs["speedup_ci"]
        if trial.number != base.number:
            assert low <= attrs["speedup"] <= high
        assert trial.values[0] == pytest.approx(attrs["reference_latency_ms"] / attrs["speedup"])
    slowed = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.number >= 2]
    assert slowed and all(
        t.user_attrs["reference_jobs"][-1]["latency_ms"] > 1.2 * base.user_attrs["latency_ms"]
        for t in slowed
    )


def test_the_cut_reads_the_interval_not_the_point() -> None:
    assert slower_than_best([0.80, 0.95], 1.0)  # surely slower: stopped
    assert not slower_than_best([0.90, 1.05], 1.0)  # the point is below, the interval is not
    assert not slower_than_best([1.10, 1.20], 1.0)


@pytest.mark.slow
def test_a_candidate_is_cut_on_its_paired_probe_and_completes_without_a_cut(
    in_tmp: Path,
) -> None:
    agent = start_agent(in_tmp)
    try:
        campaign = load_campaign(write_campaign(in_tmp))
        setup = prepare(campaign, Console(quiet=True), Endpoint([agent.url], None))

        def trial(number: int, params: dict, **paired: object) -> TrialOutcome:
            return run_trial(
                TrialRequest(
                    campaign=campaign,
                    number=number,
                    params=dict(setup.space.baseline, **params),
                    checkpoint=setup.checkpoint,
                    agents=AgentPool(*setup.pool_args()),
                    agent_token=None,
                    device_info=setup.device_info,
                    work_dir=in_tmp / f"trial-{number}",
                    **paired,
                )
            )

        base = trial(0, {})
        assert base.state == "COMPLETE", base.attrs.get("fail_reason")
        assert base.attrs["speedup"] == 1.0
        low, high = base.attrs["speedup_ci"]  # the A/A job: the baseline against itself
        assert 0.8 < low <= high < 1.2
        reference = Reference(Path(base.artifacts["model.onnx"]))
        pruned = {"prune.method": "heads", "prune.ratio": 0.5}
        against = {"baseline": {"accuracy": base.accuracy}, "reference": reference}
        cut = trial(1, pruned, cut_speedup=1000.0, **against)
        assert cut.state == "PRUNED"
        assert "latency first" in cut.attrs["pruned_reason"]
        assert cut.attrs["speedup_ci"][1] < 1000.0
        assert set(cut.artifacts) == {"model.onnx", "measurement.json", "trial.log"}  # as timed
        kept = trial(2, pruned, cut_speedup=None, **against)
        # A device that looks busy to every job (its quiet reference latency next to nothing):
        # each job is timed again, as often as the campaign allows, and the quietest is kept.
        busy = trial(3, pruned, cut_speedup=None, quiet_reference_ms=1e-6, **against)
        calm = trial(4, pruned, cut_speedup=None, quiet_reference_ms=1e6, **against)
    finally:
        agent.stop()
    assert busy.state == calm.state == "COMPLETE"
    retimed = busy.attrs[CONTENDED_ATTR]["retimed_reference_ms"]
    assert len(retimed) == campaign.agents.measure.contention_retries
    assert len(busy.attrs["agent_jobs"]) == 1 + len(retimed)
    # Each job timed again ran afresh: the agent's cache would give the same figures back
    # (trial 3's model is trial 2's, so even its first job is trial 2's, from the cache).
    assert len(set(retimed)) == len(retimed)
    assert busy.attrs["reference_jobs"][0]["latency_ms"] <= min(retimed)
    assert CONTENDED_ATTR not in calm.attrs and CONTENDED_ATTR not in kept.attrs
    assert kept.state == "COMPLETE", kept.attrs.get("fail_reason")
    attrs = kept.attrs
    assert attrs["speedup"] > 1.0  # half the heads gone: faster than the baseline
    assert attrs["speedup_ci"][0] <= attrs["speedup"] <= attrs["speedup_ci"][1]
    assert attrs["speedup"] <= base.attrs["macs"] / attrs["macs"] * 1.1  # not above the MACs
    report = json.loads(Path(kept.artifacts["measurement.json"]).read_text())
    assert report["paired"]["reference"]["model_sha256"] == sha256_file(reference.path)
    assert len(attrs["reference_jobs"]) == 1  # not fine-tuned: its probe is its measurement
