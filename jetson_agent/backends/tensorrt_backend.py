"""The ``tensorrt`` backend: the TensorRT Python API, in the job process.

Version differences handled here (each in a small pure function, tested without TensorRT):

* network creation: TensorRT 8 needs ``1 << EXPLICIT_BATCH`` for ONNX models; TensorRT 10
  networks are always explicit-batch and the flag is deprecated, so ``0`` is passed
  (:func:`network_flags`).
* workspace: ``config.max_workspace_size`` up to 8.3, ``config.set_memory_pool_limit(
  MemoryPoolType.WORKSPACE, n)`` from 8.4 (``max_workspace_size`` is gone in 10)
  (:func:`workspace_api`, :func:`apply_workspace`).
* execution: binding indices and ``execute_async_v2(bindings, stream)`` up to 8.4; tensor names,
  ``set_input_shape``/``set_tensor_address`` and ``execute_async_v3(stream)`` from 8.5 (the
  binding API is deprecated in 8.5 and removed in 10) (:func:`execute_api`).

Device memory, streams and events come from cuda-python (``cuda.bindings.runtime`` or the older
``cuda.cudart``), else pycuda, else the CUDA runtime library itself through ctypes (always
present where TensorRT runs: TensorRT needs it), else :class:`InfraError`. JetPack images ship
none of the Python packages by default, which is why the ctypes path exists.

Timing: each timed iteration is bracketed by two CUDA events on the execution stream and
synchronised, so each latency is the GPU time of one inference (the same quantity trtexec
reports as "GPU Compute Time"); warm-up iterations run and synchronise untimed.

INT8: no calibration data exists on the device; as trtexec does, placeholder dynamic ranges are
set on every tensor so TensorRT can pick INT8 kernels (FP16 is enabled alongside where the GPU has
it, as trtexec's ``--best``). Latency does not depend on the ranges; accuracy is not measured here.
"""

import contextlib
import ctypes
import ctypes.util
import glob
import importlib
import os
import time

from ..errors import BuildFailed, InfraError, InvalidModel, OutOfMemory, UnsupportedPrecision
from .base import Backend, BuildInfo, Session
from .trt_common import (
    classify_failure,
    detect_compute_capability,
    model_has_dynamic_inputs,
    precisions_for_compute_capability,
    resolve_shapes,
    shape_spec,
    version_tuple,
    warn,
)

ENV_WORKSPACE_MIB = "JETSON_AGENT_TRT_WORKSPACE_MIB"
DEFAULT_WORKSPACE_MIB = 1024

# Bytes per element by TensorRT DataType name, for bindings (no numpy on the device needed).
_DTYPE_SIZES = {
    "FLOAT": 4,
    "HALF": 2,
    "BF16": 2,
    "INT8": 1,
    "UINT8": 1,
    "FP8": 1,
    "BOOL": 1,
    "INT32": 4,
    "INT64": 8,
    "INT4": 1,
    "FP4": 1,
}
_FLOAT_DTYPES = ("FLOAT", "HALF", "BF16")
# TensorRT data types an evaluation feeds and reads, as numpy dtypes.
_NUMPY_DTYPES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
}


# --------------------------------------------------------------------------------------------
# Version-dependent choices (pure)


def execute_api(version):
    """``"v3"`` (tensor names, ``execute_async_v3``) from TensorRT 8.5, else ``"v2"``."""
    return "v3" if tuple(version) >= (8, 5) else "v2"


def workspace_api(version):
    """``"memory_pool_limit"`` from TensorRT 8.4, else ``"max_workspace_size"``."""
    return "memory_pool_limit" if tuple(version) >= (8, 4) else "max_workspace_size"


def network_flags(version, explicit_batch_bit):
    """``create_network`` flags: the EXPLICIT_BATCH bit before TensorRT 10, nothing after."""
    if tuple(version) >= (10, 0):
        return 0
    return 1 << int(explicit_batch_bit)


