"""Semantic segmentation metrics from a confusion matrix: mIoU, per-class IoU, pixel accuracy.

Pixels whose ground truth is the ignore index (255, as in the LPCV UAV and Cityscapes label maps)
count nowhere. A class absent from both the prediction and the ground truth of the whole
evaluated set has an undefined IoU (NaN) and is left out of the mean; a class that is predicted
but never present in the ground truth has IoU 0 (all its pixels are false positives).
"""

from __future__ import annotations

from typing import Any

import numpy as np

IGNORE_INDEX = 255


def confusion_matrix(
    prediction: Any, target: Any, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """``(num_classes, num_classes)`` int64 counts, rows = ground truth, columns = prediction.

    ``prediction`` and ``target`` are integer label maps of the same shape (numpy arrays or
    tensors). Ground-truth values other than ``0..num_classes-1`` and ``ignore_index`` raise."""
    pred = np.asarray(prediction).astype(np.int64).ravel()
    true = np.asarray(target).astype(np.int64).ravel()
    if pred.shape != true.shape:
        raise ValueError(f"prediction has {pred.size} pixels, target {true.size}")
    keep = true != ignore_index
    pred, true = pred[keep], true[keep]
    if true.size and (true.min() < 0 or true.max() >= num_classes):
        raise ValueError(
            f"ground-truth label {int(true.max())} outside 0..{num_classes - 1} "
            f"(and not the ignore index {ignore_index})"
        )
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"predicted label outside 0..{num_classes - 1}")
    return np.bincount(true * num_classes + pred, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def per_class_iou(matrix: np.ndarray) -> np.ndarray:
    """IoU per class; NaN where the class is in neither prediction nor ground truth."""
    matrix = np.asarray(matrix, dtype=np.float64)
    hits = np.diag(matrix)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - hits
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, hits / np.where(union > 0, union, 1), np.nan)


def mean_iou(matrix: np.ndarray) -> float:
    """Mean of the defined per-class IoUs (0.0 when no class is defined at all)."""
    ious = per_class_iou(matrix)
    defined = ious[~np.isnan(ious)]
    return float(defined.mean()) if defined.size else 0.0


def pixel_accuracy(matrix: np.ndarray) -> float:
    """Correct pixels over all non-ignored pixels (0.0 when there are none)."""
    matrix = np.asarray(matrix)
    total = matrix.sum()
    return float(np.trace(matrix) / total) if total else 0.0


def segmentation_metrics(matrix: np.ndarray) -> dict[str, Any]:
    """``miou``, ``pixel_accuracy`` and ``per_class_iou`` (a list, ``None`` for NaN so it is
    valid JSON) of a confusion matrix."""
    ious = per_class_iou(matrix)
    return {
        "miou": mean_iou(matrix),
        "pixel_accuracy": pixel_accuracy(matrix),
        "per_class_iou": [None if np.isnan(v) else float(v) for v in ious],
    }
