"""Accuracy measured on what the device runs (objective.evaluate_on): where a campaign scores,
how the test inputs are cut to the agent's upload cap, and a campaign on the embedded agent
that scores every candidate, fp32 and int8, from the device's outputs: equal to the host's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pytest
from campaign_helpers import STORAGE, write_campaign
from click.testing import CliRunner
from optuna.trial import TrialState

from optimizer.campaign.driver import CampaignFailed, evaluation_place
from optimizer.cli import main
from optimizer.config import load_campaign
from optimizer.plugin_api import TaskBase
from optimizer.plugin_host.registry import plugin_registry
from optimizer.trial.evaluation import chunks, scores

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor to a Python number")


class OnnxOnly(TaskBase):
    def evaluate_onnx(self, path, dataset, threads=1):
        return 1.0


def info(backend: str, evaluates: bool) -> dict:
    return {"backend": {"name": backend, "version": "x"}, "evaluates": evaluates}


@pytest.mark.parametrize(
    ("asked", "backend", "evaluates", "scoring", "place", "note"),
    [
        ("auto", "onnxruntime", True, True, "host", None),
        ("auto", "tensorrt", True, True, "device", None),
        ("auto", "tensorrt", False, True, "host", "tensorrt backend does not evaluate"),
        ("auto", "trtexec", True, False, "host", "scores ONNX files only"),
        ("host", "tensorrt", True, True, "host", None),
        ("device", "onnxruntime", True, True, "device", None),
    ],
)
def test_where_a_campaign_scores(
    tmp_path: Path, asked, backend, evaluates, scoring, place, note
) -> None:
    campaign = load_campaign(write_campaign(tmp_path, **{"objective.evaluate_on": asked}))
    task = plugin_registry().task("classification") if scoring else OnnxOnly()
    got, said = evaluation_place(campaign, info(backend, evaluates), task)
    assert got == place
    assert (said is None) if note is None else (note in said)


def test_device_evaluation_refused_where_it_cannot_run(tmp_path: Path) -> None:
    campaign = load_campaign(write_campaign(tmp_path, **{"objective.evaluate_on": "device"}))
    with pytest.raises(CampaignFailed, match="backend does not evaluate models"):
        evaluation_place(campaign, info("tensorrt", False), plugin_registry().task("segmentation"))
    with pytest.raises(CampaignFailed, match="scores ONNX files only"):
        evaluation_place(campaign, info("onnxruntime", True), OnnxOnly())


def test_inputs_are_cut_to_the_upload_cap_and_scores_flag_a_disagreement() -> None:
    inputs = np.zeros((10, 3, 16, 16), np.float32)  # 3072 bytes a row
    parts = chunks(inputs, model_bytes=1000, max_upload_bytes=64 * 1024 + 1000 + 3 * 3072)
    assert [len(part) for part in parts] == [3, 3, 3, 1]
    assert np.array_equal(np.concatenate(parts), inputs)
    with pytest.raises(ValueError, match="too few for the model"):
        chunks(inputs, model_bytes=2**20, max_upload_bytes=2**20)
    same = scores({"score": 0.9}, {"score": 0.9})
    assert same["accuracy"] == 0.9 and same["accuracy_disagreement"] is False
    apart = scores({"score": 0.9}, {"score": 0.85})
    assert apart["accuracy"] == 0.85 and apart["accuracy_disagreement"] is True
    assert scores({"score": 0.9}, None) == {
        "accuracy": 0.9,
        "host_accuracy": 0.9,
        "evaluated_on": "host",
    }


@pytest.mark.slow
def test_a_campaign_scores_every_candidate_on_the_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    campaign = write_campaign(
        tmp_path,
        **{
            "model.train.epochs": 4,
            "objective.evaluate_on": "device",
            "objective.max_accuracy_drop": 1.0,
            "objective.latency_first_cut": False,
            "search.trials": 3,
            "execution.workers": 0,
            "search.space": {
                "train.epochs": {"fixed": 0},
                "quantize.precision": {"fixed": "int8"},
                "quantize.method": {"fixed": "dynamic"},
            },
        },
    )
    result = CliRunner().invoke(main, ["run", str(campaign), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["trials"]["complete"] == 3, summary
    study = optuna.load_study(study_name="tiny", storage=STORAGE)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert {t.user_attrs["precision"] for t in complete} == {"fp32", "int8"}
    for trial in complete:
        attrs = trial.user_attrs
        assert attrs["evaluated_on"] == "device"
        # The embedded agent runs onnxruntime, as the host does: the same outputs, the same top-1.
        assert attrs["device_accuracy"] == attrs["host_accuracy"] == attrs["accuracy"]
        assert attrs["accuracy_disagreement"] is False
        jobs = [job for job in attrs["agent_jobs"] if job["status"] == "ok"]
        assert len(jobs) >= 2  # its timing and its evaluation, each a job on the agent
