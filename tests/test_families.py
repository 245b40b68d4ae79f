"""Each built-in model family on its smallest timm config (random weights, offline): pruning at
two ratios really removes parameters, the pruned model's ONNX (opset 16) computes what torch does
and holds no op TensorRT 8.2 lacks, int8 and cross-family distillation run; the segmentation
backbone of the hierarchical families."""

from __future__ import annotations

import copy
import functools
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from optimizer.plugin_api import ModelFamily, OnnxArtifact
from optimizer.plugin_api.model_stats import count_macs, count_params
from optimizer.plugin_api.task import create_timm_model
from optimizer.plugin_host.registry import plugin_registry
from optimizer.plugin_testing import stage_context
from optimizer.trial.export import NANO_MAX_OPSET, export_onnx
from optimizer.trial.nano_ops import TENSORRT_8_2_OPS, unsupported_ops
from plugins.distillation import KnowledgeDistillation
from plugins.pruning import METHODS, PruningUnsupported, TorchPruning, prune_model
from plugins.quantization import METHOD_PARAM, PRECISION_PARAM, Int8Quantization
from plugins.segmentation import build_segmentation_model

pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")

# The smallest timm config of each family, the input size it is tested at, its family, and the
# pruning methods its rules offer (those that remove heads need heads that can be sliced).
MODELS = {
    "deit_tiny_patch16_224": (64, "vit", ("heads", "mlp", "heads+mlp")),
    "swin_tiny_patch4_window7_224": (64, "swin", ("heads", "mlp", "heads+mlp")),
    "mobilevit_xxs": (64, "mobilevit", ("heads", "mlp", "heads+mlp")),
    "mobilevitv2_050": (64, "mobilevit", ("mlp",)),
    # V1's attention biases are fixed at a 7x7 last stage: 224-pixel inputs only.
    "efficientformer_l1": (224, "efficientformer", ("heads", "mlp", "heads+mlp")),
    "efficientformerv2_s0": (64, "efficientformer", ("mlp",)),
    "levit_128s": (64, "levit", ("heads", "mlp", "heads+mlp")),
}
RATIOS = (0.3, 0.6)
KD_ONE_EPOCH = {
    "train.epochs": 1,
    "train.lr": 1e-3,
    "distill.enabled": True,
    "distill.temperature": 2.0,
    "distill.alpha": 0.5,
    "distill.features": False,
}


def family(name: str) -> ModelFamily:
    found = plugin_registry().model_family(name)
    assert found is not None, name
    return found


