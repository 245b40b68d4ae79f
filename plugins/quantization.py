"""Post-training quantization: the ``quantize`` stage, on the exported ONNX graph.

Why the ONNX graph and not the torch model: NNCF's torch backend compiles a C++ extension on first
use (about 50 s per fresh process) and exports OpenVINO ``FakeQuantize`` ops that onnxruntime
refuses, while NNCF's ONNX backend writes standard ``QuantizeLinear``/``DequantizeLinear`` (QDQ)
pairs (opset-13 ops) and keeps the input model's opset imports, so the opset-16 export stays
opset 16 for the Jetson Nano's TensorRT 8.2. onnxruntime runs the result and TensorRT builds it
with explicit quantization.

The settings are the ones TensorRT needs, not NNCF's defaults for transformers: NNCF's ``MIXED``
preset (its default for ``ModelType.TRANSFORMER``) gives activations asymmetric quantizers with
non-zero zero points, which TensorRT's parser rejects ("TRT only supports symmetric quantization").
The ``PERFORMANCE`` preset makes every quantizer symmetric. NNCF still picks UINT8 for
non-negative activations (after a ReLU, say); TensorRT runs signed INT8 only and would read those
with the wrong range, so for a TensorRT target they are rewritten to INT8 (see
:func:`signed_int8_quantizers`).

``fp16`` is not a host-side conversion: it is a builder precision the device agent passes to
TensorRT, so the graph stays fp32 and only the artifact's precision changes.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from optimizer.hookspecs import hookimpl
from optimizer.technique import OnnxArtifact, ParamSpec, StageContext

PRECISION_PARAM = "quantize.precision"
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
# First TensorRT release trusted to import INT8 *initializers* (weights stored quantized, feeding
# a DequantizeLinear). TensorRT 8.x parsers turn such a constant into an IConstantLayer, which
# rejects INT8 weights ("invalid weights type of Int8", reported on 8.0 and 8.2.5); TensorRT 10
# imports them (its weight-only quantization is built on them). Releases in between are not
# verified here, so they get the float-weight form, which every TensorRT since 8.0 imports.
TRT_INT8_WEIGHTS_FROM = (10, 0)
_QDQ = ("QuantizeLinear", "DequantizeLinear")


def iter_single_samples(loader: Iterable[Any], limit: int) -> Iterator[torch.Tensor]:
    """Up to ``limit`` single inputs, each with a batch dimension of 1, from a loader of
    ``(inputs, labels)`` batches (or of bare input batches).

    Why: calibration and activation statistics must feed the exported graph, whose batch size is
    a static 1, while training loaders batch by the campaign's batch size. Stops drawing batches
    as soon as ``limit`` samples are out, so a large loader costs only what is used.
    """
    if limit <= 0:
        return
    produced = 0
    for batch in loader:
        inputs = batch[0] if isinstance(batch, list | tuple) else batch
        for sample in inputs:
            yield sample.detach().unsqueeze(0).cpu()
            produced += 1
            if produced >= limit:
                return


def onnx_op_counts(model: Any) -> dict[str, int]:
    """``{op_type: count}`` over the main graph of an ``onnx.ModelProto`` (what a test or a log
    line needs to see that a graph really was quantized)."""
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _version_tuple(text: Any) -> tuple[int, ...] | None:
    match = re.search(r"\d+(?:\.\d+)*", str(text or ""))
    return tuple(int(n) for n in match.group(0).split(".")) if match else None


def tensorrt_target(device_info: Mapping[str, Any]) -> tuple[bool, tuple[int, ...] | None]:
    """Whether the device agent builds models with TensorRT, and that TensorRT's version when
    the agent reports it, from the ``backend`` entry of its info (``{"name": "tensorrt",
    "version": "8.2.1.8"}``). onnxruntime with a TensorRT execution provider parses through
    TensorRT too, at a version the agent does not report. A device that says nothing (no agent
    info) is taken for onnxruntime on a CPU."""
    backend = device_info.get("backend")
    if not isinstance(backend, Mapping):
        return False, None
    name = str(backend.get("name", "")).lower()
    version = str(backend.get("version", ""))
    if "tensorrt" in name or "trtexec" in name:
        return True, _version_tuple(version)
    return "tensorrt" in version.lower(), None


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


def _graph_input(model: Any) -> tuple[str, int]:
    """The model's (only) data input and its static batch size (1 where the batch is dynamic:
    one sample at a time fits every batch a dynamic graph accepts)."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    if len(inputs) != 1:
        names = ", ".join(value.name for value in inputs)
        raise ValueError(f"int8 calibration needs a single-input graph, this one has: {names}")
    dims = inputs[0].type.tensor_type.shape.dim
    batch = dims[0].dim_value if dims and dims[0].HasField("dim_value") else 1
    return inputs[0].name, max(int(batch), 1)


def _calibration_items(loader: Iterable[Any], count: int, batch: int) -> list[np.ndarray]:
    """``count`` samples from ``loader`` as float32 arrays shaped for the graph's batch size."""
    samples = [s.numpy().astype(np.float32) for s in iter_single_samples(loader, count)]
    if batch == 1:
        return samples
    whole = len(samples) // batch * batch
    return [np.concatenate(samples[i : i + batch]) for i in range(0, whole, batch)]


