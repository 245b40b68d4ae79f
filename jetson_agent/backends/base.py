"""The one small interface every measuring backend implements.

A job runs in its own subprocess (see ``jetson_agent.job``), which calls, in order:
``Backend()`` → ``prepare(model_path, model, spec, engine_path)`` → ``Session.time(...)`` once per
repeat → ``Session.close()``. ``prepare`` is the *build* phase (engine build or session creation,
under the build timeout); ``time`` is the *run* phase (under the run timeout). Backends raise the
typed errors of ``jetson_agent.errors``; they never print to stdout, which carries the phase
protocol between the job process and the agent.
"""

# ONNX TensorProto element types by number, as numpy dtype names: for messages, and for the
# inputs a backend feeds (the onnx package is optional here).
ELEM_TYPE_NAMES = {
    1: "float32",
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    9: "bool",
    10: "float16",
    11: "float64",
}


class ModelInputs(object):
    """What the agent learned about the model's inputs before building it."""

    def __init__(self, inputs, opset=None, op_types=None):
        # inputs: list of (name, shape, onnx elem_type); a dim is an int or None when dynamic.
        self.inputs = inputs  # type: List[Tuple[str, List[Optional[int]], int]]
        self.opset = opset  # type: Optional[int]
        # The graph's operator types, when the agent could read them (the onnx package).
        self.op_types = op_types  # type: Optional[frozenset]

    def signature(self, spec):
        # type: (...) -> List[Tuple[List[int], int]]
        """What a model must be fed for a spec, in input order: (shape, elem_type) pairs. Two
        models can be timed side by side only when their signatures are equal."""
        shapes = self.resolved_shapes(spec)
        return [(shapes[name], elem) for name, _shape, elem in self.inputs]

    def describe(self, spec):
        # type: (...) -> str
        """The inputs fed for a spec, for messages: ``input 1x3x224x224 float32, ...``."""
        shapes = self.resolved_shapes(spec)
        return ", ".join(
            "%s %s %s"
            % (
                name,
                "x".join(str(d) for d in shapes[name]),
                ELEM_TYPE_NAMES.get(elem, "type %s" % elem),
            )
            for name, _shape, elem in self.inputs
        )

    def feed_problem(self, spec):
        # type: (...) -> Optional[str]
        """Why the agent cannot feed this model as the spec asks, or None: shapes naming no
        input, of another rank than the input's or disagreeing with its fixed dims, or an
        element type the agent has no numpy type for. A mistake of the client, not of the
        model, so the agent refuses the job (422 input_mismatch) instead of failing its build."""
        names = [name for name, _shape, _elem in self.inputs]
        unknown = sorted(set(spec.input_shapes) - set(names))
        if unknown:
            return "spec.input_shapes names %s, but the model's inputs are %s" % (
                ", ".join(unknown),
                ", ".join(names),
            )
        shapes = self.resolved_shapes(spec)
        for name, shape, elem in self.inputs:
            if elem not in ELEM_TYPE_NAMES:
                return "input %s has element type %s, which the agent cannot feed (it feeds %s)" % (
                    name,
                    elem,
                    ", ".join(sorted(set(ELEM_TYPE_NAMES.values()))),
                )
            given = shapes[name]
            clash = len(given) != len(shape) or any(
                dim is not None and dim > 0 and dim != fed for dim, fed in zip(shape, given)
            )
            if shape and clash:
                return "the spec feeds input %s a %s tensor, but the model takes %s" % (
                    name,
                    "x".join(str(d) for d in given),
                    "x".join("?" if dim is None or dim <= 0 else str(dim) for dim in shape),
                )
        return None

    def resolved_shapes(self, spec):
        # type: (...) -> Dict[str, List[int]]
        """Concrete input shapes for a spec: its explicit shapes, else the model's own with
        dynamic dims set to the batch size (first dim) or 1."""
        shapes = {}
        for index, (name, shape, _elem) in enumerate(self.inputs):
            explicit = spec.input_shapes.get(name)
            if explicit is None and index == 0 and spec.input_shape is not None:
                explicit = spec.input_shape
            if explicit is not None:
                shapes[name] = list(explicit)
                continue
            resolved = []
            for axis, dim in enumerate(shape):
                if dim is None or dim <= 0:
                    resolved.append(spec.batch_size if axis == 0 else 1)
                else:
                    resolved.append(dim)
            if resolved and spec.batch_size != 1 and shape and shape[0] is None:
                resolved[0] = spec.batch_size
            shapes[name] = resolved
        return shapes


class BuildInfo(object):
    """How the model was made ready: time spent, whether a cached engine was reused, and the
    exact command or settings so a user can reproduce the measurement by hand."""

    def __init__(self, build_time_s, engine_cache_hit, command):
        self.build_time_s = build_time_s  # type: float
        self.engine_cache_hit = engine_cache_hit  # type: bool
        self.command = command  # type: str


class Session(object):
    """A model made ready to run on the device."""

    # True when every ``time`` call starts from cold (a new process, as trtexec's): a paired
    # job then gives each block the spec's warm-up.
    cold_start = False

    def time(self, warmup, iterations, duration_s):
        # type: (int, Optional[int], Optional[float]) -> List[float]
        """Run ``warmup`` untimed iterations, then time either ``iterations`` runs or as many as
        fit in ``duration_s`` seconds. Returns one latency per timed iteration, in
        milliseconds, in the order they ran."""
        raise NotImplementedError

    def infer(self, batch):
        # type: (Any) -> List[Any]
        """Run the model once with ``batch`` (a numpy array of the shape the session was built
        for) as its one input, and return its outputs as numpy arrays in the model's output
        order: what an evaluation job records. Only backends with ``Backend.evaluates`` have
        it."""
        raise NotImplementedError

    def close(self):
        # type: () -> None
        """Release device memory; called once, even after a failed ``time``."""


class Backend(object):
    """A way of running ONNX models on this device (onnxruntime, trtexec, TensorRT)."""

    name = ""  # type: str
    # Whether its sessions run inputs the client sends and return the outputs (``infer``):
    # the agent accepts evaluation jobs only then, and says so in ``GET /v1/info``.
    evaluates = False

    @classmethod
    def available(cls):
        # type: () -> bool
        """Whether this backend's runtime is installed here (cheap; used by ``--backend auto``)."""
        raise NotImplementedError

    def version(self):
        # type: () -> str
        """The runtime's version; part of every cache key."""
        raise NotImplementedError

    def precisions(self):
        # type: () -> List[str]
        """Precisions this backend really runs on this device, a subset of fp32, fp16, int8.
        Never claims one the hardware lacks (fp16 on a CPU, int8 on a Jetson Nano)."""
        raise NotImplementedError

    def prepare(self, model_path, model, spec, engine_path):
        # type: (str, ModelInputs, object, str) -> Tuple[Session, BuildInfo]
        """Build phase. ``engine_path`` is where a built engine may be saved and, when it already
        exists, loaded from (the agent keys it by model, spec, backend version and device)."""
        raise NotImplementedError
