"""Helpers for a plugin's own tests: the technique as a campaign would find it, a tiny timm ViT,
a :class:`StageContext` on random data and a small ONNX artifact.

Public and kept stable like the plugin API (functions gain keyword arguments, never lose them).
``vitopt plugin new`` generates a ``tests/test_plugin.py`` that uses them::

    from optimizer.plugin_testing import default_params, find_technique, stage_context, tiny_vit

    def test_defaults_do_nothing(tmp_path):
        technique = find_technique("lowrank")
        model = tiny_vit()
        assert technique.apply(model, default_params(technique), stage_context(tmp_path)) is model
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from optimizer.plugin_api import OnnxArtifact, StageContext, Technique
from optimizer.plugin_host.manager import build_plugin_manager, collect_techniques, registered

#: The model of the tests' tiny campaign: 16 px inputs, patch 4, 2 blocks of 4 heads, width 64.
TINY_VIT = {"patch_size": 4, "depth": 2, "embed_dim": 64, "num_heads": 4}
IMAGE_SIZE = 16
NUM_CLASSES = 10


def find_technique(name: str, disable: Iterable[str] = ()) -> Technique:
    """The technique called ``name`` among the installed plugins, found and checked exactly as
    ``vitopt run`` does (so this fails when the plugin is not installed, or is broken)."""
    techniques = {
        r.technique.name: r.technique for r in collect_techniques(build_plugin_manager(disable))
    }
    if name not in techniques:
        raise LookupError(
            f"no installed technique {name!r} (installed: {', '.join(sorted(techniques))}); "
            "is the plugin installed (pip install -e .)?"
        )
    return techniques[name]


def default_params(*techniques: Technique) -> dict[str, Any]:
    """Every parameter the techniques declare, at its default: what the baseline trial runs."""
    return {spec.name: spec.default for t in techniques for spec in t.search_space()}


def tiny_vit(
    num_classes: int = NUM_CLASSES, image_size: int = IMAGE_SIZE, seed: int = 0, **kwargs: Any
) -> Any:
    """A small real timm ViT (``vit_tiny_patch16_224`` shrunk by :data:`TINY_VIT`, random
    weights seeded by ``seed``), in eval mode; ``kwargs`` override timm's."""
    import timm
    import torch

    torch.manual_seed(seed)
    options = {**TINY_VIT, "img_size": image_size, "num_classes": num_classes, **kwargs}
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **options).eval()


def random_loader(
    batches: int = 2,
    batch_size: int = 8,
    image_size: int = IMAGE_SIZE,
    num_classes: int = NUM_CLASSES,
    seed: int = 0,
) -> Any:
    """A ``DataLoader`` of ``(images, labels)`` batches of random data."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    generator = torch.Generator().manual_seed(seed)
    count = batches * batch_size
    images = torch.randn(count, 3, image_size, image_size, generator=generator)
    labels = torch.randint(0, num_classes, (count,), generator=generator)
    return DataLoader(TensorDataset(images, labels), batch_size=batch_size)


def stage_context(
    work_dir: Path,
    *,
    image_size: int = IMAGE_SIZE,
    num_classes: int = NUM_CLASSES,
    **fields: Any,
) -> StageContext:
    """A :class:`StageContext` like the pipeline's, on random data: the classification task, no
    teacher, an onnxruntime CPU device, trial 1. ``fields`` replace any of its fields
    (``teacher=``, ``device_info=``, ``report=`` ...)."""
    values: dict[str, Any] = {
        "input_shape": (1, 3, image_size, image_size),
        "num_classes": num_classes,
        "train_loader": random_loader(image_size=image_size, num_classes=num_classes),
        "val_loader": random_loader(image_size=image_size, num_classes=num_classes, seed=1),
        "task": registered(
            build_plugin_manager(), "vitopt_register_tasks", "classification", "task.name"
        ),
        "teacher": None,
        "device_info": {
            "device": "test host",
            "device_type": "cpu",
            "backend": {"name": "onnxruntime", "version": "test"},
            "precisions": ["fp32", "int8"],
        },
        "work_dir": Path(work_dir),
        "seed": 0,
        "log": logging.getLogger("vitopt.plugin_testing"),
        "calibration_size": 16,
        "trial_number": 1,
    }
    values.update(fields)
    return StageContext(**values)


def tiny_onnx(work_dir: Path, model: Any = None, image_size: int = IMAGE_SIZE) -> OnnxArtifact:
    """``model`` (default :func:`tiny_vit`) exported as the pipeline exports it (opset 16, a
    static batch of 1) to ``work_dir/model.onnx``, as an fp32 :class:`OnnxArtifact`."""
    import torch

    from optimizer.trial.export import export_onnx

    model = tiny_vit(image_size=image_size) if model is None else model
    example = torch.randn(1, 3, image_size, image_size)
    return OnnxArtifact(export_onnx(model, example, Path(work_dir) / "model.onnx"))
