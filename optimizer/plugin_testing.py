"""A plugin's own tests: the conformance checks of the plugin contract, and the helpers they
are built from (the technique as a campaign would find it, a tiny timm ViT, a
:class:`StageContext` on random data, a small ONNX artifact).

The checks are what a campaign relies on, run on the installed plugin as a campaign finds it
(like Optuna's ``optuna.testing`` suite for third-party storages): :func:`check_technique`
(at its defaults it leaves a model unchanged, other settings return the right type and
export), :func:`check_data_source` (the splits a campaign needs), :func:`check_task` (its
loss, metrics and model on a data source's splits, through an exported ONNX file) and
:func:`check_family` (what a model family declares holds on a model it covers). Each raises
``AssertionError`` saying what broke. ``vitopt plugin new`` generates tests that call them::

    from optimizer.plugin_testing import check_technique

    def test_keeps_the_technique_contract(tmp_path):
        check_technique("lowrank", tmp_path, {"lowrank.enabled": True})

Public and kept stable like the plugin API (functions gain keyword arguments, never lose them).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from optimizer.config import DataConfig, ModelConfig
from optimizer.plugin_api import (
    SCORE,
    DataSource,
    OnnxArtifact,
    Splits,
    StageContext,
    Task,
    Technique,
)
from optimizer.plugin_api.task import build_task_model, onnx_rows, scores_outputs
from optimizer.plugin_host.checks import RegisteredTechnique
from optimizer.plugin_host.registry import plugin_registry

#: The model of the tests' tiny campaign: 16 px inputs, patch 4, 2 blocks of 4 heads, width 64.
TINY_VIT_NAME = "vit_tiny_patch16_224"
TINY_VIT = {"patch_size": 4, "depth": 2, "embed_dim": 64, "num_heads": 4}
IMAGE_SIZE = 16
NUM_CLASSES = 10


def find_technique(name: str, disable: Iterable[str] = ()) -> Technique:
    """The technique called ``name`` among the installed plugins, found and checked exactly as
    ``vitopt run`` does (so this fails when the plugin is not installed, or is broken)."""
    return _registered(name, disable).technique


def _registered(name: str, disable: Iterable[str] = ()) -> RegisteredTechnique:
    entries = {entry.technique.name: entry for entry in plugin_registry(disable).techniques}
    if name not in entries:
        raise LookupError(
            f"no installed technique {name!r} (installed: {', '.join(sorted(entries))}); "
            "is the plugin installed (pip install -e .)?"
        )
    return entries[name]


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
    return timm.create_model(TINY_VIT_NAME, pretrained=False, **options).eval()


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
    teacher: Any = None,
    **fields: Any,
) -> StageContext:
    """A :class:`StageContext` like the pipeline's, on random data: the classification task,
    ``teacher`` as the teacher (none by default), an onnxruntime CPU device, trial 1, the
    :func:`tiny_vit`'s model name and family. ``fields`` replace any of its fields
    (``device_info=``, ``report=``, ``task=``, ``model_name=`` ...); a ``model_name`` given
    without ``model_family`` gets the family that covers it."""
    values: dict[str, Any] = {
        "input_shape": (1, 3, image_size, image_size),
        "num_classes": num_classes,
        "train_loader": random_loader(image_size=image_size, num_classes=num_classes),
        "val_loader": random_loader(image_size=image_size, num_classes=num_classes, seed=1),
        "task": plugin_registry().task("classification"),
        "load_teacher": lambda: teacher,
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
    values.setdefault("model_name", TINY_VIT_NAME)
    values.setdefault("model_family", plugin_registry().model_family(values["model_name"]))
    return StageContext(**values)


def tiny_onnx(work_dir: Path, model: Any = None, image_size: int = IMAGE_SIZE) -> OnnxArtifact:
    """``model`` (default :func:`tiny_vit`) exported as the pipeline exports it (opset 16, a
    static batch of 1) to ``work_dir/model.onnx``, as an fp32 :class:`OnnxArtifact`."""
    import torch

    from optimizer.trial.export import export_onnx

    model = tiny_vit(image_size=image_size) if model is None else model
    example = torch.randn(1, 3, image_size, image_size)
    return OnnxArtifact(export_onnx(model, example, Path(work_dir) / "model.onnx"))


def check_technique(
    name: str,
    work_dir: Path,
    *settings: Mapping[str, Any],
    context: StageContext | None = None,
    model: Any = None,
) -> None:
    """The technique ``name`` keeps the contract a campaign relies on, on ``model`` (default
    :func:`tiny_vit`) in ``context`` (default :func:`stage_context`):

    - it is installed and valid (found as ``vitopt run`` finds it);
    - at its declared defaults it leaves the model unchanged: the same weights and
      architecture (prune, train), the same ONNX bytes and precision (quantize). The campaign
      refuses to start otherwise, since its baseline runs every technique at its defaults;
    - at each of ``settings`` (parameters over the defaults, e.g. ``{"lowrank.enabled": True}``)
      it returns the type its stage must (a module, or an :class:`OnnxArtifact`) and the result
      exports to ONNX that onnx checks and onnxruntime runs.
    """
    from optimizer.trial.stages import (
        DefaultsChangeTheModel,
        TechniqueFailed,
        check_leaves_unchanged,
    )

    entry = _registered(name)
    work_dir = Path(work_dir)
    ctx = context if context is not None else stage_context(work_dir)
    model = tiny_vit() if model is None else model
    defaults = default_params(*(e.technique for e in plugin_registry().techniques))
    try:
        folder = work_dir / "defaults"
        folder.mkdir(parents=True, exist_ok=True)
        check_leaves_unchanged([entry], model, defaults, ctx, folder, "the test model")
        for index, setting in enumerate(settings):
            folder = work_dir / f"setting{index}"
            folder.mkdir(parents=True, exist_ok=True)
            _check_setting(entry, model, {**defaults, **setting}, ctx, folder)
    except (DefaultsChangeTheModel, TechniqueFailed) as exc:
        raise AssertionError(str(exc)) from exc


def _check_setting(
    entry: RegisteredTechnique, model: Any, params: dict[str, Any], ctx: StageContext, work: Path
) -> None:
    import onnx
    import onnxruntime as ort
    import torch

    from optimizer.trial.export import export_onnx
    from optimizer.trial.stages import apply_technique

    example = torch.randn(*ctx.input_shape)
    if entry.technique.stage == "quantize":
        subject = OnnxArtifact(
            export_onnx(model, example, work / "input.onnx", family=ctx.model_family)
        )
        result = apply_technique(entry, subject, params, ctx)
    else:
        module = apply_technique(entry, model, params, ctx).eval()
        result = OnnxArtifact(
            export_onnx(module, example, work / "result.onnx", family=ctx.model_family)
        )
    onnx.checker.check_model(str(result.path))
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    (output, *_) = session.run(None, {session.get_inputs()[0].name: example.numpy()})
    assert output.shape[0] == 1, f"{entry.technique.name}: the export lost its batch of 1"


def check_data_source(name: str, **data: Any) -> Splits:
    """The data source ``name`` gives what a campaign needs for ``data`` (the campaign's
    ``data`` section, e.g. ``path=``, ``image_size=``): it accepts the section, its three splits
    are non-empty datasets of ``(input, label)`` whose inputs have ``input_shape``, and loading
    again gives the same splits. Returns them."""
    import torch

    section = DataConfig(source=name, **data)
    source: DataSource = plugin_registry().data_source(name)
    source.check(section)
    splits = source.load(section)
    assert isinstance(splits, Splits), f"{name}.load returned {type(splits).__name__}, not Splits"
    assert splits.num_classes >= 1, f"{name}: num_classes is {splits.num_classes}"
    for part in ("train", "val", "test"):
        dataset = getattr(splits, part)
        assert len(dataset) > 0, f"{name}: the {part} split is empty"
        inputs, _ = dataset[0]
        assert tuple(inputs.shape) == tuple(splits.input_shape), (
            f"{name}: {part} inputs are {tuple(inputs.shape)}, input_shape says "
            f"{tuple(splits.input_shape)}"
        )
    again = source.load(section)
    for part in ("train", "val", "test"):
        first, second = getattr(splits, part), getattr(again, part)
        assert len(first) == len(second) and torch.equal(first[0][0], second[0][0]), (
            f"{name}: loading twice gives different {part} splits"
        )
    return splits


def check_task(
    name: str,
    source: str,
    work_dir: Path,
    model: Mapping[str, Any] | None = None,
    **data: Any,
) -> float:
    """The task ``name`` works end to end on the data source ``source`` (loaded with ``data``)
    as a campaign uses it: it accepts the ``model`` section (default: a tiny timm ViT) and
    builds a module, its loss on a batch is a scalar that trains (gradients reach the weights),
    its torch metric is a number, and its ONNX score (``evaluate_onnx_metrics``, on a few test
    images through onnxruntime) is a number equal to ``evaluate_onnx``. Returns the score."""
    import math

    import numpy as np
    import torch
    from torch.utils.data import DataLoader, Subset

    from optimizer.trial.export import export_onnx

    task: Task = plugin_registry().task(name)
    splits = check_data_source(source, **data)
    config = ModelConfig(**(model or {"name": TINY_VIT_NAME, "kwargs": dict(TINY_VIT)}))
    task.check_model(config)
    image_size = splits.input_shape[-1]
    family = plugin_registry().model_family(config.name)
    net = build_task_model(task, config, splits.num_classes, image_size, family)
    assert isinstance(net, torch.nn.Module), f"{name}.build_model returned {type(net).__name__}"
    inputs, labels = next(iter(DataLoader(splits.train, batch_size=4)))
    loss = task.loss(net(inputs), labels)
    assert loss.dim() == 0, f"{name}.loss is not a scalar: shape {tuple(loss.shape)}"
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters()), (
        f"{name}.loss does not reach the model's weights"
    )
    net.eval()
    few = Subset(splits.test, range(min(8, len(splits.test))))
    metric = task.torch_metric(net, DataLoader(few, batch_size=4))
    assert math.isfinite(float(metric)), f"{name}.torch_metric is {metric!r}"
    path = export_onnx(net, inputs[:1], Path(work_dir) / f"{name}.onnx", family=family)
    metrics = dict(task.evaluate_onnx_metrics(path, few))
    assert SCORE in metrics, f"{name}.evaluate_onnx_metrics has no {SCORE!r} key"
    score = float(metrics[SCORE])
    assert math.isfinite(score), f"{name}: the ONNX score is {score!r}"
    assert float(task.evaluate_onnx(path, few)) == score, (
        f"{name}: evaluate_onnx and evaluate_onnx_metrics disagree"
    )
    if scores_outputs(task):  # outputs as a device returns them must score as the host's do
        rows = [output for output, _label in onnx_rows(path, few)]
        outputs = [np.stack(rows)]
        device = float(task.evaluate_outputs(outputs, few)[SCORE])
        assert device == score, f"{name}: evaluate_outputs gives {device}, the host {score}"
    assert isinstance(task.metric_name, str) and task.metric_name, f"{name}: no metric_name"
    return score


def check_family(
    name: str, model_name: str, work_dir: Path, image_size: int = 64, **kwargs: Any
) -> Any:
    """The model family ``name`` covers the timm model ``model_name`` (built with ``kwargs``,
    random weights) and what it declares holds on that model, as a pruner and the segmentation
    decoder read it:

    - every head's rows of its producers and columns of its consumers are disjoint, the same
      count each, and together the whole width; every per-head tensor has a slot per head;
    - every channel group's root is a ``Linear`` or conv of the model; it finds something to
      prune (heads or widths), or says why there are no heads;
    - every block stack is an ``nn.Sequential`` of the model whose blocks each output a
      ``(batch, tokens, channels)`` sequence of their input's shape;
    - prepared by it, the model exports (opset 16) to what torch computes, with no op the
      Nano's TensorRT 8.2 lacks;
    - its decoder features, of the backbone built without a classifier, are at most
      ``MAX_DECODE_LEVELS`` NCHW maps of batch 1.

    Returns the family's :class:`~optimizer.plugin_api.Prunable` for the model."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from optimizer.plugin_api.family import MAX_DECODE_LEVELS, ModelFamily, Prunable
    from optimizer.plugin_api.task import create_timm_model
    from optimizer.trial.export import export_onnx
    from optimizer.trial.nano_ops import unsupported_ops

    family = plugin_registry().model_family(model_name)
    assert family is not None, plugin_registry().no_family(model_name)
    assert family.name == name, f"{model_name} resolves to family {family.name!r}, not {name!r}"
    assert isinstance(family, ModelFamily)
    torch.manual_seed(0)
    model = create_timm_model(model_name, False, image_size, num_classes=NUM_CLASSES, **kwargs)
    model.eval()
    found = family.prunable(model)
    assert isinstance(found, Prunable), f"{name}.prunable returned {type(found).__name__}"
    assert found.heads or found.channels, f"{name}: nothing to prune in {model_name}"
    assert found.heads or found.no_heads, f"{name}: no heads, and no reason why"
    layers = {id(m) for m in model.modules()}
    for slices in found.heads:
        _check_heads(name, slices, layers)
    for group in found.channels:
        assert id(group.root) in layers and id(group.block) in layers, (
            f"{name}: a channel group's root or block is not a module of {model_name}"
        )
        assert isinstance(group.root, (torch.nn.Linear, torch.nn.modules.conv._ConvNd)), (
            f"{name}: a channel group's root is a {type(group.root).__name__}"
        )
    x = torch.randn(1, 3, image_size, image_size)
    _check_block_stacks(name, model, found.blocks, layers, x)
    path = export_onnx(model, x, Path(work_dir) / f"{name}.onnx", family=family)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * float(np.abs(want).max()))
    missing = unsupported_ops(path)
    assert not missing, f"{name}: {model_name} exports ops TensorRT 8.2 lacks: {missing}"
    backbone = create_timm_model(model_name, False, image_size, num_classes=0, **kwargs).eval()
    with torch.no_grad():
        maps = family.features(backbone, x)
    assert 1 <= len(maps) <= MAX_DECODE_LEVELS, f"{name}: {len(maps)} decoder feature maps"
    for index, fmap in enumerate(maps):
        assert fmap.dim() == 4 and fmap.shape[0] == 1, (
            f"{name}: decoder feature {index} has shape {tuple(fmap.shape)}, not (1, C, H, W)"
        )
    return found


