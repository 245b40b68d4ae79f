"""The int8 post-training quantization technique (``plugins/quantization.py``) and its recipes on
a real, trained timm ViT: which recipe each device runtime is offered, what each deployable graph
looks like, that onnxruntime runs it, and what it costs in accuracy."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pluggy
import pytest
import torch
from onnx import TensorProto, numpy_helper

from optimizer.plugin_api import OnnxArtifact, ParamSpec, StageContext, Technique, hookspecs
from optimizer.plugin_testing import default_params
from optimizer.trial.export import export_onnx
from plugins import quantization
from plugins.digits import Splits, load_digits_splits
from plugins.int8_nncf import QdqRecipe, signed_int8_quantizers
from plugins.int8_recipe import iter_single_samples, onnx_op_counts
from plugins.int8_target import Int8Target, int8_target
from plugins.quantization import METHOD_PARAM, PRECISION_PARAM, RECIPES, Int8Quantization

# timm formats traced sizes into assertion messages while the fixture exports the model.
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor to a Python number")

IMAGE = 32
TRT_82 = {"backend": {"name": "tensorrt", "version": "8.2.1.8"}}
ORT_VERSION = "onnxruntime 1.32.0 ({})"
ORT_CPU = {
    "backend": {"name": "onnxruntime", "version": ORT_VERSION.format("CPUExecutionProvider")}
}
QDQ = {PRECISION_PARAM: "int8", METHOD_PARAM: "qdq"}


def make_ctx(
    work_dir: Path,
    loader: Any = (),
    *,
    device_info: dict[str, Any] | None = None,
    calibration_size: int = 128,
) -> StageContext:
    return StageContext(
        input_shape=(1, 3, IMAGE, IMAGE),
        num_classes=10,
        train_loader=loader,
        val_loader=(),
        task=None,
        device_info=device_info or {},
        work_dir=work_dir,
        seed=0,
        log=logging.getLogger("test.quantization"),
        calibration_size=calibration_size,
    )


def session(path: Path) -> Any:
    """One intra-op thread: on this 2-core machine, a second spinning thread only slows things
    down when anything else runs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def top1(path: Path, dataset: Any) -> float:
    """Top-1 of an ONNX classifier, one image at a time (its batch is a static 1)."""
    sess = session(path)
    images, labels = dataset.tensors
    correct = 0
    for index in range(len(labels)):
        logits = sess.run(None, {"input": images[index : index + 1].numpy()})[0]
        correct += int(logits.argmax()) == int(labels[index])
    return correct / len(labels)


def loader(splits: Splits, batch_size: int = 64) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        splits.train,
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )


class CountingLoader:
    """A loader that remembers how many samples were drawn from it."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.batches = batches
        self.drawn = 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.batches:
            self.drawn += len(batch[0])
            yield batch


@pytest.fixture(scope="module")
def splits() -> Splits:
    return load_digits_splits(IMAGE)


@pytest.fixture(scope="module")
def fp32_onnx(splits: Splits, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A timm ViT trained on the digits to about 93-95 % top-1, exported like the pipeline does.

    Patch 8 (16 tokens) and width 64 keep 15 epochs near 10 s of CPU; one-cycle warm-up is what
    lets a ViT this small learn in so few steps. One torch thread, restored afterwards: with two
    on this 2-core machine an epoch took 40 s instead of 0.6 s whenever anything else ran.
    """
    import timm

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = timm.create_model(
            "vit_tiny_patch16_224",
            pretrained=False,
            img_size=IMAGE,
            patch_size=8,
            depth=2,
            embed_dim=64,
            num_heads=2,
            mlp_ratio=2,
            num_classes=10,
        )
        train = loader(splits, batch_size=32)
        epochs, lr = 15, 3e-3
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, total_steps=epochs * len(train), pct_start=0.2
        )
        model.train()
        for _ in range(epochs):
            for images, labels in train:
                optimizer.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(model(images), labels).backward()
                optimizer.step()
                schedule.step()
        model.eval()
        path = tmp_path_factory.mktemp("fp32") / "candidate.onnx"
        return export_onnx(model, torch.randn(1, 3, IMAGE, IMAGE), path)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def int8_graphs(
    fp32_onnx: Path, splits: Splits, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, OnnxArtifact]:
    """Every recipe's int8 artifact of the trained ViT, made as for the CPU agent (``qdq`` too:
    not offered there, but it is the graph TensorRT gets and onnxruntime runs it)."""
    made = {}
    for recipe in RECIPES:
        ctx = make_ctx(tmp_path_factory.mktemp(recipe.name), loader(splits), device_info=ORT_CPU)
        params = {PRECISION_PARAM: "int8", METHOD_PARAM: recipe.name}
        made[recipe.name] = Int8Quantization().apply(OnnxArtifact(fp32_onnx), params, ctx)
    return made