def lively(model: nn.Module) -> nn.Module:
    """Random norm scales and statistics: timm initialises some to zero (LeViT's projection
    norms), which makes every output ~0 and an ONNX-vs-torch comparison meaningless."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.weight.copy_(0.5 + torch.rand(module.weight.shape, generator=gen))
                module.running_mean.copy_(
                    0.1 * torch.randn(module.running_mean.shape, generator=gen)
                )
                module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=gen))
    return model


@functools.cache
def _built(name: str) -> nn.Module:
    torch.manual_seed(0)
    size = MODELS[name][0]
    return lively(create_timm_model(name, False, size, num_classes=10)).eval()


def build(name: str) -> nn.Module:
    return copy.deepcopy(_built(name))


def example(name: str) -> torch.Tensor:
    size = MODELS[name][0]
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))


def assert_onnx_matches(model: nn.Module, x: torch.Tensor, path: Path, fam: ModelFamily) -> Path:
    export_onnx(model, x, path, family=fam)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        want = model(x).numpy()
    scale = float(np.abs(want).max())
    assert scale > 1e-3, "outputs too small to compare"
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * scale)
    assert onnx.load(str(path)).opset_import[0].version == NANO_MAX_OPSET
    return path


def test_each_model_name_resolves_to_its_family() -> None:
    registry = plugin_registry()
    for name, (_, expected, _) in MODELS.items():
        assert family(name).name == expected
    assert registry.model_family("vit_base_patch16_224").name == "vit"
    for uncovered in ("resnet18", "swinv2_tiny_window8_256", "convnext_atto"):
        assert registry.model_family(uncovered) is None
    line = registry.no_family("resnet18")
    assert line.startswith("model.name: no model family covers 'resnet18' (families: vit: vit_*")
    assert "levit: levit_*" in line and "\n" not in line


@pytest.mark.parametrize("name", list(MODELS))
def test_pruning_at_two_ratios_exports_what_torch_computes(name: str, tmp_path: Path) -> None:
    methods = MODELS[name][2]
    fam, x = family(name), example(name)
    method = methods[-1]  # the most each family removes
    counts = [count_params(_built(name))]
    macs = [count_macs(_built(name), x.shape)]
    for ratio in RATIOS:
        model = build(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prune_model(model, fam, method=method, ratio=ratio, example=x)
        counts.append(count_params(model))
        macs.append(count_macs(model, x.shape))
        path = assert_onnx_matches(model, x, tmp_path / f"{ratio}.onnx", fam)
        assert unsupported_ops(path) == [], f"{name} exports ops TensorRT 8.2 lacks"
    assert counts[0] > counts[1] > counts[2], counts
    assert macs[0] > macs[1] > macs[2], macs


@pytest.mark.parametrize("name", ["mobilevitv2_050", "efficientformerv2_s0"])
def test_families_without_sliceable_heads_refuse_head_pruning_in_one_line(name: str) -> None:
    with pytest.raises(PruningUnsupported) as caught:
        prune_model(build(name), family(name), method="heads", ratio=0.5, example=example(name))
    message = str(caught.value)
    assert "\n" not in message and "has none to remove" in message
    assert ("one head" if "mobilevit" in name else "talking-head") in message


def test_heads_are_cut_with_their_bias_tables() -> None:
    """Swin's relative position bias table loses the removed heads' columns, LeViT's and
    EfficientFormer's attention biases their rows: what a head's attention adds stays its own."""
    cases = {
        "swin_tiny_patch4_window7_224": ("relative_position_bias_table", 1),
        "levit_128s": ("attention_biases", 0),
        "efficientformer_l1": ("attention_biases", 0),
    }
    for name, (table, dim) in cases.items():
        model = build(name)
        blocks = [s.block for s in family(name).prunable(model).heads]
        before = [(b.num_heads, getattr(b, table).shape[dim]) for b in blocks]
        prune_model(model, family(name), method="heads", ratio=0.5, example=example(name))
        for (heads, rows), block in zip(before, blocks, strict=True):
            assert heads == rows and block.num_heads < heads
            assert getattr(block, table).shape[dim] == block.num_heads


def test_the_export_folds_shapes_and_swaps_hard_swish() -> None:
    """Swin's window padding traces to Mod, LeViT's activations to HardSwish: neither is in
    TensorRT 8.2's parser; the folded, family-prepared export holds neither."""
    assert "Mod" not in TENSORRT_8_2_OPS and "HardSwish" not in TENSORRT_8_2_OPS
    for name, op in (("swin_tiny_patch4_window7_224", "Mod"), ("levit_128s", "HardSwish")):
        model, x = build(name), example(name)
        raw = Path(f"/tmp/vitopt-raw-{name}.onnx")
        torch.onnx.export(model, (x,), str(raw), opset_version=NANO_MAX_OPSET, dynamo=False)
        assert op in {node.op_type for node in onnx.load(str(raw)).graph.node}
        folded = export_onnx(model, x, raw.with_suffix(".folded.onnx"), family=family(name))
        assert op not in {node.op_type for node in onnx.load(str(folded)).graph.node}
        raw.unlink()
        folded.unlink()


