"""Knowledge-distillation fine-tuning on a real tiny timm ViT and the digits."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import timm
import torch
from torch.utils.data import DataLoader, Subset

from optimizer.plugin_api import StageContext, TrialPruned
from plugins.classification import Classification
from plugins.digits import load_digits_splits
from plugins.distillation import KnowledgeDistillation, kd_loss


def test_kd_loss_is_the_hinton_mix() -> None:
    torch.manual_seed(0)
    logits, labels = torch.randn(8, 10), torch.randint(0, 10, (8,))
    ce = torch.nn.functional.cross_entropy(logits, labels)
    # Student equal to teacher: the soft term vanishes and only (1 - alpha) * CE remains.
    assert kd_loss(logits, logits, labels, 4.0, 0.3).item() == pytest.approx(0.7 * ce.item(), 1e-5)
    other = torch.randn(8, 10)
    assert kd_loss(logits, other, labels, 4.0, 1.0) > 0


def _context(tmp_path: Path, teacher: torch.nn.Module | None, reports: list) -> StageContext:
    splits = load_digits_splits(16)
    return StageContext(
        input_shape=(1, 3, 16, 16),
        num_classes=10,
        train_loader=DataLoader(
            Subset(splits.train, range(256)),
            batch_size=32,
            shuffle=True,
            generator=torch.Generator().manual_seed(0),
        ),
        val_loader=DataLoader(Subset(splits.val, range(128)), batch_size=128),
        task=Classification(),
        load_teacher=lambda: teacher,
        device_info={},
        work_dir=tmp_path,
        seed=0,
        report=lambda step, value: reports.append((step, value)),
    )


def _vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224",
        img_size=16,
        patch_size=4,
        depth=1,
        embed_dim=32,
        num_heads=2,
        num_classes=10,
    )


def test_distillation_fine_tuning_lowers_the_loss_and_reports_each_epoch(tmp_path: Path) -> None:
    teacher, student = _vit(), _vit()
    reports: list[tuple[int, float]] = []
    ctx = _context(tmp_path, teacher, reports)
    params = {
        "train.epochs": 3,
        "train.lr": 3e-3,
        "distill.enabled": True,
        "distill.temperature": 2.0,
        "distill.alpha": 0.5,
    }

    def loss_on_train(model: torch.nn.Module) -> float:
        with torch.no_grad():
            return sum(
                kd_loss(model(x), teacher(x), y, 2.0, 0.5).item() for x, y in ctx.train_loader
            )

    before = loss_on_train(student)
    tuned = KnowledgeDistillation().apply(student, params, ctx)
    assert loss_on_train(tuned) < before
    assert [step for step, _ in reports] == [0, 1, 2]
    assert all(0.0 <= value <= 1.0 for _, value in reports)


def test_zero_epochs_leaves_the_model_alone(tmp_path: Path) -> None:
    model = _vit()
    state = copy.deepcopy(model.state_dict())
    params = {
        "train.epochs": 0,
        "train.lr": 1e-3,
        "distill.enabled": False,
        "distill.temperature": 4.0,
        "distill.alpha": 0.5,
    }
    KnowledgeDistillation().apply(model, params, _context(tmp_path, None, []))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_the_pruner_stops_training_between_epochs(tmp_path: Path) -> None:
    ctx = _context(tmp_path, None, [])

    def stop(step: int, value: float) -> None:
        raise TrialPruned(f"stopped at {step}")

    ctx.report = stop
    params = {
        "train.epochs": 3,
        "train.lr": 1e-3,
        "distill.enabled": False,
        "distill.temperature": 4.0,
        "distill.alpha": 0.5,
    }
    with pytest.raises(TrialPruned, match="stopped at 0"):
        KnowledgeDistillation().apply(_vit(), params, ctx)
