"""The int8 recipes for onnxruntime on a CPU: its own quantizer, restricted to the layers its
CPU kernels accelerate.

``dynamic``
    ``quantize_dynamic``: the weights of every ``MatMul``/``Gemm`` with a constant weight are
    stored as INT8 and the activations are quantized at run time, per call
    (``DynamicQuantizeLinear -> MatMulInteger``, which onnxruntime fuses into one
    ``DynamicQuantizeMatMul`` kernel with the scale and bias). No calibration: nothing about the
    data is frozen into the graph. Per-tensor weight scales (``dynamic``) or one per output
    channel (``dynamic_per_channel``: a little slower, a little closer to fp32).
``static``
    ``quantize_static`` in the QOperator format: the weight MatMuls become ``QLinearMatMul``
    with UINT8 activations whose ranges are calibrated on training images
    (``data.calibration_size``, ``data.calibration_method``). The activation-by-activation
    MatMuls of attention stay float: quantizing them (and Softmax) made the graph slower.

Measured on ViTs (``bench/quantization.py``): the dynamic recipe is the fastest, then static;
both standard-domain ONNX (opset of the input). Every recipe is only offered for onnxruntime on
a CPU: TensorRT parses neither ``MatMulInteger`` nor ``DynamicQuantizeLinear``, and
onnxruntime's CUDA provider has no fused kernel for them.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .int8_recipe import Int8Job
from .int8_target import Int8Target

_WEIGHT_OPS = ["MatMul", "Gemm"]


@contextlib.contextmanager
def ort_quantization() -> Iterator[Any]:
    """``onnxruntime.quantization``, with ``sys.path`` as it was and its chatter muted.

    Why: importing it appends ``onnxruntime/transformers`` to ``sys.path``, and that folder holds
    an ``optimizer.py``: a process started later with this path (a spawned worker) would import
    it as vitopt's ``optimizer``. The quantizer also logs "Please consider to run pre-processing"
    through the root logger and prints calibration progress on stdout, once per call.
    """
    before = list(sys.path)
    try:
        import onnxruntime.quantization as quantization
    finally:
        sys.path[:] = before
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield quantization
    finally:
        root.setLevel(level)


def _offered(target: Int8Target) -> bool:
    return target.runtime == "cpu"


@dataclass(frozen=True)
class DynamicRecipe:
    """onnxruntime's dynamic quantization of the weight MatMuls/Gemms."""

    per_channel: bool = False

    @property
    def name(self) -> str:
        return "dynamic_per_channel" if self.per_channel else "dynamic"

    @property
    def scales(self) -> str:
        return "per-channel" if self.per_channel else "per-tensor"

    @property
    def help(self) -> str:
        return f"onnxruntime dynamic int8 MatMul, {self.scales} weights, no calibration (CPU)"

    def offered(self, target: Int8Target) -> bool:
        return _offered(target)

    def quantize(self, source: Path, out: Path, job: Int8Job) -> str:
        with ort_quantization() as q:
            q.quantize_dynamic(
                str(source),
                str(out),
                op_types_to_quantize=_WEIGHT_OPS,
                per_channel=self.per_channel,
                weight_type=q.QuantType.QInt8,
                extra_options={"MatMulConstBOnly": True},
            )
        return f"onnxruntime dynamic MatMulInteger, {self.scales} INT8 weights"


@dataclass(frozen=True)
class StaticRecipe:
    """onnxruntime's static QOperator quantization of the weight MatMuls."""

    name: str = "static"
    help: str = "onnxruntime static QLinearMatMul, calibrated UINT8 activations (CPU)"

    def offered(self, target: Int8Target) -> bool:
        return _offered(target)

    def quantize(self, source: Path, out: Path, job: Int8Job) -> str:
        items = job.calibration()
        with ort_quantization() as q:

            class Reader(q.CalibrationDataReader):
                def __init__(self) -> None:
                    self._items = iter(items)

                def get_next(self) -> dict[str, Any] | None:
                    item = next(self._items, None)
                    return None if item is None else {job.input_name: item}

            method = (
                q.CalibrationMethod.Percentile
                if job.calibration_method == "percentile"
                else q.CalibrationMethod.MinMax
            )
            q.quantize_static(
                str(source),
                str(out),
                Reader(),
                quant_format=q.QuantFormat.QOperator,
                op_types_to_quantize=["MatMul"],  # a Gemm would become com.microsoft QGemm
                activation_type=q.QuantType.QUInt8,
                weight_type=q.QuantType.QInt8,
                calibrate_method=method,
                extra_options={"MatMulConstBOnly": True},
            )
        return (
            f"onnxruntime static QLinearMatMul, {len(items)} calibration batches "
            f"({method.name}), UINT8 activations, INT8 weights"
        )