def quantizer_zero_points(model: onnx.ModelProto) -> list[np.ndarray]:
    initializers = {init.name: init for init in model.graph.initializer}
    return [
        numpy_helper.to_array(initializers[node.input[2]])
        for node in model.graph.node
        if node.op_type in ("QuantizeLinear", "DequantizeLinear")
    ]


def default_opset(model: onnx.ModelProto) -> int:
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


# -- the plugin contract ----------------------------------------------------------------------


def test_search_space_is_a_precision_and_an_int8_method() -> None:
    technique = Int8Quantization()
    assert isinstance(technique, Technique)
    assert (technique.name, technique.stage) == ("int8", "quantize")
    precision, method = technique.search_space()
    for spec in (precision, method):
        assert isinstance(spec, ParamSpec)
        spec.validate()
    assert precision.name == PRECISION_PARAM == "quantize.precision"
    assert precision.choices == ("fp32", "fp16", "int8")
    assert precision.default == "fp32"
    assert method.name == METHOD_PARAM == "quantize.method"
    assert method.choices == ("qdq", "dynamic", "dynamic_per_channel", "static")
    assert method.when == {PRECISION_PARAM: ["int8"]}  # sampled for int8 trials only
    assert all(name in method.help for name in method.choices)


CPU_METHODS = ["dynamic", "dynamic_per_channel", "static"]
TRTEXEC_10 = {"backend": {"name": "trtexec", "version": "10.3.0"}}


@pytest.mark.parametrize(
    ("device_info", "target", "methods"),
    [
        ({}, Int8Target("cpu"), CPU_METHODS),
        (ORT_CPU, Int8Target("cpu"), CPU_METHODS),
        (
            {
                "backend": {
                    "name": "onnxruntime",
                    "version": ORT_VERSION.format(
                        "TensorrtExecutionProvider,CUDAExecutionProvider,CPUExecutionProvider"
                    ),
                }
            },
            Int8Target("tensorrt"),
            ["qdq"],
        ),
        (
            {
                "backend": {
                    "name": "onnxruntime",
                    "version": ORT_VERSION.format("CUDAExecutionProvider,CPUExecutionProvider"),
                }
            },
            Int8Target("gpu"),
            ["qdq"],
        ),
        (TRT_82, Int8Target("tensorrt", (8, 2, 1, 8)), ["qdq"]),
        (
            {"backend": {"name": "trtexec", "version": "10.3.0"}},
            Int8Target("tensorrt", (10, 3, 0)),
            ["qdq"],
        ),
    ],
    ids=[
        "no-info",
        "onnxruntime-cpu",
        "onnxruntime-tensorrt-ep",
        "onnxruntime-cuda",
        "tensorrt",
        "trtexec",
    ],
)
def test_each_runtime_is_offered_the_recipes_it_accelerates(
    device_info: dict[str, Any], target: Int8Target, methods: list[str]
) -> None:
    assert int8_target(device_info) == target
    offered = Int8Quantization().device_choices(dict(device_info, precisions=["fp32", "int8"]))
    assert offered == {PRECISION_PARAM: ["fp32", "int8"], METHOD_PARAM: methods}


def test_the_cpu_agent_reports_a_cpu_runtime() -> None:
    """What this machine's own agent backend says about itself selects the CPU recipes."""
    from jetson_agent.backends.onnxruntime_backend import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend()
    info = {"backend": {"name": backend.name, "version": backend.version()}}
    assert int8_target(info) == Int8Target("cpu")
    assert Int8Quantization().device_choices(info)[METHOD_PARAM] == CPU_METHODS


