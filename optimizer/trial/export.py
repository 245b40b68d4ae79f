"""Export a torch model to the ONNX file the device will run.

Opset 16 by default, below LayerNormalization (opset 17), which the Nano's TensorRT 8.2
(JetPack 4.6.1/4.6.2) lacks: a ViT's layer norms are exported as primitive ops. (onnx-tensorrt's
8.2 operator table is headed "up to Opset 13"; :mod:`optimizer.trial.nano_ops` lists its
operators and checks a file against them.) The TorchScript exporter (``dynamo=False``) exports a
pruned timm ViT in about a second, ten times faster than the dynamo exporter, and always writes
one self-contained file.

The graph has static shapes (a batch of 1 at the model's input size), so every shape
computation in it is folded into constants before the file is written (onnxruntime's basic,
standard-ops-only graph rewrites: constant folding, redundant-node removal). What the tracer
records of Python-level shape arithmetic (``Shape``, ``Gather``, ``Mod``: Swin's window
padding) goes; TensorRT 8.2 lacks ``Mod`` (:mod:`optimizer.trial.nano_ops`), and every builder
parses a smaller graph. A model's family may first swap modules for ones that export as ops the
Nano parses (:meth:`~optimizer.plugin_api.ModelFamily.prepare_export`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch

from optimizer.plugin_api.family import ModelFamily

NANO_MAX_OPSET = 16


def export_onnx(
    model: torch.nn.Module,
    example: torch.Tensor,
    path: Path,
    *,
    opset: int = NANO_MAX_OPSET,
    input_name: str = "input",
    output_name: str = "logits",
    family: ModelFamily | None = None,
) -> Path:
    """Write ``model`` (in eval mode, on the CPU; made ready for export by its ``family``) to
    ``path``, its shape computations folded, and check the result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    if family is not None:
        family.prepare_export(model)
    # The tracer warns about every Python-level branch of timm's code ("Converting a tensor to a
    # Python boolean..."): true of any trace, nothing a user can act on, and printed per export.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[input_name],
            output_names=[output_name],
            opset_version=opset,
            dynamo=False,
        )
    fold_shapes(path)
    onnx.checker.check_model(onnx.load(str(path)))
    return path


def fold_shapes(path: Path) -> None:
    """Rewrite the ONNX file at ``path`` with onnxruntime's basic graph optimizations (constant
    folding of the static shapes, redundant nodes removed, a norm folded into the conv before
    it): standard ONNX ops only, the same outputs. The operator sets onnxruntime declares but
    the graph does not use are dropped."""
    import onnxruntime as ort

    folded = path.with_name(path.name + ".folded")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(folded)
    # MatMul+Add → Gemm would hide the weight MatMuls from the int8 quantizers, which target
    # MatMul (a quantized Gemm is a com.microsoft op); every other basic rewrite only removes.
    ort.InferenceSession(
        str(path),
        options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=["MatMulAddFusion"],
    )
    model = onnx.load(str(folded))
    used = {node.domain or "" for node in model.graph.node}
    kept = [o for o in model.opset_import if (o.domain or "") in used | {""}]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    onnx.save(model, str(path))
    folded.unlink()