def apply_workspace(config, trt, version, workspace_bytes):
    if workspace_api(version) == "memory_pool_limit":
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    else:
        config.max_workspace_size = int(workspace_bytes)


def dtype_name(dtype):
    name = getattr(dtype, "name", None) or str(dtype)
    return name.split(".")[-1].upper()


def dtype_itemsize(dtype):
    size = getattr(dtype, "itemsize", None)
    if isinstance(size, int) and size > 0:
        return size
    name = dtype_name(dtype)
    if name not in _DTYPE_SIZES:
        raise InfraError("unknown TensorRT data type %r" % (dtype,))
    return _DTYPE_SIZES[name]


def volume(shape):
    total = 1
    for dim in shape:
        dim = int(dim)
        if dim < 0:
            raise InfraError("tensor shape %s is still dynamic" % (list(shape),))
        total *= dim
    return total


def _numpy_dtype(name):
    if name not in _NUMPY_DTYPES:
        raise InfraError("an evaluation cannot feed or read TensorRT type %s" % name)
    return _NUMPY_DTYPES[name]


def fill_byte(dtype):
    """Input fill: 0x3c bytes give small finite floats (fp32 ~0.0115, fp16 ~1.06); integer
    inputs (indices, masks) get zeros so they stay in range."""
    return 0x3C if dtype_name(dtype) in _FLOAT_DTYPES else 0


def parser_messages(parser):
    messages = []
    for index in range(int(getattr(parser, "num_errors", 0))):
        try:
            messages.append(str(parser.get_error(index)).strip())
        except Exception as exc:  # pragma: no cover - defensive
            messages.append("error %d (%s)" % (index, exc))
    return messages


def invalid_model_from_parser(messages):
    text = " | ".join(messages[:5]) or "no error recorded"
    return InvalidModel("TensorRT's ONNX parser refused the model: %s" % text)


def build_failure(log_lines, exc=None):
    """Typed error for ``build_serialized_network`` returning ``None`` (or raising): the
    logger's lines decide; a refusal naming no known cause is the builder refusing this network.
    """
    lines = list(log_lines)
    if exc is not None:
        lines.append("[E] %s: %s" % (type(exc).__name__, exc))
    return classify_failure(
        "\n".join(lines), None, phase="build", what="TensorRT builder", unknown=BuildFailed
    )


# --------------------------------------------------------------------------------------------
# CUDA runtime access: cuda-python, pycuda or libcudart through ctypes

CUDA_ERROR_MEMORY_ALLOCATION = 2


class CudaError(Exception):
    def __init__(self, call, code, text=""):
        Exception.__init__(self, "%s failed with CUDA error %s %s" % (call, code, text))
        self.code = code


def _raise_for(call, code, text=""):
    code = int(code)
    if code == CUDA_ERROR_MEMORY_ALLOCATION:
        raise OutOfMemory("%s: out of device memory (CUDA error 2)" % call)
    raise CudaError(call, code, text)


class _CudaPython(object):
    name = "cuda-python"

    def __init__(self, cudart):
        self.rt = cudart

    def _call(self, name, *args):
        result = getattr(self.rt, name)(*args)
        if not isinstance(result, tuple):
            result = (result,)
        err = result[0]
        if int(err) != 0:
            _raise_for(name, int(err), str(err))
        rest = result[1:]
        return rest[0] if len(rest) == 1 else rest

    def malloc(self, nbytes):
        return int(self._call("cudaMalloc", int(nbytes)))

    def free(self, ptr):
        self._call("cudaFree", ptr)

    def memset(self, ptr, value, nbytes):
        self._call("cudaMemset", ptr, int(value), int(nbytes))

    def to_device(self, ptr, array):
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call("cudaMemcpy", ptr, array.ctypes.data, array.nbytes, kind)

    def to_host(self, array, ptr):
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call("cudaMemcpy", array.ctypes.data, ptr, array.nbytes, kind)

    def stream_create(self):
        return self._call("cudaStreamCreate")

    def stream_handle(self, stream):
        return int(stream)

    def stream_sync(self, stream):
        self._call("cudaStreamSynchronize", stream)

    def stream_destroy(self, stream):
        self._call("cudaStreamDestroy", stream)

    def event_create(self):
        return self._call("cudaEventCreate")

    def event_record(self, event, stream):
        self._call("cudaEventRecord", event, stream)

    def event_sync(self, event):
        self._call("cudaEventSynchronize", event)

    def elapsed_ms(self, start, end):
        return float(self._call("cudaEventElapsedTime", start, end))

    def event_destroy(self, event):
        self._call("cudaEventDestroy", event)

    def close(self):
        pass


