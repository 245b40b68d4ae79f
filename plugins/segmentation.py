"""The semantic segmentation task (UAV scene parsing, scored by mIoU) and its data sources.

Model: a timm backbone of any model family (``pretrained`` only on request) whose feature maps,
as its family gives them (a plain ViT's evenly spaced blocks; the stages of Swin, MobileViT,
EfficientFormer, LeViT), feed a light FPN-style decode head: 1x1 lateral convs per level, resized
to the finest level and summed, a 3x3 fusion conv (both ``model.kwargs.head_width`` channels
wide, 64 by default), a 1x1 classifier, and the logits upsampled bilinearly
(``align_corners=False``, an ONNX ``Resize`` TensorRT 8.2 runs) to the input size:
``(N, num_classes, H, W)``. The head's convs are prunable
by the pruning plugin (:attr:`SegmentationHead.prunable_convs`), the classifier never is.

Metric: mIoU over the held-out split on the deployable ONNX file (onnxruntime), with per-class
IoU and pixel accuracy recorded beside it; a campaign's ``objective.max_accuracy_drop`` is then
the largest mIoU drop allowed (absolute: 0.02 = 2 mIoU points).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from optimizer.plugin_api import SCORE, DataSourceBase, ModelFamily, Splits, TaskBase, hookimpl
from optimizer.plugin_api.task import create_timm_model

from .segmentation_metrics import IGNORE_INDEX, confusion_matrix, segmentation_metrics
from .uav_data import load_synthetic_splits, load_uav_folder

DEFAULT_HEAD_WIDTH = 64


class SegmentationHead(nn.Module):
    """Lateral 1x1 convs per level → resized to the finest level → sum (FPN-style) → 3x3 fusion
    conv → 1x1 classifier.

    Summing rather than concatenating keeps every lateral the same width, so a pruner removes
    the same channels from all of them and from the fusion conv's input as one group."""

    def __init__(
        self,
        in_channels: Sequence[int],
        sizes: Sequence[tuple[int, int]],
        width: int,
        num_classes: int,
    ):
        super().__init__()
        self.laterals = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels, width, 1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
            )
            for channels in in_channels
        )
        # Python ints: the export records one Resize per coarser level, to a constant size.
        self.sizes = [tuple(int(v) for v in size) for size in sizes]
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
        finest = self.sizes[0]
        merged = None
        for conv, feature, size in zip(self.laterals, features, self.sizes, strict=True):
            level = conv(feature)
            if size != finest:
                level = F.interpolate(level, size=finest, mode="bilinear", align_corners=False)
            merged = level if merged is None else merged + level
        return self.classifier(self.fuse(merged))


class SegmentationModel(nn.Module):
    """A timm backbone whose family (:meth:`~optimizer.plugin_api.ModelFamily.features`) gives
    the decoder its feature maps, and a :class:`SegmentationHead`; logits at the input
    resolution."""

    def __init__(
        self,
        backbone: nn.Module,
        family: ModelFamily,
        num_classes: int,
        head_width: int,
        image_size: int,
    ):
        super().__init__()
        self.backbone = backbone
        self.family = family
        with torch.no_grad():
            was_training = backbone.training
            shapes = [f.shape for f in family.features(backbone.eval(), _zeros(image_size))]
            backbone.train(was_training)
        self.head = SegmentationHead(
            [shape[1] for shape in shapes],
            [shape[-2:] for shape in shapes],
            head_width,
            num_classes,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.family.features(self.backbone, x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _zeros(image_size: int) -> torch.Tensor:
    return torch.zeros(1, 3, image_size, image_size)


def build_segmentation_model(
    name: str,
    kwargs: dict[str, Any],
    num_classes: int,
    image_size: int,
    family: ModelFamily,
    pretrained: bool = False,
) -> SegmentationModel:
    """The timm model ``name`` (``kwargs`` but ``head_width``, the decoder's channel count)
    without its classifier, as the backbone of a :class:`SegmentationModel`."""
    kwargs = dict(kwargs)
    head_width = int(kwargs.pop("head_width", DEFAULT_HEAD_WIDTH))
    backbone = create_timm_model(name, pretrained, image_size, num_classes=0, **kwargs)
    return SegmentationModel(backbone, family, num_classes, head_width, image_size)


class Segmentation(TaskBase):
    """Per-pixel cross-entropy (255 ignored); mIoU on the deployable ONNX file."""

    metric_name = "mIoU"
    ignore_index = IGNORE_INDEX

    @staticmethod
    def build_model(
        config: Any, num_classes: int, image_size: int, family: ModelFamily | None = None
    ) -> nn.Module:
        """The model for ``config`` (:class:`optimizer.config.ModelConfig`); ``kwargs`` go to
        timm except ``head_width``, the decoder's channel count; ``family`` gives the features
        the decoder takes."""
        if family is None:
            raise ValueError(
                f"{config.name}: the segmentation decoder takes its features from the model's "
                "family, and no model family covers it (vitopt plugins lists the families and "
                "the model names they cover)"
            )
        return build_segmentation_model(
            config.name, config.kwargs, num_classes, image_size, family, config.pretrained
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
