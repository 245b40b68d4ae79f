"""The image-folder data source and a teacher other than the baseline."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from campaign_helpers import TINY, write_campaign
from PIL import Image
from plugin_helpers import vitopt

from optimizer.config import ModelConfig, load_campaign
from optimizer.plugin_api import TaskBase
from optimizer.trial.baseline import load_teacher
from plugins.classification import load_image_folder


def _folder(root: Path, per_class: int = 6) -> Path:
    for part in ("train", "val"):
        for label, color in (("road", (90, 90, 90)), ("water", (20, 60, 200))):
            folder = root / part / label
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (40, 30), tuple(c + i for c in color)).save(folder / f"{i}.png")
    return root


def test_image_folder_splits_val_into_val_and_test(tmp_path: Path) -> None:
    splits = load_image_folder(_folder(tmp_path), image_size=16, seed=0, val_fraction=0.5)
    assert splits.num_classes == 2
    assert splits.input_shape == (3, 16, 16)
    assert len(splits.train) == 12
    assert len(splits.val) + len(splits.test) == 12
    image, label = splits.train[0]
    assert image.shape == (3, 16, 16) and label in (0, 1)


def test_image_folder_without_val_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="val is missing"):
        load_image_folder(tmp_path, image_size=16, seed=0, val_fraction=0.5)


def test_a_named_teacher_is_loaded_from_its_checkpoint(tmp_path: Path) -> None:
    data = {
        "name": "t",
        "model": {"name": "vit_tiny_patch16_224", "kwargs": {"patch_size": 4, "depth": 1}},
        "teacher": {
            "name": "deit_tiny_patch16_224",
            "kwargs": {"patch_size": 4, "depth": 2},
            "checkpoint": str(tmp_path / "teacher.pt"),
        },
        "data": {"image_size": 16},
        "objective": {"max_accuracy_drop": 0.01},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    campaign = load_campaign(tmp_path / "c.yaml")
    reference = TaskBase().build_model(
        ModelConfig(name="deit_tiny_patch16_224", kwargs={"patch_size": 4, "depth": 2}), 10, 16
    )
    torch.save(reference.state_dict(), tmp_path / "teacher.pt")
    baseline = TaskBase().build_model(campaign.model, 10, 16)
    torch.save(baseline.state_dict(), tmp_path / "baseline.pt")
    teacher = load_teacher(campaign, 10, tmp_path / "baseline.pt")
    assert len(teacher.blocks) == 2
    assert all(
        torch.equal(a, b)
        for a, b in zip(teacher.state_dict().values(), reference.state_dict().values(), strict=True)
    )
    default = load_campaign(tmp_path / "c.yaml").model_copy(
        update={"teacher": campaign.teacher.model_copy(update={"name": None, "checkpoint": None})}
    )
    copied = load_teacher(default, 10, tmp_path / "baseline.pt")
    assert copied is not baseline and len(copied.blocks) == 1
    assert all(
        torch.equal(a, b)
        for a, b in zip(copied.state_dict().values(), baseline.state_dict().values(), strict=True)
    )


def test_feature_kd_from_a_teacher_of_other_blocks_stops_the_campaign_before_its_first_trial(
    tmp_path: Path,
) -> None:
    """The tiny campaign (2 blocks) with a 3-block teacher and feature KD on: every trial
    would fail on its first batch, so the campaign stops with one line, before its baseline
    is trained."""
    kwargs = {**TINY["model"]["kwargs"], "depth": 3}
    config = ModelConfig(name="vit_tiny_patch16_224", kwargs=kwargs)
    teacher = TaskBase().build_model(config, 10, 16)
    torch.save(teacher.state_dict(), tmp_path / "teacher.pt")
    campaign = write_campaign(
        tmp_path,
        **{
            "teacher": {
                "name": "vit_tiny_patch16_224",
                "kwargs": kwargs,
                "checkpoint": str(tmp_path / "teacher.pt"),
            },
            "search.space": {**TINY["search"]["space"], "distill.features": {"fixed": True}},
            "execution.workers": 0,
        },
    )
    result = vitopt("run", str(campaign), env=dict(os.environ), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: technique 'kd' (built-in "), lines[0]
    assert "refuses this campaign: distill.features: feature distillation matched 4 " in lines[0]
    assert "with 6 of the teacher's" in lines[0]
    storage = f"sqlite:///{tmp_path}/runs/tiny/study.db"
    assert optuna.load_study(study_name="tiny", storage=storage).trials == []
    assert not list((tmp_path / "runs" / "tiny").glob("baseline/*.pt"))
