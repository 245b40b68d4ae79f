"""The ``qdq`` int8 recipe: NNCF's post-training quantization into explicit Q/DQ pairs, the
graph TensorRT builds with explicit quantization.

Why the ONNX graph and not the torch model: NNCF's torch backend compiles a C++ extension on first
use (about 50 s per fresh process) and exports OpenVINO ``FakeQuantize`` ops that onnxruntime
refuses, while NNCF's ONNX backend writes standard ``QuantizeLinear``/``DequantizeLinear`` (QDQ)
pairs (opset-13 ops) and keeps the input model's opset imports, so the opset-16 export stays
opset 16 for the Jetson Nano's TensorRT 8.2.

The settings are the ones TensorRT needs, not NNCF's defaults for transformers: NNCF's ``MIXED``
preset (its default for ``ModelType.TRANSFORMER``) gives activations asymmetric quantizers with
non-zero zero points, which TensorRT's parser rejects ("TRT only supports symmetric quantization").
The ``PERFORMANCE`` preset makes every quantizer symmetric. NNCF still picks UINT8 for
non-negative activations (after a ReLU, say); TensorRT runs signed INT8 only and would read those
with the wrong range, so for a TensorRT target they are rewritten to INT8 (see
:func:`signed_int8_quantizers`).

Why it is not offered for onnxruntime on a CPU: NNCF quantizes a layer's *inputs* only (TensorRT
fuses the rest), so a linear layer is ``DQ -> MatMul -> Add(bias)`` with no Q after it.
onnxruntime's basic-level ``MatMulAddFusion`` folds that MatMul and its bias into a float
``Gemm`` before its QDQ fusions run, so the weights are dequantized once and every linear layer
runs in fp32 behind a Quantize/Dequantize of its input: 0.34-0.67x fp32 measured on ViTs
(``bench/quantization.py``; the same graph with that one fusion disabled ran 1.33x).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .int8_recipe import Int8Job
from .int8_target import Int8Target

# First TensorRT release trusted to import INT8 *initializers* (weights stored quantized, feeding
# a DequantizeLinear). TensorRT 8.x parsers turn such a constant into an IConstantLayer, which
# rejects INT8 weights ("invalid weights type of Int8", reported on 8.0 and 8.2.5); TensorRT 10
# imports them (its weight-only quantization is built on them). Releases in between are not
# verified here, so they get the float-weight form, which every TensorRT since 8.0 imports.
TRT_INT8_WEIGHTS_FROM = (10, 0)
_QDQ = ("QuantizeLinear", "DequantizeLinear")


@contextlib.contextmanager
def quiet_nncf(level: int = logging.WARNING) -> Iterator[None]:
    """NNCF at ``level`` and without its progress bars, restored afterwards.

    Why: NNCF logs at INFO and draws rich progress bars ("Statistics collection", "Applying Fast
    Bias correction") on rich's global console; in a campaign they would interleave with every
    worker's trial logs, and in a captured stream they leave a line per bar. NNCF also imports
    its torch backend to sniff the model type, and torch logs "No CUDA runtime is found" on that
    import on a CPU-only host: noise, nothing is compiled. rich's global console is muted only
    for the duration (vitopt's own CLI prints through its own consoles); that is process-wide,
    so whatever other threads send to it meanwhile is dropped too.
    """
    import nncf
    import rich
    from nncf.common.logging import nncf_logger

    previous_level = nncf_logger.level
    cpp_extension = logging.getLogger("torch.utils.cpp_extension")
    previous_cpp_level = cpp_extension.level
    console = rich.get_console()
    was_quiet = console.quiet
    nncf.set_log_level(level)
    cpp_extension.setLevel(logging.ERROR)
    console.quiet = True
    try:
        yield
    finally:
        console.quiet = was_quiet
        cpp_extension.setLevel(previous_cpp_level)
        nncf.set_log_level(previous_level)


def signed_int8_quantizers(model: Any) -> int:
    """Rewrite symmetric UINT8 Q/DQ pairs of ``model`` (in place) to INT8; returns how many
    quantizers changed.

    Why: TensorRT quantizes to signed INT8 only. Its parser reads a UINT8 zero point as INT8
    (newer releases say "Defaulting to INT8", older ones nothing), keeping a scale meant for
    [0, 255] and so clipping every value above the middle of the range. A symmetric unsigned
    quantizer covers [0, 255·s]; the signed one with scale 255·s/127 covers it too, at one bit
    less resolution, which is what TensorRT can run. An asymmetric quantizer (non-zero zero
    point) cannot be fixed this way and raises.
    """
    from onnx import TensorProto, numpy_helper

    initializers = {init.name: init for init in model.graph.initializer}
    unsigned: dict[str, set[str]] = {}  # UINT8 zero point -> the scales used with it
    for node in model.graph.node:
        if node.op_type not in _QDQ or len(node.input) < 3:
            continue
        zero_point = initializers.get(node.input[2])
        if zero_point is None or zero_point.data_type != TensorProto.UINT8:
            continue
        if node.input[0] in initializers:  # stored UINT8 data: would need requantizing
            raise ValueError(f"{node.name}: UINT8 constant input, not an activation quantizer")
        unsigned.setdefault(zero_point.name, set()).add(node.input[1])
    scale_uses: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in _QDQ and len(node.input) >= 3:
            scale_uses[node.input[1]] = scale_uses.get(node.input[1], 0) + 1
    changed = 0
    for zero_point_name, scale_names in unsigned.items():
        scale_name = next(iter(scale_names))
        # Rescaling in place is safe only for a constant scale that belongs to this one pair.
        if len(scale_names) > 1 or scale_name not in initializers or scale_uses[scale_name] > 2:
            raise ValueError(f"UINT8 zero point {zero_point_name}: not one Q/DQ pair's own scale")
        zero_point = initializers[zero_point_name]
        values = numpy_helper.to_array(zero_point)
        if np.any(values != 0):
            raise ValueError(f"{zero_point_name}: asymmetric, TensorRT cannot run it")
        scale = initializers[scale_name]
        rescaled = numpy_helper.to_array(scale).astype(np.float32) * np.float32(255.0 / 127.0)
        scale.CopyFrom(numpy_helper.from_array(rescaled, scale_name))
        zero_point.CopyFrom(numpy_helper.from_array(values.astype(np.int8), zero_point_name))
        changed += 1
    if changed:  # types recorded for the former UINT8 tensors would now be wrong
        stale = [
            v for v in model.graph.value_info if v.type.tensor_type.elem_type == TensorProto.UINT8
        ]
        for value in stale:
            model.graph.value_info.remove(value)
    return changed


@dataclass(frozen=True)
class QdqRecipe:
    """NNCF ``PERFORMANCE`` symmetric Q/DQ. ``compress_weights`` stores weights as INT8
    initializers (a file about 3.5x smaller) and ``signed_activations`` rewrites UINT8
    activation quantizers to INT8; ``None`` decides each from the device: INT8 weights
    everywhere but on a TensorRT older than :data:`TRT_INT8_WEIGHTS_FROM` or of unknown
    version, signed activations for TensorRT."""

    compress_weights: bool | None = None
    signed_activations: bool | None = None
    fast_bias_correction: bool = True
    name: str = "qdq"
    help: str = "NNCF symmetric Q/DQ graph (TensorRT's explicit quantization; GPU runtimes)"

    def offered(self, target: Int8Target) -> bool:
        return target.runtime in ("tensorrt", "gpu")

    def quantize(self, source: Path, out: Path, job: Int8Job) -> str:
        import nncf
        import onnx
        from nncf.common.quantization.structs import QuantizationScheme
        from nncf.onnx.quantization.backend_parameters import BackendParameters
        from nncf.quantization.advanced_parameters import (
            AdvancedQuantizationParameters,
            QuantizationParameters,
        )
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        target = job.target
        compress = self.compress_weights
        if compress is None:
            compress = not target.tensorrt or (target.trt_version or (0,)) >= TRT_INT8_WEIGHTS_FROM
        signed = target.tensorrt if self.signed_activations is None else self.signed_activations
        ranges = {
            "minmax": {"activations_range_estimator_params": RangeEstimatorParametersSet.MINMAX},
            "percentile": {
                "activations_range_estimator_params": RangeEstimatorParametersSet.MEAN_QUANTILE
            },
        }.get(job.calibration_method, {})
        advanced = AdvancedQuantizationParameters(
            activations_quantization_params=QuantizationParameters(
                mode=QuantizationScheme.SYMMETRIC
            ),
            backend_params={BackendParameters.COMPRESS_WEIGHTS: compress},
            **ranges,
        )
        items = job.calibration()
        dataset = nncf.Dataset(items, lambda item: {job.input_name: item})
        with quiet_nncf():
            quantized = nncf.quantize(
                onnx.load(str(source)),
                dataset,
                preset=nncf.QuantizationPreset.PERFORMANCE,
                model_type=nncf.ModelType.TRANSFORMER,
                subset_size=len(items),
                fast_bias_correction=self.fast_bias_correction,
                advanced_parameters=advanced,
            )
        resigned = signed_int8_quantizers(quantized) if signed else 0
        onnx.save(quantized, str(out))
        return (
            f"NNCF Q/DQ, {len(items)} calibration batches ({job.calibration_method}), "
            f"{'int8' if compress else 'float (Q/DQ)'} weights, "
            f"{resigned} UINT8 quantizers made INT8"
        )
