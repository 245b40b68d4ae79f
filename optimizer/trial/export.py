"""Export a torch model to the ONNX file the device will run.

Opset 16 by default: TensorRT 8.2 on a Jetson Nano (JetPack 4.6) parses up to opset 16 and has no
LayerNormalization op (opset 17, TensorRT >= 8.6), so a ViT's layer norms are exported as
primitive ops. The TorchScript exporter (``dynamo=False``) exports a pruned timm ViT in about a
second, ten times faster than the dynamo exporter, and always writes one self-contained file.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch

NANO_MAX_OPSET = 16


def export_onnx(
    model: torch.nn.Module,
    example: torch.Tensor,
    path: Path,
    *,
    opset: int = NANO_MAX_OPSET,
    input_name: str = "input",
    output_name: str = "logits",
) -> Path:
    """Write ``model`` (in eval mode, on the CPU) to ``path`` and check the result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
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
    onnx.checker.check_model(onnx.load(str(path)))
    return path
