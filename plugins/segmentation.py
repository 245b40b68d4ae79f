"""The semantic segmentation task (UAV scene parsing, scored by mIoU) and its data sources.

Model: a timm ViT backbone (any ``vit_*`` name and kwargs, ``pretrained`` only on request) whose
token maps from evenly spaced blocks feed a light FPN-style decode head: 1x1 lateral convs (summed)
per level, a 3x3 fusion conv (both ``model.kwargs.head_width`` channels wide, 64 by default), a 1x1
classifier, and the logits upsampled bilinearly (``align_corners=False``, an ONNX ``Resize``
TensorRT 8.2 runs) to the input size: ``(N, num_classes, H, W)``. The head's convs are prunable
by the pruning plugin (:attr:`SegmentationHead.prunable_convs`), the classifier never is.

Metric: mIoU over the held-out split on the deployable ONNX file (onnxruntime), with per-class
IoU and pixel accuracy recorded beside it; a campaign's ``objective.max_accuracy_drop`` is then
the largest mIoU drop allowed (absolute: 0.02 = 2 mIoU points).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from optimizer.plugin_api import SCORE, DataSourceBase, Splits, TaskBase, hookimpl

from .segmentation_metrics import IGNORE_INDEX, confusion_matrix, segmentation_metrics
from .uav_data import load_synthetic_splits, load_uav_folder

DEFAULT_HEAD_WIDTH = 64
MAX_LEVELS = 4


def level_indices(depth: int, levels: int = MAX_LEVELS) -> list[int]:
    """Blocks whose outputs feed the decoder: ``levels`` evenly spaced ones, the last included
    (depth 12 → 2, 5, 8, 11)."""
    levels = max(1, min(levels, depth))
    return sorted({round((k + 1) * depth / levels) - 1 for k in range(levels)})


class SegmentationHead(nn.Module):
    """Lateral 1x1 convs per level → sum (FPN-style) → 3x3 fusion conv → 1x1 classifier.

    Summing rather than concatenating keeps every lateral the same width, so a pruner removes
    the same channels from all of them and from the fusion conv's input as one group."""

    def __init__(self, in_channels: int, levels: int, width: int, num_classes: int):
        super().__init__()
        self.laterals = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(in_channels, width, 1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
            )
            for _ in range(levels)
        )
        self.fuse = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        self.classifier = nn.Conv2d(width, num_classes, 1)

    @property
    def prunable_convs(self) -> list[nn.Module]:
        """Convs whose output channels a structural pruner may remove (never the classifier's:
        they are the classes)."""
        return [lateral[0] for lateral in self.laterals] + [self.fuse[0]]

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        merged = self.laterals[0](features[0])
        for conv, feature in zip(self.laterals[1:], features[1:], strict=True):
            merged = merged + conv(feature)
        return self.classifier(self.fuse(merged))


class SegmentationViT(nn.Module):
    """A timm ViT backbone and a :class:`SegmentationHead`; logits at the input resolution."""

    def __init__(self, backbone: nn.Module, num_classes: int, head_width: int, image_size: int):
        super().__init__()
        self.backbone = backbone
        depth = len(backbone.blocks)
        self.indices = level_indices(depth)
        patch = backbone.patch_embed.patch_size
        self.grid = (image_size // patch[0], image_size // patch[1])
        self.image_size = image_size
        self.head = SegmentationHead(backbone.embed_dim, len(self.indices), head_width, num_classes)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        bb = self.backbone
        x = bb.patch_embed(x)
        x = bb._pos_embed(x)
        x = bb.patch_drop(x)
        x = bb.norm_pre(x)
        prefix = bb.num_prefix_tokens
        h, w = self.grid
        last = self.indices[-1]
        out = []
        for index, block in enumerate(bb.blocks):
            x = block(x)
            if index in self.indices:
                tokens = bb.norm(x) if index == last else x
                tokens = tokens[:, prefix:]
                out.append(tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w))
            if index == last:
                break
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.features(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def build_segmentation_model(
    name: str, kwargs: dict[str, Any], num_classes: int, image_size: int, pretrained: bool = False
) -> SegmentationViT:
    import timm

    kwargs = dict(kwargs)
    head_width = int(kwargs.pop("head_width", DEFAULT_HEAD_WIDTH))
    kwargs.setdefault("img_size", image_size)
    backbone = timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)
    if not hasattr(backbone, "blocks") or not hasattr(backbone, "_pos_embed"):
        raise ValueError(
            f"{name}: the segmentation task needs a timm VisionTransformer backbone (vit_*, deit_*)"
        )
    return SegmentationViT(backbone, num_classes, head_width, image_size)


class Segmentation(TaskBase):
    """Per-pixel cross-entropy (255 ignored); mIoU on the deployable ONNX file."""

    metric_name = "mIoU"
    ignore_index = IGNORE_INDEX

    @staticmethod
    def build_model(config: Any, num_classes: int, image_size: int) -> nn.Module:
        """The model for ``config`` (:class:`optimizer.config.ModelConfig`); ``kwargs`` go to
        timm except ``head_width``, the decoder's channel count."""
        return build_segmentation_model(
            config.name, config.kwargs, num_classes, image_size, config.pretrained
        )

    @staticmethod
    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)

    @staticmethod
    def score_rows(rows: Iterable[tuple[Any, Any]]) -> dict[str, Any]:
        """The score (mIoU), ``miou``, ``pixel_accuracy`` and ``per_class_iou`` over
        ``(logits, label map)`` rows: the deployable file's on the host or the device, and the
        torch model's for fine-tuning's feedback (:class:`TaskBase`'s ``torch_metric``)."""
        matrix = None
        for logits, label in rows:
            counts = confusion_matrix(logits.argmax(axis=0), np.asarray(label), logits.shape[0])
            matrix = counts if matrix is None else matrix + counts
        if matrix is None:
            return {SCORE: 0.0, "miou": 0.0, "pixel_accuracy": 0.0, "per_class_iou": []}
        metrics = segmentation_metrics(matrix)
        return {SCORE: metrics["miou"], **metrics}


class UavSynthetic(DataSourceBase):
    """Synthetic UAV scenes, generated offline (:func:`~plugins.uav_data.synthetic_scene`)."""

    def load(self, data: Any) -> Splits:
        return load_synthetic_splits(
            data.image_size, data.val_fraction, data.test_fraction, data.seed
        )


class UavFolder(DataSourceBase):
    """A UAV scene-parsing dataset on disk (:func:`~plugins.uav_data.load_uav_folder`)."""

    path_holds = "a folder with IMG/ and GT/"

    def load(self, data: Any) -> Splits:
        return load_uav_folder(Path(data.path), data.image_size, data.seed)


@hookimpl
def vitopt_register_tasks() -> dict[str, Any]:
    return {"segmentation": Segmentation()}


@hookimpl
def vitopt_register_datasets() -> dict[str, Any]:
    return {"uav_synthetic": UavSynthetic(), "uav_folder": UavFolder()}
