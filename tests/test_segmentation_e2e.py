"""A whole segmentation campaign as a user runs it: Ray workers, the embedded agent, mIoU
scored on the device's outputs (objective.evaluate_on: device)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from campaign_helpers import run_to_the_end
from optuna.trial import TrialState

TINY_SEG = {
    "name": "tiny_seg",
    "task": {"name": "segmentation"},
    "model": {
        "name": "vit_tiny_patch16_224",
        "kwargs": {"patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 4, "head_width": 32},
        "train": {"epochs": 8, "lr": 0.003, "batch_size": 32},
    },
    "data": {"source": "uav_synthetic", "image_size": 32, "calibration_size": 16},
    "objective": {"max_accuracy_drop": 0.3, "latency_first_cut": False, "evaluate_on": "device"},
    "search": {
        "seed": 0,
        "trials": 4,
        "space": {
            "prune.method": {"choices": ["heads+mlp"]},
            "prune.ratio": {"low": 0.5, "high": 0.7},
            "train.epochs": {"low": 1, "high": 1},
            "quantize.precision": {"choices": ["fp32"]},
        },
    },
    "execution": {"workers": 2},
    "agents": {"measure": {"warmup": 5, "iterations": 30, "repeats": 2}},
}


@pytest.mark.slow
def test_a_segmentation_campaign_through_ray_and_the_agent(tmp_path: Path) -> None:
    campaign = tmp_path / "campaign.yaml"
    campaign.write_text(yaml.safe_dump(TINY_SEG))
    summary = run_to_the_end(campaign, tmp_path)
    assert sum(summary["trials"][k] for k in ("complete", "pruned", "failed")) == 4
    assert summary["accuracy_metric"] == "mIoU"

    study = optuna.load_study(
        study_name="tiny_seg", storage=f"sqlite:///{tmp_path}/runs/tiny_seg/study.db"
    )
    baseline = study.trials[0]
    assert baseline.state == TrialState.COMPLETE
    attrs = baseline.user_attrs
    assert attrs["accuracy_metric"] == "mIoU"
    assert attrs["accuracy"] == attrs["miou"] > 0.2
    assert len(attrs["per_class_iou"]) == 6 and 0 < attrs["pixel_accuracy"] <= 1
    feasible_faster = [
        t
        for t in study.trials[1:]
        if t.state == TrialState.COMPLETE
        and t.user_attrs["accuracy_drop"] <= 0.3
        and t.user_attrs["latency_p50_ms"] < attrs["latency_p50_ms"]
    ]
    assert feasible_faster, [(t.state, t.user_attrs.get("fail_reason")) for t in study.trials]
    for trial in [t for t in study.trials if t.state == TrialState.COMPLETE]:
        # Scored from the outputs the agent returned, equal to the host's run of the same file.
        assert trial.user_attrs["evaluated_on"] == "device"
        assert trial.user_attrs["device_accuracy"] == trial.user_attrs["host_accuracy"]
    for trial in feasible_faster:
        assert trial.user_attrs["accuracy"] == trial.user_attrs["miou"]
        assert trial.user_attrs["params_count"] < baseline.user_attrs["params_count"]

    status = subprocess.run(
        [sys.executable, "-m", "optimizer", "status", str(campaign)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=dict(os.environ, COLUMNS="200"),
        timeout=120,
    )
    assert status.returncode == 0, status.stderr[-3000:]
    assert "mIoU %" in status.stdout and "top-1" not in status.stdout