def _check_block_stacks(name: str, model: Any, stacks: Any, layers: set[int], x: Any) -> None:
    import torch

    shapes: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    def record(_block: Any, args: tuple, output: Any) -> None:
        shapes.append((tuple(args[0].shape), tuple(getattr(output, "shape", ()))))

    handles = []
    for stack in stacks:
        assert isinstance(stack, torch.nn.Sequential) and id(stack) in layers, (
            f"{name}: a block stack is not an nn.Sequential of the model"
        )
        handles += [block.register_forward_hook(record) for block in stack]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    assert len(shapes) == len(handles), f"{name}: a stack's block never ran"
    for given, made in shapes:
        assert len(given) == 3 and given == made, (
            f"{name}: a stack's block maps {given} to {made}, not a token sequence to its shape"
        )


def _check_heads(name: str, slices: Any, layers: set[int]) -> None:
    heads = slices.num_heads
    modules = [slices.block, *slices.producers, *slices.consumers]
    assert all(id(m) in layers for m in modules), f"{name}: a head slice names a foreign module"
    for side, owners, width_of in (
        ("rows", slices.output_rows, lambda m: m.weight.shape[0]),
        ("columns", slices.input_columns, lambda m: m.weight.shape[1]),
    ):
        parts = [list(owners(h)) for h in range(heads)]
        flat = sorted(i for part in parts for i in part)
        assert len({len(part) for part in parts}) == 1, f"{name}: heads own unequal {side}"
        assert flat == sorted(set(flat)), f"{name}: heads share {side}"
        for layer in slices.producers if side == "rows" else slices.consumers:
            assert flat == list(range(width_of(layer))), (
                f"{name}: the heads' {side} do not cover {type(layer).__name__}'s width"
            )
    for module, attribute, dim in slices.per_head:
        size = getattr(module, attribute).shape[dim]
        assert size == heads, f"{name}: {attribute} has {size} slots on dim {dim}, not {heads}"
