"""onnxruntime backend: runs anywhere (the CPU of a host, a Jetson without TensorRT).

It measures the model *as given*: onnxruntime has no builder precision flags, so ``int8`` means
the graph already carries quantization (QDQ or integer ops, e.g. from NNCF) and ``fp16`` is only
offered where a GPU execution provider can run fp16 kernels. The optimized graph is saved at the
engine path so a repeated build is a real cache hit.
"""

import os
import time

from ..errors import BuildFailed, InvalidModel, OutOfMemory, UnsupportedPrecision
from ..model_check import INT8_OPS
from .base import ELEM_TYPE_NAMES, Backend, BuildInfo, Session

_ORT_TYPES = {
    "tensor(float)": 1,
    "tensor(uint8)": 2,
    "tensor(int8)": 3,
    "tensor(int32)": 6,
    "tensor(int64)": 7,
    "tensor(bool)": 9,
    "tensor(float16)": 10,
    "tensor(double)": 11,
}
_GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
_OOM_MARKERS = ("Failed to allocate memory", "bad_alloc", "out of memory")


def _classify(exc, default):
    text = str(exc)
    if any(marker in text for marker in _OOM_MARKERS):
        return OutOfMemory(text.strip().splitlines()[0][:500])
    return default(text.strip().splitlines()[0][:500] if text.strip() else type(exc).__name__)


class OrtSession(Session):
    def __init__(self, session, feeds):
        self._session = session
        self._feeds = feeds

    def time(self, warmup, iterations, duration_s):
        run = self._session.run
        feeds = self._feeds
        try:
            for _ in range(warmup):
                run(None, feeds)
            samples = []
            clock = time.perf_counter
            deadline = clock() + duration_s if duration_s is not None else None
            while True:
                start = clock()
                run(None, feeds)
                end = clock()
                samples.append((end - start) * 1000.0)
                if deadline is None and len(samples) >= iterations:
                    return samples
                if deadline is not None and end >= deadline:
                    return samples
        except MemoryError as exc:
            raise OutOfMemory("ran out of memory while running: %s" % exc) from exc
        except Exception as exc:
            raise _classify(exc, BuildFailed) from exc

    def infer(self, batch):
        (name,) = self._feeds  # evaluation jobs are for single-input models
        try:
            return self._session.run(None, {name: batch})
        except MemoryError as exc:
            raise OutOfMemory("ran out of memory while running: %s" % exc) from exc
        except Exception as exc:
            raise _classify(exc, BuildFailed) from exc

    def close(self):
        self._session = None


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    evaluates = True

    def __init__(self):
        import onnxruntime

        self._ort = onnxruntime
        available = onnxruntime.get_available_providers()
        self._providers = [p for p in _GPU_PROVIDERS if p in available] + ["CPUExecutionProvider"]
        threads = os.environ.get("JETSON_AGENT_ORT_THREADS")
        self._threads = int(threads) if threads else 0

    @classmethod
    def available(cls):
        import importlib.util

        return importlib.util.find_spec("onnxruntime") is not None

    def version(self):
        return "onnxruntime %s (%s)" % (self._ort.__version__, ",".join(self._providers))

    def precisions(self):
        if any(p in self._providers for p in _GPU_PROVIDERS):
            return ["fp32", "fp16", "int8"]
        return ["fp32", "int8"]

    def _options(self, optimize, save_to):
        options = self._ort.SessionOptions()
        level = self._ort.GraphOptimizationLevel
        options.graph_optimization_level = (
            level.ORT_ENABLE_ALL if optimize else level.ORT_DISABLE_ALL
        )
        if save_to:
            options.optimized_model_filepath = save_to
        if self._threads:
            options.intra_op_num_threads = self._threads
        return options

    def _session(self, path, optimize, save_to):
        try:
            return self._ort.InferenceSession(
                path, self._options(optimize, save_to), providers=self._providers
            )
        except MemoryError as exc:
            raise OutOfMemory("ran out of memory while loading: %s" % exc) from exc
        except Exception as exc:
            raise _classify(exc, InvalidModel) from exc

    def prepare(self, model_path, model, spec, engine_path):
        import numpy

        op_types = model.op_types if model is not None else None
        if spec.precision == "int8" and op_types is not None and not (op_types & INT8_OPS):
            raise UnsupportedPrecision(
                "int8 was asked but the model carries no quantization operators; onnxruntime "
                "runs a model at the precision it is stored in: quantize it first (QDQ, e.g. "
                "with NNCF)"
            )

        start = time.perf_counter()
        session, cache_hit = None, bool(engine_path) and os.path.exists(engine_path)
        if cache_hit:
            try:
                session = self._session(engine_path, optimize=False, save_to=None)
            except (InvalidModel, BuildFailed):
                # A damaged cached engine is the cache's fault, not the model's: rebuild.
                os.remove(engine_path)
                cache_hit = False
        cached = True
        if session is None:
            partial = "%s.partial-%d" % (engine_path, os.getpid()) if engine_path else None
            try:
                session = self._session(model_path, optimize=True, save_to=partial)
            except (InvalidModel, BuildFailed):
                if not (partial and os.path.exists(partial)):
                    raise
                # The model loaded and was optimised; saving the optimised graph failed (it
                # outgrew the job's file size cap): run it without caching the graph.
                os.remove(partial)
                session, cached = self._session(model_path, optimize=True, save_to=None), False
            if cached and partial and os.path.exists(partial):
                os.rename(partial, engine_path)  # atomic: never a half-written engine
        build_time = time.perf_counter() - start
        if model is None:  # no onnx package on this device: read inputs from the session
            from .base import ModelInputs

            model = ModelInputs(
                [
                    (
                        i.name,
                        [d if isinstance(d, int) else None for d in i.shape],
                        _ORT_TYPES.get(i.type, 1),
                    )
                    for i in session.get_inputs()
                ]
            )
        shapes = model.resolved_shapes(spec)
        rng = numpy.random.RandomState(0)
        feeds = {}
        for name, _shape, elem in model.inputs:
            dtype = ELEM_TYPE_NAMES.get(elem, "float32")
            feeds[name] = rng.standard_normal(shapes[name]).astype(dtype)
        command = (
            "onnxruntime.InferenceSession(%s, providers=%s, graph_optimization_level=%s, "
            "intra_op_num_threads=%s); inputs %s"
            % (
                os.path.basename(model_path),
                self._providers,
                "DISABLE_ALL (pre-optimized cached graph)" if cache_hit else "ENABLE_ALL",
                self._threads or "default",
                shapes,
            )
        )
        if not cached:
            command += "; optimised graph not cached: larger than the job's file size cap"
        return OrtSession(session, feeds), BuildInfo(build_time, cache_hit, command)