class _PyCuda(object):
    name = "pycuda"

    def __init__(self, driver):
        self.drv = driver
        driver.init()
        # TensorRT uses the CUDA runtime, which uses the device's primary context: share it.
        self.context = driver.Device(0).retain_primary_context()
        self.context.push()
        self.allocations = {}

    def _guard(self, call, func, *args):
        try:
            return func(*args)
        except self.drv.MemoryError as exc:
            raise OutOfMemory("%s: out of device memory (%s)" % (call, exc)) from exc
        except self.drv.Error as exc:
            raise CudaError(call, -1, str(exc)) from exc

    def malloc(self, nbytes):
        allocation = self._guard("mem_alloc", self.drv.mem_alloc, int(nbytes))
        ptr = int(allocation)
        self.allocations[ptr] = allocation
        return ptr

    def free(self, ptr):
        allocation = self.allocations.pop(ptr, None)
        if allocation is not None:
            allocation.free()

    def memset(self, ptr, value, nbytes):
        self._guard("memset_d8", self.drv.memset_d8, ptr, int(value), int(nbytes))

    def to_device(self, ptr, array):
        self._guard("memcpy_htod", self.drv.memcpy_htod, ptr, array)

    def to_host(self, array, ptr):
        self._guard("memcpy_dtoh", self.drv.memcpy_dtoh, array, ptr)

    def stream_create(self):
        return self.drv.Stream()

    def stream_handle(self, stream):
        return int(stream.handle)

    def stream_sync(self, stream):
        self._guard("Stream.synchronize", stream.synchronize)

    def stream_destroy(self, stream):
        pass

    def event_create(self):
        return self.drv.Event()

    def event_record(self, event, stream):
        event.record(stream)

    def event_sync(self, event):
        self._guard("Event.synchronize", event.synchronize)

    def elapsed_ms(self, start, end):
        return float(start.time_till(end))

    def event_destroy(self, event):
        pass

    def close(self):
        for ptr in list(self.allocations):
            self.free(ptr)
        if self.context is not None:
            with contextlib.suppress(Exception):
                self.context.pop()
            self.context = None


