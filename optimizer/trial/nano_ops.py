"""The ONNX operators the Jetson Nano's TensorRT 8.2 parser imports, and a check of a file
against them.

Source: ``docs/operators.md`` of onnx/onnx-tensorrt at tag ``release/8.2-GA`` (commit
85e79f629fb5, 2021-11-23): its 129 operators marked supported. TensorRT 8.2.1 ships with
JetPack 4.6.1 and 4.6.2 (JetPack 4.6 itself has TensorRT 8.0.1, whose parser also lacks Einsum,
GatherND and the Scatter ops). What ViT families export that it lacks, and what vitopt does about
each (``docs/families.md``):

- ``LayerNormalization`` (opset 17): exported at opset 16, a layer norm is primitive ops;
- ``Mod``, ``Shape`` arithmetic (Swin's window padding): folded into constants, the exported
  graph having static shapes (:func:`optimizer.trial.export.export_onnx`);
- ``HardSwish`` (opset 14, LeViT): the LeViT family exports ``x * HardSigmoid(x)``;
- ``GridSample``, ``Trilu``, ``Gelu`` (opset 20), ``NonZero``: no built-in family exports them.
"""

from __future__ import annotations

from pathlib import Path

import onnx

TENSORRT_8_2_OPS: frozenset[str] = frozenset(
    {
        "Abs",
        "Acos",
        "Acosh",
        "Add",
        "And",
        "ArgMax",
        "ArgMin",
        "Asin",
        "Asinh",
        "Atan",
        "Atanh",
        "AveragePool",
        "BatchNormalization",
        "Cast",
        "Ceil",
        "Celu",
        "Clip",
        "Concat",
        "Constant",
        "ConstantOfShape",
        "Conv",
        "ConvTranspose",
        "Cos",
        "Cosh",
        "CumSum",
        "DepthToSpace",
        "DequantizeLinear",
        "Div",
        "Dropout",
        "Einsum",
        "Elu",
        "Equal",
        "Erf",
        "Exp",
        "Expand",
        "EyeLike",
        "Flatten",
        "Floor",
        "GRU",
        "Gather",
        "GatherElements",
        "GatherND",
        "Gemm",
        "GlobalAveragePool",
        "GlobalLpPool",
        "GlobalMaxPool",
        "Greater",
        "GreaterOrEqual",
        "HardSigmoid",
        "Identity",
        "If",
        "ImageScaler",
        "InstanceNormalization",
        "IsNaN",
        "LRN",
        "LSTM",
        "LeakyRelu",
        "Less",
        "LessOrEqual",
        "Log",
        "LogSoftmax",
        "Loop",
        "LpNormalization",
        "LpPool",
        "MatMul",
        "Max",
        "MaxPool",
        "Mean",
        "Min",
        "Mul",
        "Neg",
        "NonMaxSuppression",
        "Not",
        "Or",
        "PRelu",
        "Pad",
        "ParametricSoftplus",
        "Pow",
        "QuantizeLinear",
        "RNN",
        "RandomUniform",
        "RandomUniformLike",
        "Range",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceMax",
        "ReduceMean",
        "ReduceMin",
        "ReduceProd",
        "ReduceSum",
        "ReduceSumSquare",
        "Relu",
        "Reshape",
        "Resize",
        "ReverseSequence",
        "Round",
        "ScaledTanh",
        "Scan",
        "Scatter",
        "ScatterElements",
        "ScatterND",
        "Selu",
        "Shape",
        "Sigmoid",
        "Sign",
        "Sin",
        "Sinh",
        "Size",
        "Slice",
        "Softmax",
        "Softplus",
        "Softsign",
        "SpaceToDepth",
        "Split",
        "Sqrt",
        "Squeeze",
        "Sub",
        "Sum",
        "Tan",
        "Tanh",
        "ThresholdedRelu",
        "Tile",
        "TopK",
        "Transpose",
        "Unsqueeze",
        "Upsample",
        "Where",
    }
)


def unsupported_ops(path: Path, supported: frozenset[str] = TENSORRT_8_2_OPS) -> list[str]:
    """The operator types of the ONNX file at ``path`` (default domain) that are not in
    ``supported``, sorted; an op of another domain is listed as ``domain::Op``."""
    graph = onnx.load(str(path), load_external_data=False).graph
    found = {(node.domain or "", node.op_type) for node in graph.node}
    return sorted(
        op if domain in ("", "ai.onnx") else f"{domain}::{op}"
        for domain, op in found
        if domain not in ("", "ai.onnx") or op not in supported
    )