def test_registers_through_the_hook_like_any_plugin() -> None:
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    manager.register(quantization, name="builtin:plugins.quantization")
    (registered,) = manager.hook.vitopt_register_techniques()
    assert [type(t) for t in registered] == [Int8Quantization]


def test_fp32_returns_the_artifact_unchanged(tmp_path: Path) -> None:
    artifact = OnnxArtifact(tmp_path / "candidate.onnx")
    result = Int8Quantization().apply(artifact, {PRECISION_PARAM: "fp32"}, make_ctx(tmp_path))
    assert result is artifact
    assert result.precision == "fp32"
    # The declared default (what the baseline runs) is fp32 too.
    defaults = default_params(Int8Quantization())
    assert Int8Quantization().apply(artifact, defaults, make_ctx(tmp_path)) is artifact


def test_fp16_is_the_same_file_at_builder_precision_fp16(tmp_path: Path) -> None:
    path = tmp_path / "candidate.onnx"
    path.write_bytes(b"unchanged")
    result = Int8Quantization().apply(
        OnnxArtifact(path), {PRECISION_PARAM: "fp16"}, make_ctx(tmp_path)
    )
    assert result.path == path
    assert result.precision == "fp16"
    assert path.read_bytes() == b"unchanged"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["candidate.onnx"]


def test_an_unknown_precision_fails_the_trial(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="int4"):
        Int8Quantization().apply(
            OnnxArtifact(tmp_path / "m.onnx"), {PRECISION_PARAM: "int4"}, make_ctx(tmp_path)
        )


def test_calibration_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Int8Quantization(calibration_size=0)


def test_iter_single_samples_yields_batch_one_and_stops_early() -> None:
    batches = [(torch.full((8, 3, 4, 4), float(i)), torch.zeros(8)) for i in range(5)]
    counting = CountingLoader(batches)
    samples = list(iter_single_samples(counting, 12))
    assert len(samples) == 12
    assert all(s.shape == (1, 3, 4, 4) for s in samples)
    assert [float(s[0, 0, 0, 0]) for s in samples] == [0.0] * 8 + [1.0] * 4
    assert counting.drawn == 16  # the third batch was never drawn
    # Bare input batches (no labels) and a loader shorter than the limit.
    assert len(list(iter_single_samples([torch.zeros(3, 2)], 10))) == 3
    assert list(iter_single_samples(batches, 0)) == []


# -- int8 on a trained ViT --------------------------------------------------------------------


# The ops that show each recipe really quantized the graph.
RECIPE_OPS = {
    "qdq": ("QuantizeLinear", "DequantizeLinear"),
    "dynamic": ("DynamicQuantizeLinear", "MatMulInteger"),
    "dynamic_per_channel": ("DynamicQuantizeLinear", "MatMulInteger"),
    "static": ("QuantizeLinear", "QLinearMatMul", "DequantizeLinear"),
}


@pytest.fixture(scope="module")
def fp32_top1(fp32_onnx: Path, splits: Splits) -> float:
    accuracy = top1(fp32_onnx, splits.test)
    assert accuracy > 0.85, "the fixture model did not train"
    return accuracy


@pytest.mark.slow
@pytest.mark.parametrize("method", list(RECIPE_OPS))
def test_each_recipe_is_an_int8_graph_onnxruntime_runs_within_2_points(
    method: str,
    fp32_onnx: Path,
    int8_graphs: dict[str, OnnxArtifact],
    fp32_top1: float,
    splits: Splits,
) -> None:
    artifact = int8_graphs[method]
    assert artifact.precision == "int8"
    assert artifact.path.name == "candidate.int8.onnx"  # named after its input
    original, quantized = onnx.load(str(fp32_onnx)), onnx.load(str(artifact.path))
    onnx.checker.check_model(quantized, full_check=True)
    ops = onnx_op_counts(quantized)
    for op in RECIPE_OPS[method]:
        assert ops.get(op, 0) > 0, (op, ops)
        assert op not in onnx_op_counts(original)
    # Still opset 16, the most the Jetson Nano's TensorRT 8.2 parses; all standard-domain ops.
    assert default_opset(quantized) == default_opset(original) == 16
    assert {node.domain for node in quantized.graph.node} <= {""}
    # Weights stored as INT8 for onnxruntime: a smaller file.
    assert artifact.path.stat().st_size < fp32_onnx.stat().st_size
    int8_top1 = top1(artifact.path, splits.test)
    print(f"\n{method}: top-1 fp32 {fp32_top1:.4f} int8 {int8_top1:.4f}; {ops}")
    assert abs(fp32_top1 - int8_top1) <= 0.02