class _CudaCtypes(object):
    """The handful of CUDA runtime calls needed, straight from libcudart."""

    name = "libcudart (ctypes)"

    def __init__(self, lib):
        self.lib = lib
        vp = ctypes.c_void_p
        lib.cudaMalloc.argtypes = [ctypes.POINTER(vp), ctypes.c_size_t]
        lib.cudaFree.argtypes = [vp]
        lib.cudaMemset.argtypes = [vp, ctypes.c_int, ctypes.c_size_t]
        lib.cudaMemcpy.argtypes = [vp, vp, ctypes.c_size_t, ctypes.c_int]
        lib.cudaStreamCreate.argtypes = [ctypes.POINTER(vp)]
        lib.cudaStreamSynchronize.argtypes = [vp]
        lib.cudaStreamDestroy.argtypes = [vp]
        lib.cudaEventCreate.argtypes = [ctypes.POINTER(vp)]
        lib.cudaEventRecord.argtypes = [vp, vp]
        lib.cudaEventSynchronize.argtypes = [vp]
        lib.cudaEventElapsedTime.argtypes = [ctypes.POINTER(ctypes.c_float), vp, vp]
        lib.cudaEventDestroy.argtypes = [vp]
        lib.cudaGetErrorString.argtypes = [ctypes.c_int]
        lib.cudaGetErrorString.restype = ctypes.c_char_p

    def _check(self, call, code):
        if code != 0:
            text = self.lib.cudaGetErrorString(code)
            _raise_for(call, code, text.decode("ascii", "replace") if text else "")

    def _out_handle(self, call):
        handle = ctypes.c_void_p()
        self._check(call, getattr(self.lib, call)(ctypes.byref(handle)))
        return handle

    def malloc(self, nbytes):
        ptr = ctypes.c_void_p()
        self._check("cudaMalloc", self.lib.cudaMalloc(ctypes.byref(ptr), int(nbytes)))
        return int(ptr.value or 0)

    def free(self, ptr):
        self._check("cudaFree", self.lib.cudaFree(ctypes.c_void_p(ptr)))

    def memset(self, ptr, value, nbytes):
        self._check(
            "cudaMemset", self.lib.cudaMemset(ctypes.c_void_p(ptr), int(value), int(nbytes))
        )

    def _memcpy(self, dst, src, nbytes, kind):
        self._check("cudaMemcpy", self.lib.cudaMemcpy(dst, src, nbytes, kind))

    def to_device(self, ptr, array):  # cudaMemcpyHostToDevice = 1
        self._memcpy(ctypes.c_void_p(ptr), ctypes.c_void_p(array.ctypes.data), array.nbytes, 1)

    def to_host(self, array, ptr):  # cudaMemcpyDeviceToHost = 2
        self._memcpy(ctypes.c_void_p(array.ctypes.data), ctypes.c_void_p(ptr), array.nbytes, 2)

    def stream_create(self):
        return self._out_handle("cudaStreamCreate")

    def stream_handle(self, stream):
        return int(stream.value or 0)

    def stream_sync(self, stream):
        self._check("cudaStreamSynchronize", self.lib.cudaStreamSynchronize(stream))

    def stream_destroy(self, stream):
        self._check("cudaStreamDestroy", self.lib.cudaStreamDestroy(stream))

    def event_create(self):
        return self._out_handle("cudaEventCreate")

    def event_record(self, event, stream):
        self._check("cudaEventRecord", self.lib.cudaEventRecord(event, stream))

    def event_sync(self, event):
        self._check("cudaEventSynchronize", self.lib.cudaEventSynchronize(event))

    def elapsed_ms(self, start, end):
        value = ctypes.c_float()
        self._check(
            "cudaEventElapsedTime", self.lib.cudaEventElapsedTime(ctypes.byref(value), start, end)
        )
        return float(value.value)

    def event_destroy(self, event):
        self._check("cudaEventDestroy", self.lib.cudaEventDestroy(event))

    def close(self):
        pass


def _libcudart_candidates():
    names = ["libcudart.so"]
    found = ctypes.util.find_library("cudart")
    if found:
        names.insert(0, found)
    for pattern in (
        "/usr/local/cuda/lib64/libcudart.so*",
        "/usr/local/cuda/targets/*/lib/libcudart.so*",
        "/usr/lib/aarch64-linux-gnu/libcudart.so*",
        "/usr/lib/x86_64-linux-gnu/libcudart.so*",
    ):
        names.extend(sorted(glob.glob(pattern)))
    return names


def load_cuda():
    """The first CUDA runtime binding that loads; :class:`InfraError` when none does."""
    tried = []
    for module_name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return _CudaPython(importlib.import_module(module_name))
        except ImportError as exc:
            tried.append("%s (%s)" % (module_name, exc))
    try:
        return _PyCuda(importlib.import_module("pycuda.driver"))
    except ImportError as exc:
        tried.append("pycuda (%s)" % exc)
    except Exception as exc:
        tried.append("pycuda (%s: %s)" % (type(exc).__name__, exc))
    for candidate in _libcudart_candidates():
        try:
            return _CudaCtypes(ctypes.CDLL(candidate))
        except (OSError, AttributeError) as exc:
            tried.append("%s (%s)" % (candidate, exc))
    raise InfraError(
        "no CUDA runtime binding for the tensorrt backend: install cuda-python or pycuda; "
        "tried %s" % "; ".join(tried)
    )


