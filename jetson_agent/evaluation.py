"""Evaluation jobs: the model run on inputs the client sends, its outputs sent back, so that a
campaign scores the engine the device really runs (a TensorRT fp16 engine is not the ONNX file
onnxruntime runs on the host).

The client sends a batch of inputs as one ``.npy`` file (:mod:`jetson_agent.npy`): rows of the
model's single input, each fed with a batch of 1. Labels never travel; the client scores the
outputs. The model is built exactly as a timing job of the same precision and input shape would
build it, so the engine (and its cache entry) is the one that was timed.

Standard library only and valid on Python 3.6 (JetPack 4.6).
"""

from .backends.base import ELEM_TYPE_NAMES
from .errors import SpecError
from .spec import MeasureSpec

# What an evaluation's spec may set; everything else is the timing spec's default.
FIELDS = ("precision", "build_timeout_s", "run_timeout_s")


def evaluation_spec(data, inputs, model=None):
    # type: (object, object, object) -> MeasureSpec
    """The build spec of an evaluation asked with ``data`` (its JSON spec) on ``inputs`` (an
    :class:`~jetson_agent.npy.Npy`) for ``model`` (its ``ModelInputs``, None when unknown): the
    precision and timeouts it gives, and an input shape only where the model's own (batch 1)
    is not one row's, so that the engine is the one a timing job of the model built (the same
    cache key). :class:`SpecError` for a bad spec."""
    if not isinstance(data, dict):
        raise SpecError("spec must be a JSON object, got %s" % type(data).__name__)
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise SpecError(
            "unknown evaluation spec field(s) %s; known: %s"
            % (", ".join(unknown), ", ".join(FIELDS))
        )
    row = [1, *inputs.shape[1:]]
    spec = MeasureSpec.from_dict(dict(data))
    if model is not None and model.inputs:
        name = model.inputs[0][0]
        if model.resolved_shapes(spec).get(name) == row:
            return spec
    return MeasureSpec.from_dict(dict(data, input_shape=row))


def inputs_problem(model, inputs):
    # type: (object, object) -> Optional[str]
    """Why ``inputs`` (an ``Npy``) cannot be fed to ``model`` (its ``ModelInputs``) row by row,
    or None: one input only, its element type, its rank (a leading row axis, then one input's
    dims) and its fixed dims; a batch axis of 1 or dynamic."""
    if len(inputs.shape) < 1 or inputs.shape[0] < 1:
        return "the inputs hold no row: their shape must be (rows, ...) with at least one row"
    if len(model.inputs) != 1:
        return "an evaluation feeds one input; the model has %d (%s)" % (
            len(model.inputs),
            ", ".join(name for name, _shape, _elem in model.inputs),
        )
    name, shape, elem = model.inputs[0]
    wanted = ELEM_TYPE_NAMES.get(elem)
    if wanted != inputs.dtype:
        return "input %s takes %s; the inputs are %s" % (name, wanted, inputs.dtype)
    row = list(inputs.shape[1:])
    given = "x".join(str(d) for d in inputs.shape)
    model_shape = "x".join("?" if d is None or d <= 0 else str(d) for d in shape)
    if len(row) + 1 != len(shape):
        return "input %s is %s; the inputs are %s, which is not rows of it" % (
            name,
            model_shape,
            given,
        )
    batch = shape[0]
    if batch is not None and batch > 1:
        return "input %s has a fixed batch of %d; rows are fed one at a time" % (name, batch)
    for fixed, fed in zip(shape[1:], row):
        if fixed is not None and fixed > 0 and fixed != fed:
            return "input %s is %s; rows of the inputs are %s" % (
                name,
                model_shape,
                "x".join(str(d) for d in row),
            )
    return None
