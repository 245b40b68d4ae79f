"""The segmentation task: mIoU metric, UAV data sources, the seg model under every technique."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Subset

from optimizer.config import ModelConfig
from optimizer.plugin_api import OnnxArtifact, StageContext
from optimizer.plugin_api.model_stats import count_params
from optimizer.trial.export import export_onnx
from plugins.distillation import KnowledgeDistillation, kd_loss
from plugins.families.vit import VIT, level_indices
from plugins.pruning import prune_model
from plugins.quantization import METHOD_PARAM, PRECISION_PARAM, Int8Quantization
from plugins.segmentation import Segmentation, build_segmentation_model
from plugins.segmentation_metrics import (
    confusion_matrix,
    mean_iou,
    per_class_iou,
    pixel_accuracy,
    segmentation_metrics,
)
from plugins.uav_data import (
    SYNTHETIC_CLASSES,
    UavFolderError,
    load_synthetic_splits,
    load_uav_folder,
    synthetic_scene,
)

SMALL = {"patch_size": 8, "depth": 4, "embed_dim": 64, "num_heads": 4, "head_width": 32}


# --- metric -------------------------------------------------------------------------------


def test_miou_on_a_hand_checked_map() -> None:
    target = np.array([[0, 0, 1, 1], [0, 0, 1, 255], [2, 2, 255, 255]])
    predicted = np.array([[0, 1, 1, 1], [0, 0, 1, 0], [2, 0, 3, 3]])
    matrix = confusion_matrix(predicted, target, num_classes=5)
    # class 0: gt 4 px, predicted at 4 of the non-ignored px, 3 hit → 3 / (4 + 4 - 3) = 0.6
    # class 1: gt 3, predicted 4 (one wrong at (0, 1)), 3 hit → 3 / (3 + 4 - 3) = 0.75
    # class 2: gt 2, predicted 1, hit 1 → 1 / 2 = 0.5
    # class 3: predicted only on ignored pixels → absent from both → NaN
    # class 4: absent from both → NaN
    ious = per_class_iou(matrix)
    assert ious[:3] == pytest.approx([0.6, 0.75, 0.5])
    assert math.isnan(ious[3]) and math.isnan(ious[4])
    assert mean_iou(matrix) == pytest.approx((0.6 + 0.75 + 0.5) / 3)
    assert pixel_accuracy(matrix) == pytest.approx(7 / 9)  # 9 non-ignored pixels, 7 right
    assert segmentation_metrics(matrix)["per_class_iou"][3] is None


def test_a_class_predicted_but_absent_from_ground_truth_scores_zero() -> None:
    target = np.array([[0, 0], [0, 0]])
    predicted = np.array([[0, 0], [0, 1]])
    ious = per_class_iou(confusion_matrix(predicted, target, num_classes=3))
    assert ious[0] == pytest.approx(0.75) and ious[1] == 0.0 and math.isnan(ious[2])
    assert mean_iou(confusion_matrix(predicted, target, 3)) == pytest.approx(0.375)


def test_a_ground_truth_label_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match=r"outside 0\.\.2"):
        confusion_matrix(np.zeros((2, 2)), np.full((2, 2), 7), num_classes=3)


# --- data ---------------------------------------------------------------------------------


def test_synthetic_scenes_are_deterministic_and_sane() -> None:
    a_image, a_mask = synthetic_scene(48, np.random.default_rng(3))
    b_image, b_mask = synthetic_scene(48, np.random.default_rng(3))
    assert np.array_equal(a_image, b_image) and np.array_equal(a_mask, b_mask)
    assert a_image.shape == (3, 48, 48) and a_mask.shape == (48, 48)
    splits = load_synthetic_splits(32, seed=1)
    assert splits.num_classes == len(SYNTHETIC_CLASSES) == 6
    assert splits.input_shape == (3, 32, 32)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 400
    image, mask = splits.train[0]
    assert image.shape == (3, 32, 32) and mask.shape == (32, 32) and mask.dtype == torch.long
    masks = splits.train.tensors[1]
    present = torch.bincount(masks.reshape(-1), minlength=6)
    assert (present > 0).all()  # every class appears somewhere
    assert int(masks.max()) < 6
    images = splits.train.tensors[0]
    assert float(images.min()) >= -1.0 and float(images.max()) <= 1.0
    other = load_synthetic_splits(32, seed=2)
    assert not torch.equal(other.train.tensors[1], masks)


def _write_folder(root: Path, count: int = 4, size: int = 40) -> None:
    rng = np.random.default_rng(0)
    for part in ("train", "val"):
        (root / "IMG" / part).mkdir(parents=True)
        (root / "GT" / part).mkdir(parents=True)
        for index in range(count):
            image, mask = synthetic_scene(size, rng)
            mask[:2] = 255
            rgb = (image.transpose(1, 2, 0) * 255).astype(np.uint8)
            Image.fromarray(rgb).save(root / "IMG" / part / f"{index:04d}.png")
            Image.fromarray(mask).save(root / "GT" / part / f"{index:04d}.png")
    (root / "classes.txt").write_text("\n".join(SYNTHETIC_CLASSES) + "\n")


def test_the_lpcv_folder_loader_resizes_images_and_labels(tmp_path: Path) -> None:
    _write_folder(tmp_path)
    splits = load_uav_folder(tmp_path, image_size=32)
    assert splits.num_classes == 6 and splits.input_shape == (3, 32, 32)
    assert len(splits.train) == 4 and len(splits.val) + len(splits.test) == 4
    image, mask = splits.train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert mask.shape == (32, 32) and mask.dtype == torch.long
    values = set(mask.unique().tolist())
    assert 255 in values and values <= {*range(6), 255}  # nearest: no blended labels


def test_a_malformed_image_is_named(tmp_path: Path) -> None:
    _write_folder(tmp_path)
    broken = tmp_path / "IMG" / "val" / "0002.png"
    broken.write_bytes(b"not a png at all")
    with pytest.raises(UavFolderError, match=r"0002\.png") as error:
        load_uav_folder(tmp_path, image_size=32)
    assert "\n" not in str(error.value)


def test_a_missing_label_is_named(tmp_path: Path) -> None:
    _write_folder(tmp_path)
    (tmp_path / "GT" / "train" / "0001.png").unlink()
    with pytest.raises(UavFolderError, match=r"train/0001.png: no label map"):
        load_uav_folder(tmp_path, image_size=32)


# --- model and techniques -----------------------------------------------------------------


def _model(num_classes: int = 6, size: int = 32) -> torch.nn.Module:
    torch.manual_seed(0)
    config = ModelConfig(name="vit_tiny_patch16_224", kwargs=SMALL)
    return Segmentation().build_model(config, num_classes, size, VIT).eval()


def test_levels_are_evenly_spaced() -> None:
    assert level_indices(12) == [2, 5, 8, 11]
    assert level_indices(4) == [0, 1, 2, 3]
    assert level_indices(2) == [0, 1]


def test_the_model_outputs_logits_at_the_input_size() -> None:
    model = _model()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 6, 32, 32)
    assert model.head.classifier.out_channels == 6
    wide = build_segmentation_model("vit_tiny_patch16_224", {**SMALL, "head_width": 48}, 6, 32, VIT)
    assert wide.head.fuse[0].out_channels == 48


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_pruning_shrinks_backbone_and_head_and_still_exports(tmp_path: Path) -> None:
    model = _model()
    before = count_params(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prune_model(model, VIT, method="heads+mlp", ratio=0.5, example=torch.randn(1, 3, 32, 32))
    assert count_params(model) < 0.7 * before
    assert model.backbone.blocks[0].attn.num_heads == 2
    assert model.backbone.blocks[0].mlp.fc1.out_features == 128
    assert model.head.fuse[0].out_channels == 16
    assert all(lateral[0].out_channels == 16 for lateral in model.head.laterals)
    assert model.head.classifier.out_channels == 6  # the classes are never pruned
    path = export_onnx(model, torch.randn(1, 3, 32, 32), tmp_path / "pruned.onnx")
    x = torch.randn(1, 3, 32, 32)
    out = _session(path).run(None, {"input": x.numpy()})[0]
    assert out.shape == (1, 6, 32, 32)
    assert np.allclose(out, model(x).detach().numpy(), atol=1e-4)


def test_kd_loss_on_dense_logits_ignores_ignored_pixels() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5)
    labels = torch.randint(0, 4, (2, 5, 5))
    labels[:, 0] = 255
    flat_s = student.permute(0, 2, 3, 1).reshape(-1, 4)
    flat_t = teacher.permute(0, 2, 3, 1).reshape(-1, 4)
    keep = labels.reshape(-1) != 255
    expected = kd_loss(flat_s[keep], flat_t[keep], labels.reshape(-1)[keep], 2.0, 0.5)
    assert kd_loss(student, teacher, labels, 2.0, 0.5).item() == pytest.approx(expected.item())
    assert kd_loss(student, student, labels, 2.0, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    # Changing the teacher on ignored pixels changes nothing.
    other = teacher.clone()
    other[:, :, 0] = 100.0
    assert kd_loss(student, other, labels, 2.0, 0.5).item() == pytest.approx(expected.item())


def _context(tmp_path: Path, teacher: torch.nn.Module | None, reports: list) -> StageContext:
    splits = load_synthetic_splits(32)
    return StageContext(
        input_shape=(1, 3, 32, 32),
        num_classes=6,
        train_loader=DataLoader(Subset(splits.train, range(64)), batch_size=16),
        val_loader=DataLoader(Subset(splits.val, range(16)), batch_size=16),
        task=Segmentation(),
        load_teacher=lambda: teacher,
        device_info={},
        work_dir=tmp_path,
        seed=0,
        report=lambda step, value: reports.append((step, value)),
        calibration_size=8,
    )


def test_distillation_fine_tunes_a_pruned_seg_model_and_reports_miou(tmp_path: Path) -> None:
    teacher = _model()
    student = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prune_model(student, VIT, method="mlp", ratio=0.5, example=torch.randn(1, 3, 32, 32))
    reports: list = []
    params = {
        "train.epochs": 1,
        "train.lr": 1e-3,
        "distill.enabled": True,
        "distill.temperature": 2.0,
        "distill.alpha": 0.5,
        "distill.features": False,
    }
    ctx = _context(tmp_path, teacher, reports)
    ctx.macs_kept = 0.5  # pruned above, as the pipeline records after the prune stage
    KnowledgeDistillation().apply(student, params, ctx)
    assert len(reports) == 1 and 0.0 <= reports[0][1] <= 1.0


@pytest.mark.parametrize(
    ("method", "int8_op"),
    [("qdq", "QuantizeLinear"), ("dynamic", "MatMulInteger"), ("static", "QLinearMatMul")],
)
def test_int8_quantization_runs_on_the_whole_seg_graph(
    method: str, int8_op: str, tmp_path: Path
) -> None:
    model = _model()
    path = export_onnx(model, torch.randn(1, 3, 32, 32), tmp_path / "seg.onnx")
    ctx = _context(tmp_path, None, [])
    params = {PRECISION_PARAM: "int8", METHOD_PARAM: method}
    artifact = Int8Quantization().apply(OnnxArtifact(path), params, ctx)
    assert artifact.precision == "int8"
    import onnx

    ops = {node.op_type for node in onnx.load(str(artifact.path)).graph.node}
    assert int8_op in ops and "Resize" in ops
    out = _session(artifact.path).run(None, {"input": np.zeros((1, 3, 32, 32), np.float32)})[0]
    assert out.shape == (1, 6, 32, 32)
    splits = load_synthetic_splits(32)
    metrics = Segmentation().evaluate_onnx_metrics(artifact.path, Subset(splits.test, range(8)))
    assert 0.0 <= metrics["score"] == metrics["miou"] <= 1.0
    assert len(metrics["per_class_iou"]) == 6 and 0.0 <= metrics["pixel_accuracy"] <= 1.0