# --------------------------------------------------------------------------------------------
# TensorRT objects


def import_tensorrt():
    try:
        return importlib.import_module("tensorrt")
    except ImportError as exc:
        raise InfraError("the tensorrt Python module is not importable: %s" % exc) from exc


def make_logger(trt):
    """A TensorRT logger that keeps warnings and errors as ``[W] ..``/``[E] ..`` lines (the
    tags trtexec uses, so one classifier reads both) and echoes errors to stderr."""
    severity = trt.ILogger.Severity
    warning_level = int(severity.WARNING)
    error_level = int(severity.ERROR)

    class CaptureLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.lines = []

        def log(self, level, message):
            level = int(level)
            if level > warning_level:
                return
            tag = "[E]" if level <= error_level else "[W]"
            line = "%s [TRT] %s" % (tag, message)
            self.lines.append(line)
            if tag == "[E]":
                warn(line)

    return CaptureLogger()


def has_qdq_layers(network, layer_types):
    """Whether the network carries explicit quantization (a QDQ graph, e.g. from NNCF): then
    TensorRT takes the scales from the graph and refuses dynamic ranges set beside them
    ("Setting dynamic range is only allowed when there are no Q/DQ layers")."""
    qdq = (layer_types.QUANTIZE, layer_types.DEQUANTIZE)
    return any(network.get_layer(i).type in qdq for i in range(network.num_layers))


def set_placeholder_dynamic_ranges(network):
    """INT8 without calibration, as trtexec does it: fixed ranges on every float tensor."""

    def _set(tensor, bound):
        if dtype_name(tensor.dtype) not in _FLOAT_DTYPES:
            return
        try:
            tensor.set_dynamic_range(-bound, bound)
        except Exception:
            with contextlib.suppress(Exception):
                tensor.dynamic_range = (-bound, bound)

    for index in range(network.num_inputs):
        _set(network.get_input(index), 2.0)
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        for out in range(layer.num_outputs):
            _set(layer.get_output(out), 4.0)


class IOBuffers(object):
    """Device buffers for every engine I/O tensor, bound for v2 or v3 execution."""

    def __init__(self, trt, engine, context, cuda, shapes, api):
        self.cuda = cuda
        self.api = api
        self.pointers = []
        self.bindings = None
        self.tensors = []  # (name, shape, dtype name, device pointer, nbytes, is_input)
        if api == "v3":
            self._bind_v3(trt, engine, context, shapes)
        else:
            self._bind_v2(engine, context, shapes)

    def _alloc(self, name, shape, dtype, is_input):
        if any(int(d) < 0 for d in shape):
            raise InvalidModel(
                "tensor %r has a data-dependent shape %s, which this backend cannot allocate"
                % (name, list(shape))
            )
        nbytes = volume(shape) * dtype_itemsize(dtype)
        ptr = self.cuda.malloc(max(nbytes, 1))
        self.pointers.append(ptr)
        if is_input and nbytes:
            self.cuda.memset(ptr, fill_byte(dtype), nbytes)
        self.tensors.append((name, list(shape), dtype_name(dtype), ptr, nbytes, is_input))
        return ptr

    def _bind_v3(self, trt, engine, context, shapes):
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        for name in inputs:
            if name not in shapes:
                raise InfraError("the engine has an input %r the model did not declare" % name)
            if not context.set_input_shape(name, tuple(shapes[name])):
                raise InvalidModel("TensorRT refused shape %s for input %r" % (shapes[name], name))
        for name in names:
            shape = tuple(context.get_tensor_shape(name))
            ptr = self._alloc(name, shape, engine.get_tensor_dtype(name), name in inputs)
            if not context.set_tensor_address(name, ptr):
                raise InfraError("set_tensor_address(%r) failed" % name)

    def _bind_v2(self, engine, context, shapes):
        count = engine.num_bindings
        self.bindings = [0] * count
        for index in range(count):
            if engine.binding_is_input(index):
                name = engine.get_binding_name(index)
                declared = tuple(engine.get_binding_shape(index))
                if any(int(d) < 0 for d in declared):
                    if name not in shapes:
                        raise InfraError(
                            "the engine has an input %r the model did not declare" % name
                        )
                    if not context.set_binding_shape(index, tuple(shapes[name])):
                        raise InvalidModel(
                            "TensorRT refused shape %s for input %r" % (shapes[name], name)
                        )
        if (
            hasattr(context, "all_binding_shapes_specified")
            and not context.all_binding_shapes_specified
        ):
            raise InfraError("not every input shape of the engine is specified")
        for index in range(count):
            shape = tuple(context.get_binding_shape(index))
            self.bindings[index] = self._alloc(
                engine.get_binding_name(index),
                shape,
                engine.get_binding_dtype(index),
                engine.binding_is_input(index),
            )

    def free(self):
        for ptr in self.pointers:
            try:
                self.cuda.free(ptr)
            except Exception as exc:  # pragma: no cover - defensive
                warn("cudaFree failed: %s" % exc)
        self.pointers = []