@pytest.mark.slow
def test_the_qdq_graph_has_symmetric_quantizers_only(
    int8_graphs: dict[str, OnnxArtifact],
) -> None:
    # TensorRT rejects a non-zero zero point.
    model = onnx.load(str(int8_graphs["qdq"].path))
    assert all(not np.any(zp) for zp in quantizer_zero_points(model))


def weight_zero_point_sizes(path: Path) -> set[int]:
    """Element counts of the weight zero points of each MatMulInteger (input 3)."""
    model = onnx.load(str(path))
    initializers = {init.name: init for init in model.graph.initializer}
    return {
        int(np.prod(initializers[node.input[3]].dims or [1]))
        for node in model.graph.node
        if node.op_type == "MatMulInteger"
    }


@pytest.mark.slow
def test_dynamic_recipes_differ_in_weight_scales_only(
    int8_graphs: dict[str, OnnxArtifact],
) -> None:
    assert weight_zero_point_sizes(int8_graphs["dynamic"].path) == {1}
    assert min(weight_zero_point_sizes(int8_graphs["dynamic_per_channel"].path)) > 1


@pytest.mark.slow
def test_dynamic_quantization_draws_no_calibration_and_static_draws_the_campaigns(
    fp32_onnx: Path, splits: Splits, tmp_path: Path
) -> None:
    technique = Int8Quantization()
    batches = list(loader(splits, batch_size=16))
    drawn = {}
    for method in ("dynamic", "static"):
        counting = CountingLoader(batches)
        ctx = make_ctx(tmp_path / method, counting, device_info=ORT_CPU, calibration_size=32)
        technique.apply(
            OnnxArtifact(fp32_onnx), {PRECISION_PARAM: "int8", METHOD_PARAM: method}, ctx
        )
        drawn[method] = counting.drawn
    assert drawn == {"dynamic": 0, "static": 32}


def activation_scales(path: Path) -> list[float]:
    model = onnx.load(str(path))
    initializers = {init.name: init for init in model.graph.initializer}
    return [
        float(numpy_helper.to_array(initializers[node.input[1]]))
        for node in model.graph.node
        if node.op_type == "QuantizeLinear"
    ]


