"""Knowledge-distillation fine-tuning on a real tiny timm ViT and the digits."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import timm
import torch
from torch.utils.data import DataLoader, Subset

from optimizer.plugin_api import StageContext, TrialPruned
from optimizer.plugin_host.registry import plugin_registry
from optimizer.trial.export import export_onnx
from plugins.classification import Classification
from plugins.digits import load_digits_splits
from plugins.distillation import (
    KnowledgeDistillation,
    block_outputs,
    feature_loss,
    kd_loss,
    matched_blocks,
)
from plugins.pruning import TorchPruning


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
        macs_kept=0.5,  # a pruned student, as the pipeline records after the prune stage
    )


def _vit(depth: int = 1, embed_dim: int = 32) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224",
        img_size=16,
        patch_size=4,
        depth=depth,
        embed_dim=embed_dim,
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
        "distill.features": False,
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
        "distill.features": False,
    }
    KnowledgeDistillation().apply(model, params, _context(tmp_path, None, []))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_a_model_the_prune_stage_left_whole_is_not_fine_tuned(tmp_path: Path) -> None:
    model = _vit()
    state = copy.deepcopy(model.state_dict())
    ctx = _context(tmp_path, None, [])
    ctx.macs_kept = 1.0
    params = {
        "train.epochs": 2,
        "train.lr": 1e-3,
        "distill.enabled": False,
        "distill.temperature": 4.0,
        "distill.alpha": 0.5,
        "distill.features": False,
    }
    KnowledgeDistillation().apply(model, params, ctx)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    ctx.macs_kept = 0.9
    KnowledgeDistillation().apply(model, params, ctx)
    assert any(not torch.equal(state[k], v) for k, v in model.state_dict().items())


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
        "distill.features": False,
    }
    with pytest.raises(TrialPruned, match="stopped at 0"):
        KnowledgeDistillation().apply(_vit(), params, ctx)


@pytest.mark.parametrize(("method", "matched"), [("heads+mlp", 4), ("depth+heads+mlp", 2)])
def test_feature_distillation_lowers_the_block_error_of_a_pruned_student_and_exports(
    method: str, matched: int, tmp_path: Path
) -> None:
    """A student pruned to half its heads and MLP width (and, by a depth cut, to one of its two
    blocks) matches the unpruned teacher's block outputs better after fine-tuning with
    distill.features, each kept block paired with the teacher's of its name, and exports
    without its hooks."""
    teacher = _vit(depth=2)
    ctx = _context(tmp_path, teacher, [])
    ctx.model_name = "vit_tiny_patch16_224"
    ctx.model_family = plugin_registry(()).model_family(ctx.model_name)
    cut = {
        "prune.method": method,
        "prune.ratio": 0.5,
        "prune.importance": "magnitude",
        "prune.depth": 0.5,
    }
    student = TorchPruning(round_to=1).apply(teacher, cut, ctx)
    kept = next(b for b in student.blocks if not isinstance(b, torch.nn.Identity))
    assert kept.attn.num_heads == 1 < teacher.blocks[0].attn.num_heads
    pairs = matched_blocks(ctx.model_family, student, teacher)
    assert len(pairs[0]) == len(pairs[1]) == matched  # per kept block: its attention, its MLP
    names = {m: n for n, m in [*student.named_modules(), *teacher.named_modules()]}
    assert [names[m] for m in pairs[0]] == [names[m] for m in pairs[1]]

    def block_error(model: torch.nn.Module) -> float:
        with block_outputs(pairs[0]) as mine, block_outputs(pairs[1]) as theirs:
            total = 0.0
            with torch.no_grad():
                for x, _ in ctx.train_loader:
                    model(x), teacher(x)
                    total += feature_loss(mine, theirs).item()
                    mine.clear(), theirs.clear()
        return total

    before = block_error(student)
    params = {
        "train.epochs": 2,
        "train.lr": 3e-3,
        "distill.enabled": True,
        "distill.temperature": 2.0,
        "distill.alpha": 0.5,
        "distill.features": True,
    }
    tuned = KnowledgeDistillation().apply(student, params, ctx)
    assert block_error(tuned) < 0.8 * before
    assert all(not block._forward_hooks for block in pairs[0] + pairs[1])

    import onnxruntime as ort

    path = export_onnx(tuned, torch.randn(1, 3, 16, 16), tmp_path / "student.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = next(iter(ctx.val_loader))[0][:1]
    (onnx_logits,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(onnx_logits), tuned(x), atol=1e-4)


def test_feature_loss_refuses_blocks_that_do_not_pair() -> None:
    with pytest.raises(ValueError, match="pair one to one"):
        feature_loss([torch.zeros(2, 3)], [])
    with pytest.raises(ValueError, match=r"outputs \(2, 3\), its teacher's \(2, 4\)"):
        feature_loss([torch.zeros(2, 3)], [torch.zeros(2, 4)])


FEATURE_KD = {
    "distill.enabled": (False, True),
    "distill.features": (True,),
    "train.epochs": (1, 4),
}


@pytest.mark.parametrize(
    "teacher, fragment",
    [
        (lambda: _vit(depth=2), "matched 2 student block outputs with 4 of the teacher's"),
        (
            lambda: _vit(embed_dim=48),
            r"a student block outputs \(1, 17, 32\), its teacher's \(1, 17, 48\)",
        ),
    ],
)
def test_feature_kd_from_a_teacher_whose_blocks_do_not_pair_is_refused_before_the_search(
    tmp_path: Path, teacher, fragment: str
) -> None:
    ctx = _context(tmp_path, teacher(), [])
    ctx.model_family = plugin_registry().model_family("vit_tiny_patch16_224")
    with pytest.raises(ValueError, match=f"distill.features: feature distillation.*{fragment}"):
        KnowledgeDistillation().preflight(_vit(), FEATURE_KD, ctx)
    # Campaigns whose trials never run feature KD are not refused, whatever the teacher.
    for never in ({"distill.features": (False,)}, {"distill.enabled": (False,)}):
        KnowledgeDistillation().preflight(_vit(), {**FEATURE_KD, **never}, ctx)
    KnowledgeDistillation().preflight(_vit(), {**FEATURE_KD, "train.epochs": (0, 0)}, ctx)


def test_feature_kd_from_the_baseline_passes_the_preflight(tmp_path: Path) -> None:
    student = _vit()
    ctx = _context(tmp_path, copy.deepcopy(student), [])
    ctx.model_family = plugin_registry().model_family("vit_tiny_patch16_224")
    student.train()
    KnowledgeDistillation().preflight(student, FEATURE_KD, ctx)
    assert student.training  # its mode is left as it was