class TensorRTSession(Session):
    def __init__(self, trt, version, engine, cuda, shapes, logger):
        self.trt = trt
        self.engine = engine
        self.cuda = cuda
        self.logger = logger
        self.api = execute_api(version)
        self.context = None
        self.buffers = None
        self.stream = None
        self.events = []
        try:
            self.context = engine.create_execution_context()
            if self.context is None:
                raise OutOfMemory(
                    "TensorRT could not create an execution context: %s"
                    % (" | ".join(logger.lines[-3:]) or "no message")
                )
            self.stream = cuda.stream_create()
            self.stream_handle = cuda.stream_handle(self.stream)
            self.buffers = IOBuffers(trt, engine, self.context, cuda, shapes, self.api)
            self.events = [cuda.event_create(), cuda.event_create()]
        except BaseException:
            self.close()
            raise

    def _enqueue(self):
        if self.api == "v3":
            ok = self.context.execute_async_v3(self.stream_handle)
        else:
            ok = self.context.execute_async_v2(self.buffers.bindings, self.stream_handle)
        if not ok:
            raise classify_failure(
                "\n".join(self.logger.lines[-20:])
                + "\n[E] execute_async_%s returned False" % self.api,
                None,
                phase="run",
                what="TensorRT execution",
            )

    def _timed_once(self):
        start, end = self.events
        self.cuda.event_record(start, self.stream)
        self._enqueue()
        self.cuda.event_record(end, self.stream)
        self.cuda.event_sync(end)
        return self.cuda.elapsed_ms(start, end)

    def time(self, warmup, iterations, duration_s):
        for _ in range(warmup):
            self._enqueue()
            self.cuda.stream_sync(self.stream)
        latencies = []
        if iterations is not None:
            for _ in range(iterations):
                latencies.append(self._timed_once())
            return latencies
        started = time.perf_counter()
        while not latencies or time.perf_counter() - started < duration_s:
            latencies.append(self._timed_once())
        return latencies

    def infer(self, batch):
        """Copy ``batch`` into the engine's one input (cast to its dtype: an fp16-I/O engine
        takes halves), run once, and copy every output back (halves widened to float32)."""
        import numpy

        inputs = [tensor for tensor in self.buffers.tensors if tensor[5]]
        if len(inputs) != 1:
            raise InfraError("an evaluation feeds one input; the engine has %d" % len(inputs))
        name, shape, dtype, ptr, nbytes, _ = inputs[0]
        fed = numpy.ascontiguousarray(batch, dtype=_numpy_dtype(dtype))
        if fed.nbytes != nbytes:
            raise InfraError(
                "input %r takes %s (%d bytes); the row has shape %s"
                % (name, shape, nbytes, list(fed.shape))
            )
        self.cuda.to_device(ptr, fed)
        self._enqueue()
        self.cuda.stream_sync(self.stream)
        outputs = []
        for _name, out_shape, out_dtype, out_ptr, _nbytes, is_input in self.buffers.tensors:
            if is_input:
                continue
            host = numpy.empty(out_shape, dtype=_numpy_dtype(out_dtype))
            self.cuda.to_host(host, out_ptr)
            outputs.append(host.astype(numpy.float32) if out_dtype == "HALF" else host)
        return outputs

    def close(self):
        if self.stream is not None:
            with contextlib.suppress(Exception):
                self.cuda.stream_sync(self.stream)
        for event in self.events:
            with contextlib.suppress(Exception):
                self.cuda.event_destroy(event)
        self.events = []
        if self.buffers is not None:
            self.buffers.free()
            self.buffers = None
        if self.stream is not None:
            with contextlib.suppress(Exception):
                self.cuda.stream_destroy(self.stream)
            self.stream = None
        self.context = None
        self.engine = None
        with contextlib.suppress(Exception):
            self.cuda.close()