def _default_opset(model: Any) -> int | None:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return None


class NncfQuantization:
    """int8 post-training quantization of the ONNX graph with NNCF; fp16/fp32 pass through.

    ``calibration_size`` is only the fallback for a context without one: the campaign's
    ``data.calibration_size`` arrives as :attr:`StageContext.calibration_size` and wins.
    ``compress_weights`` stores weights as INT8 initializers (a file about 3.5x smaller) and
    ``signed_activations`` rewrites UINT8 activation quantizers to INT8; ``None`` decides each
    from the device (:func:`tensorrt_target`): INT8 weights everywhere but on a TensorRT older
    than :data:`TRT_INT8_WEIGHTS_FROM` or of unknown version, signed activations for TensorRT.
    """

    name = "nncf_int8"
    stage = "quantize"

    def __init__(
        self,
        calibration_size: int = 128,
        *,
        compress_weights: bool | None = None,
        signed_activations: bool | None = None,
        fast_bias_correction: bool = True,
    ) -> None:
        if calibration_size < 1:
            raise ValueError("calibration_size must be at least 1")
        self.calibration_size = calibration_size
        self.compress_weights = compress_weights
        self.signed_activations = signed_activations
        self.fast_bias_correction = fast_bias_correction

    def search_space(self) -> Sequence[ParamSpec]:
        return [
            ParamSpec(
                PRECISION_PARAM,
                "categorical",
                "fp32",
                choices=PRECISIONS,
                help="deployed precision: fp16 is a TensorRT builder flag, int8 an NNCF "
                "post-training-quantized QDQ graph",
            )
        ]

    def apply(
        self, subject: OnnxArtifact, params: Mapping[str, Any], ctx: StageContext
    ) -> OnnxArtifact:
        precision = params.get(PRECISION_PARAM, "fp32")
        if precision == "fp32":
            return subject
        if precision == "fp16":
            return OnnxArtifact(subject.path, "fp16")
        if precision == "int8":
            return self.quantize(subject, ctx)
        raise ValueError(f"{PRECISION_PARAM}: unknown precision {precision!r}")

    def quantize(self, artifact: OnnxArtifact, ctx: StageContext) -> OnnxArtifact:
        """Calibrate on ``ctx.calibration_size`` training images and write
        ``<work_dir>/<input stem>.int8.onnx`` (the stem keeps the pipeline's two exports of one
        trial, ``architecture`` and ``candidate``, apart)."""
        import nncf
        import onnx
        from nncf.common.quantization.structs import QuantizationScheme
        from nncf.onnx.quantization.backend_parameters import BackendParameters
        from nncf.quantization.advanced_parameters import (
            AdvancedQuantizationParameters,
            QuantizationParameters,
        )

        started = time.perf_counter()
        model = onnx.load(str(artifact.path))
        opset = _default_opset(model)
        input_name, batch = _graph_input(model)
        count = ctx.calibration_size or self.calibration_size
        items = _calibration_items(ctx.train_loader, count, batch)
        if not items:
            raise ValueError("int8 calibration: the training loader gave no samples")
        is_trt, trt_version = tensorrt_target(ctx.device_info)
        compress = self.compress_weights
        if compress is None:
            compress = not is_trt or (trt_version or (0,)) >= TRT_INT8_WEIGHTS_FROM
        signed = is_trt if self.signed_activations is None else self.signed_activations
        advanced = AdvancedQuantizationParameters(
            activations_quantization_params=QuantizationParameters(
                mode=QuantizationScheme.SYMMETRIC
            ),
            backend_params={BackendParameters.COMPRESS_WEIGHTS: compress},
        )
        dataset = nncf.Dataset(items, lambda item: {input_name: item})
        with quiet_nncf():
            quantized = nncf.quantize(
                model,
                dataset,
                preset=nncf.QuantizationPreset.PERFORMANCE,
                model_type=nncf.ModelType.TRANSFORMER,
                subset_size=len(items),
                fast_bias_correction=self.fast_bias_correction,
                advanced_parameters=advanced,
            )
        resigned = signed_int8_quantizers(quantized) if signed else 0
        if _default_opset(quantized) != opset:
            # Not seen with NNCF 3.4, which copies the opset imports; checked because the
            # Jetson Nano's TensorRT 8.2 parses opset <= 16 only.
            ctx.log.warning(
                "int8: NNCF changed the opset from %s to %s", opset, _default_opset(quantized)
            )
        onnx.checker.check_model(quantized, full_check=True)
        out = Path(ctx.work_dir) / f"{artifact.path.stem}.int8.onnx"
        out.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(quantized, str(out))
        ops = onnx_op_counts(quantized)
        ctx.log.info(
            "int8: %d calibration samples, %d QuantizeLinear / %d DequantizeLinear, %s weights, "
            "%d UINT8 quantizers made INT8, %.1f s -> %s",
            len(items) * batch,
            ops.get("QuantizeLinear", 0),
            ops.get("DequantizeLinear", 0),
            "int8" if compress else "float (Q/DQ)",
            resigned,
            time.perf_counter() - started,
            out,
        )
        return OnnxArtifact(out, "int8")


@hookimpl
def vitopt_register_techniques() -> list[NncfQuantization]:
    return [NncfQuantization()]