def one_matmul_onnx(path: Path) -> Path:
    """input (1, 3, IMAGE, IMAGE) @ a constant (IMAGE, 8): one activation to calibrate."""
    from onnx import helper

    weight = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((IMAGE, 8)).astype(np.float32), "weight"
    )
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "weight"], ["output"])],
        "one_matmul",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, IMAGE, IMAGE])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, IMAGE, 8])],
        [weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_the_calibration_method_sets_the_static_ranges(tmp_path: Path) -> None:
    """percentile ignores the rarest activations, minmax keeps the extremes: 128 images of
    values in [0, 1], one of them with a single pixel at 50, give the input's quantizer a range
    of about 1 with percentile and 50 with minmax. (A trained model's ranges are no test: with
    128 samples onnxruntime's 99.999th percentile cuts about one value per tensor, so whether
    it narrows a range by 5 % depended on the CPU the model was trained on.)"""
    images = torch.rand(128, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(0))
    images[7, 1, 3, 5] = 50.0
    data = torch.utils.data.TensorDataset(images, torch.zeros(128, dtype=torch.long))
    source = OnnxArtifact(one_matmul_onnx(tmp_path / "one_matmul.onnx"))
    scales = {}
    for method in ("minmax", "percentile"):
        calibration = torch.utils.data.DataLoader(data, batch_size=16)
        ctx = make_ctx(tmp_path / method, calibration, device_info=ORT_CPU)
        ctx = replace(ctx, calibration_method=method)
        artifact = Int8Quantization().apply(
            source, {PRECISION_PARAM: "int8", METHOD_PARAM: "static"}, ctx
        )
        (scales[method],) = activation_scales(artifact.path)
    assert scales["minmax"] == pytest.approx(50 / 255, rel=0.01)
    assert scales["percentile"] < 1.1 / 255


@pytest.mark.slow
def test_int8_for_tensorrt_8_2_keeps_float_weights_and_signed_quantizers(
    fp32_onnx: Path, splits: Splits, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """What a JetPack 4.6 TensorRT can parse: weights as float initializers behind Q→DQ (its
    parser rejects INT8 initializers), INT8 zero points that are all zero, opset 16. Also: the
    campaign's calibration size is what is drawn, and NNCF prints nothing."""
    counting = CountingLoader(list(loader(splits, batch_size=16)))
    ctx = make_ctx(tmp_path, counting, device_info=TRT_82, calibration_size=32)
    artifact = Int8Quantization(calibration_size=999).apply(OnnxArtifact(fp32_onnx), QDQ, ctx)
    assert counting.drawn == 32
    out = capfd.readouterr()
    assert "Statistics collection" not in out.out + out.err
    assert "INFO:nncf" not in out.out + out.err

    model = onnx.load(str(artifact.path))
    assert default_opset(model) == 16
    int8_initializers = {
        init.name for init in model.graph.initializer if init.data_type == TensorProto.INT8
    }
    assert int8_initializers, "zero points are INT8 initializers"
    for node in model.graph.node:
        for position, name in enumerate(node.input):
            if name in int8_initializers:  # only ever a Q/DQ zero point
                assert node.op_type in ("QuantizeLinear", "DequantizeLinear")
                assert position == 2
    produced_by_q = {n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear":
            assert node.input[0] in produced_by_q
    zero_points = quantizer_zero_points(model)
    assert all(zp.dtype == np.int8 and not np.any(zp) for zp in zero_points)
    assert abs(top1(fp32_onnx, splits.test) - top1(artifact.path, splits.test)) <= 0.02


class _ReluNet(torch.nn.Module):
    """ReLU outputs are non-negative, so NNCF gives them unsigned (UINT8) quantizers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3)
        self.conv2 = torch.nn.Conv2d(8, 8, 3)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.head(x.mean(dim=(2, 3)))


@pytest.mark.slow
def test_unsigned_quantizers_become_signed_int8_with_the_same_outputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = export_onnx(_ReluNet().eval(), torch.randn(1, 3, 16, 16), tmp_path / "relu.onnx")
    batches = [(torch.randn(8, 3, 16, 16), torch.zeros(8)) for _ in range(4)]
    ctx = make_ctx(tmp_path / "q", batches, calibration_size=32)
    technique = Int8Quantization(recipes=[QdqRecipe(signed_activations=False)])
    unsigned = technique.apply(OnnxArtifact(path), QDQ, ctx)
    model = onnx.load(str(unsigned.path))
    assert any(zp.dtype == np.uint8 for zp in quantizer_zero_points(model))

    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    reference = session(path).run(None, {"input": x})[0]
    before = session(unsigned.path).run(None, {"input": x})[0]
    assert signed_int8_quantizers(model) > 0
    assert all(zp.dtype == np.int8 and not np.any(zp) for zp in quantizer_zero_points(model))
    onnx.checker.check_model(model, full_check=True)
    signed_path = tmp_path / "signed.onnx"
    onnx.save(model, str(signed_path))
    after = session(signed_path).run(None, {"input": x})[0]
    # One bit less for the non-negative activations: still an int8 approximation of fp32.
    scale = float(np.abs(reference).max())
    assert np.abs(before - reference).max() < 0.05 * scale
    assert np.abs(after - reference).max() < 0.05 * scale
    assert signed_int8_quantizers(model) == 0  # idempotent
