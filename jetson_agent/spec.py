"""The measurement spec a client sends with a job, validated before anything runs."""

import json

from .errors import SpecError

PRECISIONS = ("fp32", "fp16", "int8")

MAX_REPEATS = 20
MAX_ITERATIONS = 100000
MAX_DURATION_S = 600.0


def _int_field(data, key, default, low, high):
    value = data.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError("spec.%s must be an integer, got %r" % (key, value))
    if value < low or value > high:
        raise SpecError("spec.%s must be between %d and %d, got %d" % (key, low, high, value))
    return value


def _float_field(data, key, default, low, high):
    value = data.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError("spec.%s must be a number, got %r" % (key, value))
    if not (low < value <= high):
        raise SpecError("spec.%s must be > %g and <= %g, got %r" % (key, low, high, value))
    return float(value)


def _bool_field(data, key, default):
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise SpecError("spec.%s must be true or false, got %r" % (key, value))
    return value


def _shape(value, where):
    if not isinstance(value, list) or not value:
        raise SpecError("%s must be a non-empty list of positive integers, got %r" % (where, value))
    for dim in value:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0 or dim > 1 << 20:
            raise SpecError("%s must hold positive integers, got %r" % (where, value))
    return list(value)


class MeasureSpec(object):
    """How to measure: precision, input shapes, warm-up, iterations or duration, repeats."""

    FIELDS = (
        "precision",
        "batch_size",
        "input_shape",
        "input_shapes",
        "warmup",
        "iterations",
        "duration_s",
        "repeats",
        "cv_threshold",
        "build_timeout_s",
        "run_timeout_s",
        "use_cache",
    )

    def __init__(self, **fields):
        for key in self.FIELDS:
            setattr(self, key, fields[key])

    @classmethod
    def from_dict(cls, data):
        if not isinstance(data, dict):
            raise SpecError("spec must be a JSON object, got %s" % type(data).__name__)
        unknown = sorted(set(data) - set(cls.FIELDS))
        if unknown:
            raise SpecError(
                "unknown spec field(s) %s; known: %s" % (", ".join(unknown), ", ".join(cls.FIELDS))
            )
        precision = data.get("precision", "fp32")
        if precision not in PRECISIONS:
            raise SpecError(
                "spec.precision must be one of %s, got %r" % (", ".join(PRECISIONS), precision)
            )
        input_shape = data.get("input_shape")
        if input_shape is not None:
            input_shape = _shape(input_shape, "spec.input_shape")
        input_shapes = data.get("input_shapes") or {}
        if not isinstance(input_shapes, dict):
            raise SpecError("spec.input_shapes must map input names to shapes")
        input_shapes = dict(
            (str(name), _shape(shape, "spec.input_shapes[%s]" % name))
            for name, shape in input_shapes.items()
        )
        iterations = _int_field(data, "iterations", None, 1, MAX_ITERATIONS)
        duration_s = _float_field(data, "duration_s", None, 0.0, MAX_DURATION_S)
        if iterations is not None and duration_s is not None:
            raise SpecError("give spec.iterations or spec.duration_s, not both")
        if iterations is None and duration_s is None:
            iterations = 100
        return cls(
            precision=precision,
            batch_size=_int_field(data, "batch_size", 1, 1, 4096),
            input_shape=input_shape,
            input_shapes=input_shapes,
            warmup=_int_field(data, "warmup", 10, 0, MAX_ITERATIONS),
            iterations=iterations,
            duration_s=duration_s,
            repeats=_int_field(data, "repeats", 3, 1, MAX_REPEATS),
            cv_threshold=_float_field(data, "cv_threshold", 0.05, 0.0, 10.0),
            build_timeout_s=_float_field(data, "build_timeout_s", None, 0.0, 24 * 3600.0),
            run_timeout_s=_float_field(data, "run_timeout_s", None, 0.0, 24 * 3600.0),
            use_cache=_bool_field(data, "use_cache", True),
        )

    def to_dict(self):
        return dict((key, getattr(self, key)) for key in self.FIELDS)

    def cache_key_part(self):
        """The fields that change what is measured (timeouts and cache use do not)."""
        data = self.to_dict()
        for key in ("build_timeout_s", "run_timeout_s", "use_cache"):
            data.pop(key)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))
