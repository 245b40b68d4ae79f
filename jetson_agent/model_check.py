"""Validate an uploaded ONNX file and read its inputs before any backend touches it.

Runs inside the job subprocess: a hostile or corrupt file can at worst kill that process. Uses the
``onnx`` package when installed (checker semantics); on a device without it the backend's own
parser (onnxruntime's loader, TensorRT's OnnxParser) is the validator and inputs are read there.
"""

from .backends.base import ModelInputs
from .errors import InvalidModel

# The quantization operators that mark a graph as carrying int8 arithmetic (QDQ or QOperator
# format, or onnxruntime's dynamic quantization).
INT8_OPS = frozenset(
    [
        "QuantizeLinear",
        "DequantizeLinear",
        "QLinearConv",
        "QLinearMatMul",
        "MatMulInteger",
        "ConvInteger",
        "DynamicQuantizeLinear",
    ]
)


def _has_onnx():
    try:
        import onnx  # noqa: F401
    except ImportError:
        return False
    return True


def inspect_model(path):
    """Check the model and return its :class:`ModelInputs`, or None when the ``onnx`` package
    is absent and the backend must validate instead."""
    if not _has_onnx():
        return None
    import onnx

    try:
        model = onnx.load(path)
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises DecodeError, ValidationError, ValueError...
        raise InvalidModel("not a valid ONNX model: %s" % _first_line(exc)) from exc
    inputs = _inputs(model)
    if not inputs:
        raise InvalidModel("the model has no inputs to feed")
    opset = None
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            opset = entry.version
    op_types = frozenset(node.op_type for node in model.graph.node)
    return ModelInputs(inputs, opset, op_types)


def read_inputs(path):
    """The model's inputs alone, parsed without the checker (the agent checks a job's shapes
    against them, and compares a paired job's two models, before queueing it); None without the
    ``onnx`` package or when the file does not parse, which the job itself then reports."""
    if not _has_onnx():
        return None
    import onnx

    try:
        model = onnx.load(path, load_external_data=False)
    except Exception:
        return None
    inputs = _inputs(model)
    # Protobuf parses many byte strings as an empty model: one without inputs is not a model
    # to compare, and the job reports it invalid.
    return ModelInputs(inputs) if inputs else None


def _inputs(model):
    initializers = set(init.name for init in model.graph.initializer)
    inputs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = []
        for dim in tensor.shape.dim:
            dims.append(dim.dim_value if dim.HasField("dim_value") else None)
        inputs.append((value.name, dims, tensor.elem_type))
    return inputs


def _first_line(exc):
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
