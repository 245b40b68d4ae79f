"""The measurement spec a client sends with a job, validated before anything runs."""

import json

from .cache import is_sha256
from .errors import SpecError

PRECISIONS = ("fp32", "fp16", "int8")

MAX_REPEATS = 20
MAX_ITERATIONS = 100000
MAX_DURATION_S = 600.0
MAX_ROUNDS = 1000
MAX_REPEAT_MS = 60000.0
MAX_BATCH = 4096
MAX_DIM = 1 << 20
MAX_TIMEOUT_S = 24 * 3600.0
MAX_WAIT_S = 30.0  # the longest long-poll of GET /v1/jobs/{id}?wait=
# A paired job (a spec with a ``reference``) measures towards a 95 % interval of the speedup
# this wide on each side, relative to the speedup, until ``max_time_s`` of timed rounds.
DEFAULT_RATIO_CI = 0.02
DEFAULT_PAIRED_MAX_TIME_S = 30.0
DEFAULT_PAIRED_ROUNDS = 10
DEFAULT_PAIRED_BLOCK_ITERATIONS = 10
DEFAULT_PAIRED_MIN_REPEAT_MS = 50.0


def _int_field(data, key, default, low, high):
    value = data.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError("spec.%s must be an integer, got %r" % (key, value))
    if value < low or value > high:
        raise SpecError("spec.%s must be between %d and %d, got %d" % (key, low, high, value))
    return value


def _float_field(data, key, default, low, high, zero_ok=False):
    """A number in (low, high], or exactly 0 as well when ``zero_ok`` (0 turns a feature off)."""
    value = data.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError("spec.%s must be a number, got %r" % (key, value))
    if zero_ok and value == 0:
        return 0.0
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
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0 or dim > MAX_DIM:
            raise SpecError("%s must hold integers from 1 to %d, got %r" % (where, MAX_DIM, value))
    return list(value)


def _given(fields):
    """The fields that are set: null is "not given" (a job's spec is answered with nulls for
    what it left out)."""
    return dict((key, value) for key, value in fields.items() if value is not None)


def _reference(value):
    """``{"model_sha256": ..., "precision": ...}``: a model the agent holds, timed beside the
    candidate (precision fp32 unless given)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise SpecError("spec.reference must be an object with model_sha256 and precision")
    value = _given(value)
    unknown = sorted(set(value) - set(("model_sha256", "precision")))
    if unknown:
        raise SpecError("unknown spec.reference field(s) %s" % ", ".join(unknown))
    sha = value.get("model_sha256")
    if not isinstance(sha, str) or not is_sha256(sha):
        raise SpecError("spec.reference.model_sha256 must be a lowercase sha256 hex digest")
    precision = value.get("precision", "fp32")
    if precision not in PRECISIONS:
        raise SpecError(
            "spec.reference.precision must be one of %s, got %r"
            % (", ".join(PRECISIONS), precision)
        )
    return {"model_sha256": sha, "precision": precision}


class MeasureSpec(object):
    """How to measure: precision, input shapes, warm-up, iterations or duration, repeats.

    With a ``reference`` the job is *paired*: candidate and reference are timed in alternating
    blocks (rounds) in one process, and the result carries their speedup with an interval.
    There ``repeats`` is the least number of rounds, ``iterations`` the least iterations of a
    block, ``min_repeat_ms`` the least time of a block (TVM's ``min_repeat_ms``), and rounds go
    on until the interval's half-width is within ``ratio_ci`` of the speedup or ``max_time_s``
    of rounds have passed (``ratio_ci: 0`` stops after ``repeats`` rounds). Without one,
    ``min_repeat_ms`` lengthens each repeat in iteration mode and the other two are unused."""

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
        "reference",
        "min_repeat_ms",
        "ratio_ci",
        "max_time_s",
    )

    def __init__(self, **fields):
        for key in self.FIELDS:
            setattr(self, key, fields[key])

    @classmethod
    def from_dict(cls, data):
        if not isinstance(data, dict):
            raise SpecError("spec must be a JSON object, got %s" % type(data).__name__)
        data = _given(data)
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
        input_shapes = data.get("input_shapes", {})
        if not isinstance(input_shapes, dict):
            raise SpecError("spec.input_shapes must map input names to shapes")
        input_shapes = dict(
            (str(name), _shape(shape, "spec.input_shapes[%s]" % name))
            for name, shape in input_shapes.items()
        )
        reference = _reference(data.get("reference"))
        paired = reference is not None
        iterations = _int_field(data, "iterations", None, 1, MAX_ITERATIONS)
        duration_s = _float_field(data, "duration_s", None, 0.0, MAX_DURATION_S)
        if iterations is not None and duration_s is not None:
            raise SpecError("give spec.iterations or spec.duration_s, not both")
        if paired and duration_s is not None:
            raise SpecError("a paired job (spec.reference) times blocks: give iterations")
        if iterations is None and duration_s is None:
            iterations = DEFAULT_PAIRED_BLOCK_ITERATIONS if paired else 100
        if not paired:
            for key in ("ratio_ci", "max_time_s"):
                if data.get(key) is not None:
                    raise SpecError("spec.%s applies to paired jobs only (spec.reference)" % key)
        return cls(
            reference=reference,
            min_repeat_ms=_float_field(
                data,
                "min_repeat_ms",
                DEFAULT_PAIRED_MIN_REPEAT_MS if paired else 0.0,
                0.0,
                MAX_REPEAT_MS,
                zero_ok=True,
            ),
            ratio_ci=_float_field(
                data, "ratio_ci", DEFAULT_RATIO_CI if paired else None, 0.0, 1.0, zero_ok=True
            ),
            max_time_s=_float_field(
                data,
                "max_time_s",
                DEFAULT_PAIRED_MAX_TIME_S if paired else None,
                0.0,
                MAX_DURATION_S,
            ),
            precision=precision,
            batch_size=_int_field(data, "batch_size", 1, 1, MAX_BATCH),
            input_shape=input_shape,
            input_shapes=input_shapes,
            warmup=_int_field(data, "warmup", 10, 0, MAX_ITERATIONS),
            iterations=iterations,
            duration_s=duration_s,
            repeats=_int_field(
                data,
                "repeats",
                DEFAULT_PAIRED_ROUNDS if paired else 3,
                1,
                MAX_ROUNDS if paired else MAX_REPEATS,
            ),
            cv_threshold=_float_field(data, "cv_threshold", 0.05, 0.0, 10.0),
            build_timeout_s=_float_field(data, "build_timeout_s", None, 0.0, MAX_TIMEOUT_S),
            run_timeout_s=_float_field(data, "run_timeout_s", None, 0.0, MAX_TIMEOUT_S),
            use_cache=_bool_field(data, "use_cache", True),
        )

    @property
    def paired(self):
        return self.reference is not None

    def for_reference(self):
        """The spec the reference model is built with: this one at the reference's precision."""
        data = self.to_dict()
        data.update(precision=self.reference["precision"], reference=None)
        return MeasureSpec(**data)

    def to_dict(self):
        return dict((key, getattr(self, key)) for key in self.FIELDS)

    def cache_key_part(self):
        """The fields that change what is measured (timeouts and cache use do not)."""
        data = self.to_dict()
        for key in ("build_timeout_s", "run_timeout_s", "use_cache"):
            data.pop(key)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))
