"""The classification task and its data sources (digits offline; an image folder on disk)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from optimizer.plugin_api import SCORE, DataSourceBase, Splits, TaskBase, hookimpl

from .digits import load_digits_splits


class Classification(TaskBase):
    """Cross-entropy; top-1 of the deployable model's logits, run by onnxruntime on the host or
    returned by the device (a timm model named by ``model.name``, top-1 on torch models:
    :class:`TaskBase`'s)."""

    @staticmethod
    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels)

    @staticmethod
    def score_rows(rows: Iterable[tuple[Any, Any]]) -> dict[str, float]:
        """Top-1 over ``(logits, label)`` rows (the deployable file's, on the host or the
        device)."""
        correct = total = 0
        for logits, label in rows:
            correct += int(int(np.argmax(logits)) == int(label))
            total += 1
        return {SCORE: correct / max(total, 1)}


def load_image_folder(path: Path, image_size: int, seed: int, val_fraction: float) -> Splits:
    """``path/train/<class>/*`` and ``path/val/<class>/*``; val is split in half into the
    validation set (fine-tuning feedback) and the held-out test set (final accuracy)."""
    from torchvision import datasets, transforms

    for part in ("train", "val"):
        if not (path / part).is_dir():
            raise FileNotFoundError(f"{path / part} is missing (expected train/ and val/ folders)")
    transform = transforms.Compose(
        [
            transforms.Resize((image_size, image_size)),
            transforms.ToTensor(),
            transforms.Normalize([0.5] * 3, [0.5] * 3),
        ]
    )
    train = datasets.ImageFolder(str(path / "train"), transform=transform)
    held_out = datasets.ImageFolder(str(path / "val"), transform=transform)
    order = torch.randperm(len(held_out), generator=torch.Generator().manual_seed(seed)).tolist()
    half = len(order) // 2
    return Splits(
        train=train,
        val=torch.utils.data.Subset(held_out, order[:half]),
        test=torch.utils.data.Subset(held_out, order[half:]),
        num_classes=len(train.classes),
        input_shape=(3, image_size, image_size),
    )


class Digits(DataSourceBase):
    """scikit-learn's 8x8 digits, upscaled (offline: the data ships with scikit-learn)."""

    def load(self, data: Any) -> Splits:
        return load_digits_splits(data.image_size, data.val_fraction, data.test_fraction, data.seed)


class ImageFolder(DataSourceBase):
    """Images on disk, one folder per class (:func:`load_image_folder`)."""

    path_holds = "a folder with train/ and val/"

    def load(self, data: Any) -> Splits:
        return load_image_folder(Path(data.path), data.image_size, data.seed, data.val_fraction)


@hookimpl
def vitopt_register_tasks() -> dict[str, Any]:
    return {"classification": Classification()}


@hookimpl
def vitopt_register_datasets() -> dict[str, Any]:
    return {"digits": Digits(), "imagefolder": ImageFolder()}
