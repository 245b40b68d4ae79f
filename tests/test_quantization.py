"""The int8 post-training quantization technique (``plugins/quantization.py``) on a real, trained
timm ViT: what the deployable graph looks like, that onnxruntime runs it, and what it costs in
accuracy."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pluggy
import pytest
import torch
from onnx import TensorProto, numpy_helper

from optimizer import hookspecs
from optimizer.export import export_onnx
from optimizer.technique import OnnxArtifact, ParamSpec, StageContext, Technique
from plugins import quantization
from plugins.digits import Splits, load_digits_splits
from plugins.quantization import (
    PRECISION_PARAM,
    NncfQuantization,
    iter_single_samples,
    onnx_op_counts,
    signed_int8_quantizers,
    tensorrt_target,
)

# timm formats traced sizes into assertion messages while the fixture exports the model.
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor to a Python number")

IMAGE = 32
TRT_82 = {"backend": {"name": "tensorrt", "version": "8.2.1.8"}}


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
        teacher=None,
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


def median_latency_ms(path: Path, runs: int = 300) -> float:
    sess = session(path)
    x = np.random.default_rng(0).standard_normal((1, 3, IMAGE, IMAGE)).astype(np.float32)
    for _ in range(20):
        sess.run(None, {"input": x})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        sess.run(None, {"input": x})
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


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
def int8_onnxruntime(
    fp32_onnx: Path, splits: Splits, tmp_path_factory: pytest.TempPathFactory
) -> tuple[OnnxArtifact, float]:
    """The int8 artifact for a device that says nothing about itself (onnxruntime defaults),
    and the wall time of the quantize call."""
    ctx = make_ctx(tmp_path_factory.mktemp("int8"), loader(splits), calibration_size=128)
    start = time.perf_counter()
    artifact = NncfQuantization().apply(OnnxArtifact(fp32_onnx), {PRECISION_PARAM: "int8"}, ctx)
    return artifact, time.perf_counter() - start


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


def test_search_space_is_one_valid_precision_parameter() -> None:
    technique = NncfQuantization()
    assert isinstance(technique, Technique)
    assert (technique.name, technique.stage) == ("nncf_int8", "quantize")
    (spec,) = technique.search_space()
    assert isinstance(spec, ParamSpec)
    spec.validate()
    assert spec.name == PRECISION_PARAM == "quantize.precision"
    assert spec.kind == "categorical"
    assert spec.choices == ("fp32", "fp16", "int8")
    assert spec.default == "fp32"


def test_registers_through_the_hook_like_any_plugin() -> None:
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    manager.register(quantization, name="builtin:plugins.quantization")
    (registered,) = manager.hook.vitopt_register_techniques()
    assert [type(t) for t in registered] == [NncfQuantization]


def test_fp32_returns_the_artifact_unchanged(tmp_path: Path) -> None:
    artifact = OnnxArtifact(tmp_path / "candidate.onnx")
    result = NncfQuantization().apply(artifact, {PRECISION_PARAM: "fp32"}, make_ctx(tmp_path))
    assert result is artifact
    assert result.precision == "fp32"
    # The default (no parameter sampled, as in the baseline) is fp32 too.
    assert NncfQuantization().apply(artifact, {}, make_ctx(tmp_path)) is artifact


def test_fp16_is_the_same_file_at_builder_precision_fp16(tmp_path: Path) -> None:
    path = tmp_path / "candidate.onnx"
    path.write_bytes(b"unchanged")
    result = NncfQuantization().apply(
        OnnxArtifact(path), {PRECISION_PARAM: "fp16"}, make_ctx(tmp_path)
    )
    assert result.path == path
    assert result.precision == "fp16"
    assert path.read_bytes() == b"unchanged"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["candidate.onnx"]


def test_an_unknown_precision_fails_the_trial(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="int4"):
        NncfQuantization().apply(
            OnnxArtifact(tmp_path / "m.onnx"), {PRECISION_PARAM: "int4"}, make_ctx(tmp_path)
        )


def test_calibration_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        NncfQuantization(calibration_size=0)


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


@pytest.mark.parametrize(
    ("device_info", "expected"),
    [
        ({}, (False, None)),
        ({"backend": {"name": "onnxruntime", "version": "onnxruntime 1.20 (CPU)"}}, (False, None)),
        (
            {"backend": {"name": "onnxruntime", "version": "1.16 (TensorrtExecutionProvider)"}},
            (True, None),
        ),
        (TRT_82, (True, (8, 2, 1, 8))),
        ({"backend": {"name": "trtexec", "version": "10.3.0"}}, (True, (10, 3, 0))),
    ],
)
def test_tensorrt_target_reads_the_agent_backend(
    device_info: dict[str, Any], expected: tuple[bool, Any]
) -> None:
    assert tensorrt_target(device_info) == expected


# -- int8 on a trained ViT --------------------------------------------------------------------


@pytest.mark.slow
def test_int8_is_a_qdq_graph_onnxruntime_runs_close_to_fp32(
    fp32_onnx: Path, int8_onnxruntime: tuple[OnnxArtifact, float], splits: Splits
) -> None:
    artifact, seconds = int8_onnxruntime
    assert artifact.precision == "int8"
    assert artifact.path.name == "candidate.int8.onnx"  # named after its input
    assert artifact.path.exists()

    original, quantized = onnx.load(str(fp32_onnx)), onnx.load(str(artifact.path))
    onnx.checker.check_model(quantized, full_check=True)
    ops = onnx_op_counts(quantized)
    assert ops.get("QuantizeLinear", 0) > 0
    assert ops.get("DequantizeLinear", 0) > 0
    assert "QuantizeLinear" not in onnx_op_counts(original)
    # Still opset 16, the most the Jetson Nano's TensorRT 8.2 parses; all standard-domain ops.
    assert default_opset(quantized) == default_opset(original) == 16
    assert {node.domain for node in quantized.graph.node} <= {""}
    # Symmetric quantizers only: TensorRT rejects a non-zero zero point.
    assert all(not np.any(zp) for zp in quantizer_zero_points(quantized))
    # Weights stored as INT8 for onnxruntime: a smaller file.
    fp32_size, int8_size = fp32_onnx.stat().st_size, artifact.path.stat().st_size
    assert int8_size < fp32_size

    fp32_top1, int8_top1 = top1(fp32_onnx, splits.test), top1(artifact.path, splits.test)
    fp32_ms, int8_ms = median_latency_ms(fp32_onnx), median_latency_ms(artifact.path)
    print(
        f"\nquantize call {seconds:.2f} s; top-1 fp32 {fp32_top1:.4f} int8 {int8_top1:.4f}; "
        f"size fp32 {fp32_size} B int8 {int8_size} B; onnxruntime CPU 1 thread median "
        f"fp32 {fp32_ms:.3f} ms int8 {int8_ms:.3f} ms"
    )
    assert fp32_top1 > 0.85, "the fixture model did not train"
    assert abs(fp32_top1 - int8_top1) <= 0.02


@pytest.mark.slow
def test_int8_for_tensorrt_8_2_keeps_float_weights_and_signed_quantizers(
    fp32_onnx: Path, splits: Splits, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """What a JetPack 4.6 TensorRT can parse: weights as float initializers behind Q→DQ (its
    parser rejects INT8 initializers), INT8 zero points that are all zero, opset 16. Also: the
    campaign's calibration size is what is drawn, and NNCF prints nothing."""
    counting = CountingLoader(list(loader(splits, batch_size=16)))
    ctx = make_ctx(tmp_path, counting, device_info=TRT_82, calibration_size=32)
    artifact = NncfQuantization(calibration_size=999).apply(
        OnnxArtifact(fp32_onnx), {PRECISION_PARAM: "int8"}, ctx
    )
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
    unsigned = NncfQuantization(signed_activations=False).apply(
        OnnxArtifact(path), {PRECISION_PARAM: "int8"}, ctx
    )
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