@pytest.mark.parametrize("name", list(MODELS))
def test_int8_runs_on_each_family(name: str, tmp_path: Path) -> None:
    size = MODELS[name][0]
    model, x = build(name), example(name)
    prune_model(model, family(name), method="mlp", ratio=0.3, example=x)
    path = export_onnx(model, x, tmp_path / "fp32.onnx", family=family(name))
    ctx = stage_context(tmp_path, image_size=size, model_name=name)
    params = {PRECISION_PARAM: "int8", METHOD_PARAM: "qdq"}
    artifact = Int8Quantization().apply(OnnxArtifact(path), params, ctx)
    assert artifact.precision == "int8"
    ops = {node.op_type for node in onnx.load(str(artifact.path)).graph.node}
    assert "QuantizeLinear" in ops and unsupported_ops(artifact.path) == []
    session = ort.InferenceSession(str(artifact.path), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": x.numpy()})[0].shape == (1, 10)


@pytest.mark.parametrize(
    ("student", "teacher"),
    [  # each family a student once, its teacher of another family
        ("deit_tiny_patch16_224", "levit_128s"),
        ("swin_tiny_patch4_window7_224", "deit_tiny_patch16_224"),
        ("mobilevit_xxs", "swin_tiny_patch4_window7_224"),
        ("mobilevitv2_050", "mobilevit_xxs"),
        ("efficientformer_l1", "mobilevitv2_050"),
        ("efficientformerv2_s0", "levit_128s"),
        ("levit_128s", "efficientformerv2_s0"),
    ],
)
def test_cross_family_logit_distillation_fine_tunes(
    student: str, teacher: str, tmp_path: Path
) -> None:
    """A teacher of another family distils a pruned student: one KD epoch changes its weights
    and reports a validation score."""
    size = MODELS[student][0]
    model = build(student)
    prune_model(model, family(student), method="mlp", ratio=0.3, example=example(student))
    reports: list = []
    ctx = stage_context(
        tmp_path,
        image_size=size,
        teacher=build(teacher),
        model_name=student,
        report=lambda step, value: reports.append((step, value)),
        macs_kept=0.7,  # pruned: as the pipeline says after the prune stage
    )
    before = copy.deepcopy(model.state_dict())
    KnowledgeDistillation().apply(model, KD_ONE_EPOCH, ctx)
    assert len(reports) == 1 and 0.0 <= reports[0][1] <= 1.0
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "name", ["mobilevit_xxs", "swin_tiny_patch4_window7_224", "efficientformerv2_s0"]
)
def test_hierarchical_segmentation_backbones(name: str, tmp_path: Path) -> None:
    """The decoder takes each stage (finest first, coarser ones resized to it); pruned, the
    model still exports what torch computes at the input resolution."""
    size, fam = 64, family(name)
    torch.manual_seed(0)
    model = lively(build_segmentation_model(name, {"head_width": 32}, 6, size, fam)).eval()
    sizes = model.head.sizes
    assert len(sizes) == 4 and sizes[0] == (size // 4, size // 4) and sizes[-1] == (2, 2)
    x = torch.randn(1, 3, size, size)
    before = count_params(model)
    prune_model(model, fam, method=MODELS[name][2][-1], ratio=0.5, example=x)
    assert count_params(model) < before and model.head.fuse[0].out_channels == 16
    path = assert_onnx_matches(model, x, tmp_path / "seg.onnx", fam)
    assert unsupported_ops(path) == []
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": x.numpy()})[0].shape == (1, 6, size, size)


def test_pixel_wise_distillation_from_a_swin_teacher_into_a_mobilevit_student(
    tmp_path: Path,
) -> None:
    """The seed paper's pairing: a MobileViT segmentation student distilled pixel by pixel from
    a Swin segmentation teacher."""
    from torch.utils.data import DataLoader, Subset

    from plugins.segmentation import Segmentation
    from plugins.uav_data import load_synthetic_splits

    size = 64
    splits = load_synthetic_splits(size)
    torch.manual_seed(0)
    student = build_segmentation_model("mobilevit_xxs", {}, 6, size, family("mobilevit_xxs"))
    teacher = build_segmentation_model(
        "swin_tiny_patch4_window7_224", {}, 6, size, family("swin_tiny_patch4_window7_224")
    )
    reports: list = []
    ctx = stage_context(
        tmp_path,
        image_size=size,
        num_classes=6,
        task=Segmentation(),
        teacher=teacher,
        model_name="mobilevit_xxs",
        train_loader=DataLoader(Subset(splits.train, range(16)), batch_size=8),
        val_loader=DataLoader(Subset(splits.val, range(8)), batch_size=8),
        report=lambda step, value: reports.append((step, value)),
        macs_kept=0.7,
    )
    KnowledgeDistillation().apply(student, KD_ONE_EPOCH, ctx)
    assert len(reports) == 1 and 0.0 <= reports[0][1] <= 1.0


@pytest.mark.parametrize("name", list(MODELS))
def test_the_built_in_families_pass_the_conformance_check(name: str, tmp_path: Path) -> None:
    from optimizer.plugin_testing import check_family

    size, expected, methods = MODELS[name]
    found = check_family(expected, name, tmp_path, image_size=size)
    assert bool(found.heads) == ("heads" in methods)
    assert bool(found.blocks) == (expected == "vit")  # only a plain ViT's blocks drop whole
    # The search space offers what the family finds something to remove for.
    model = build(name)
    ctx = SimpleNamespace(model_family=family(name))
    offered = TorchPruning().model_choices(model, ctx)["prune.method"]
    widths = [m for m in METHODS if m != "none" and "depth" not in m]
    assert offered == ["none", *(m for m in widths if m in methods)] + (
        ["depth", "depth+mlp", "depth+heads+mlp"] if expected == "vit" else []
    )


def test_the_conformance_check_refuses_a_block_stack_that_changes_shape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Swin's stages downsample: listed as a stack to drop blocks from, the check refuses them."""
    from dataclasses import replace

    from optimizer.plugin_testing import check_family

    swin = family("swin_tiny_patch4_window7_224")
    declared = type(swin).prunable
    monkeypatch.setattr(
        type(swin),
        "prunable",
        lambda self, model: replace(declared(self, model), blocks=[model.layers]),
    )
    with pytest.raises(AssertionError, match="swin: a stack's block maps"):
        check_family("swin", "swin_tiny_patch4_window7_224", tmp_path, image_size=64)


def test_a_segmentation_campaign_loads_a_teacher_of_another_family(tmp_path: Path) -> None:
    """A MobileViT student's campaign names a Swin teacher and its checkpoint: the teacher is
    built as a segmentation model by the Swin family's rules and loads the checkpoint."""
    import yaml

    from optimizer.config import load_campaign
    from optimizer.trial.baseline import load_teacher

    swin = "swin_tiny_patch4_window7_224"
    torch.manual_seed(0)
    reference = build_segmentation_model(swin, {"head_width": 32}, 6, 64, family(swin))
    torch.save(reference.state_dict(), tmp_path / "teacher.pt")
    data = {
        "name": "cross",
        "task": {"name": "segmentation"},
        "model": {"name": "mobilevit_xxs", "kwargs": {"head_width": 32}},
        "teacher": {
            "name": swin,
            "kwargs": {"head_width": 32},
            "checkpoint": str(tmp_path / "teacher.pt"),
        },
        "data": {"source": "uav_synthetic", "image_size": 64},
        "objective": {"max_accuracy_drop": 0.02},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    teacher = load_teacher(load_campaign(tmp_path / "c.yaml"), 6, tmp_path / "unused.pt")
    assert teacher.family.name == "swin" and len(teacher.head.sizes) == 4
    for (key, got), want in zip(
        teacher.state_dict().items(), reference.state_dict().values(), strict=True
    ):
        assert torch.equal(got, want), key
    with torch.no_grad():
        assert teacher(torch.randn(1, 3, 64, 64)).shape == (1, 6, 64, 64)


def test_vitopt_plugins_lists_each_family_with_the_names_it_covers() -> None:
    from click.testing import CliRunner

    from optimizer.cli import main

    shown = CliRunner().invoke(main, ["plugins"], env={"COLUMNS": "300"})
    assert shown.exit_code == 0, shown.output
    assert (
        "model families: vit (vit_*, deit_*), swin (swin_*), mobilevit (mobilevit_*, "
        "mobilevitv2_*), efficientformer (efficientformer_*, efficientformerv2_*), levit "
        "(levit_*)" in " ".join(shown.output.split())
    )