class TensorRTBackend(Backend):
    name = "tensorrt"
    evaluates = True

    def __init__(self, proc_root="/", environ=None, workspace_mib=None):
        self._proc_root = proc_root
        self._environ = dict(os.environ if environ is None else environ)
        self._workspace_mib = workspace_mib

    @classmethod
    def available(cls):
        try:
            import importlib.util

            return importlib.util.find_spec("tensorrt") is not None
        except (ImportError, ValueError):
            return False

    def version(self):
        return str(import_tensorrt().__version__)

    def precisions(self):
        capability, _how = detect_compute_capability(self._proc_root)
        if capability is not None:
            return precisions_for_compute_capability(capability)
        # Unknown board and no nvidia-smi: ask TensorRT (this opens a CUDA context).
        trt = import_tensorrt()
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
        precisions = ["fp32"]
        if getattr(builder, "platform_has_fast_fp16", False):
            precisions.append("fp16")
        if getattr(builder, "platform_has_fast_int8", False):
            precisions.append("int8")
        return precisions

    def workspace_bytes(self):
        mib = self._workspace_mib
        if mib is None:
            value = self._environ.get(ENV_WORKSPACE_MIB)
            try:
                mib = int(value) if value else DEFAULT_WORKSPACE_MIB
            except ValueError:
                raise InfraError(
                    "%s must be a whole number of MiB, got %r" % (ENV_WORKSPACE_MIB, value)
                ) from None
        return max(1, int(mib)) << 20

    def prepare(self, model_path, model, spec, engine_path):
        precision = spec.precision
        available = self.precisions()
        if precision not in available:
            raise UnsupportedPrecision(
                "%s is not supported on this device (it runs %s)"
                % (precision, ", ".join(available))
            )
        trt = import_tensorrt()
        version = version_tuple(trt.__version__)
        logger = make_logger(trt)
        shapes_list = resolve_shapes(model, spec)
        dynamic = model_has_dynamic_inputs(model)
        cuda = load_cuda()
        try:
            return self._prepare(
                trt, version, logger, cuda, model_path, spec, engine_path, shapes_list, dynamic
            )
        except BaseException:
            with contextlib.suppress(Exception):
                cuda.close()
            raise

    def _prepare(
        self, trt, version, logger, cuda, model_path, spec, engine_path, shapes_list, dynamic
    ):
        precision = spec.precision
        runtime = trt.Runtime(logger)
        engine = None
        cache_hit = False
        started = time.time()
        if os.path.isfile(engine_path) and os.path.getsize(engine_path) > 0:
            with open(engine_path, "rb") as handle:
                engine = runtime.deserialize_cuda_engine(handle.read())
            if engine is None:
                warn("cached engine %s did not deserialize; rebuilding it" % engine_path)
                os.remove(engine_path)
            else:
                cache_hit = True
        if engine is None:
            serialized = self._build(
                trt, version, logger, model_path, shapes_list, dynamic, precision, engine_path
            )
            engine = runtime.deserialize_cuda_engine(serialized)
            if engine is None:
                os.remove(engine_path)
                raise build_failure(
                    [*logger.lines, "[E] the freshly built engine did not deserialize"]
                )
        build_time_s = 0.0 if cache_hit else time.time() - started
        command = (
            "TensorRT Python API %s: %s; precision=%s%s; workspace=%d MiB; shapes=%s%s; "
            "execute_async_%s on one CUDA stream via %s; per iteration: CUDA events around one "
            "enqueue, synchronised; %d untimed warm-up iterations"
            % (
                trt.__version__,
                "engine reused from %s" % engine_path
                if cache_hit
                else "built from %s" % model_path,
                precision,
                " (+fp16 fallback, placeholder INT8 ranges)" if precision == "int8" else "",
                self.workspace_bytes() >> 20,
                shape_spec(shapes_list),
                " (one profile, min=opt=max)" if dynamic else "",
                execute_api(version),
                cuda.name,
                spec.warmup,
            )
        )
        session = TensorRTSession(trt, version, engine, cuda, dict(shapes_list), logger)
        return session, BuildInfo(build_time_s, cache_hit, command)

    def _build(
        self, trt, version, logger, model_path, shapes_list, dynamic, precision, engine_path
    ):
        builder = trt.Builder(logger)
        if (
            precision in ("fp16", "int8")
            and getattr(builder, "platform_has_fast_%s" % precision, True) is False
        ):
            raise UnsupportedPrecision("TensorRT reports no fast %s on this GPU" % precision)
        explicit_bit = getattr(
            getattr(trt, "NetworkDefinitionCreationFlag", None), "EXPLICIT_BATCH", 0
        )
        network = builder.create_network(network_flags(version, explicit_bit))
        parser = trt.OnnxParser(network, logger)
        if hasattr(parser, "parse_from_file"):
            parsed = parser.parse_from_file(os.path.abspath(model_path))
        else:
            with open(model_path, "rb") as handle:
                parsed = parser.parse(handle.read())
        if not parsed:
            raise invalid_model_from_parser(parser_messages(parser) or logger.lines[-5:])
        config = builder.create_builder_config()
        apply_workspace(config, trt, version, self.workspace_bytes())
        if precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        elif precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            if getattr(builder, "platform_has_fast_fp16", True):
                config.set_flag(trt.BuilderFlag.FP16)
            if not has_qdq_layers(network, trt.LayerType):
                set_placeholder_dynamic_ranges(network)
        if dynamic:
            profile = builder.create_optimization_profile()
            for name, dims in shapes_list:
                profile.set_shape(name, tuple(dims), tuple(dims), tuple(dims))
            config.add_optimization_profile(profile)
        cache, cache_path = self._timing_cache(config, version, engine_path)
        try:
            serialized = builder.build_serialized_network(network, config)
        except MemoryError as exc:
            raise OutOfMemory("host memory ran out while building: %s" % exc) from exc
        except Exception as exc:
            raise build_failure(logger.lines, exc) from exc
        if serialized is None:
            raise build_failure(logger.lines)
        partial = engine_path + ".partial"
        with open(partial, "wb") as handle:
            handle.write(serialized)
        os.rename(partial, engine_path)
        if cache is not None:
            try:
                with open(cache_path, "wb") as handle:
                    handle.write(cache.serialize())
            except Exception as exc:
                warn("could not save the timing cache %s: %s" % (cache_path, exc))
        return serialized

    def _timing_cache(self, config, version, engine_path):
        path = os.path.join(
            os.path.dirname(os.path.abspath(engine_path)),
            "tensorrt-%s.timing-cache" % ".".join(str(v) for v in version),
        )
        if not hasattr(config, "create_timing_cache"):
            return None, path
        data = b""
        if os.path.isfile(path):
            with open(path, "rb") as handle:
                data = handle.read()
        try:
            cache = config.create_timing_cache(data)
            config.set_timing_cache(cache, False)
            return cache, path
        except Exception as exc:
            warn("timing cache %s not used: %s" % (path, exc))
            return None, path
