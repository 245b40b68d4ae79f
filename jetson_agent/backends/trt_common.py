"""Helpers shared by the two TensorRT backends (``trtexec`` and the TensorRT Python API).

Everything here is standard library only and valid on Python 3.6 (JetPack 4.6). It covers:

* TensorRT version numbers: trtexec's banner encodes the version as one integer,
  ``MAJOR*1000 + MINOR*100 + PATCH`` up to TensorRT 9 (``v8201`` is 8.2.1) and
  ``MAJOR*10000 + MINOR*100 + PATCH`` from TensorRT 10 on (``v100300`` is 10.3.0), the same
  arithmetic as ``NV_TENSORRT_VERSION`` in ``NvInferVersion.h``.
* which precisions the device really has: Jetson modules are recognised from
  ``/proc/device-tree/model`` (no CUDA context needed), other GPUs by compute capability from
  ``nvidia-smi``; the table follows NVIDIA's hardware support matrix (fast FP16 on sm_53, sm_60,
  sm_62 and sm_70+, INT8 on sm_61 and sm_70+, so a Jetson Nano (sm_53) and a TX2 (sm_62) have
  FP16 but no INT8).
* input shape strings as trtexec takes them (``input:1x3x32x32,mask:1x32``).
* mapping TensorRT's error text to the agent's typed errors.
* running a child process with its output in a log file, a timeout, and a kill on every way out.
"""

import contextlib
import os
import re
import signal
import subprocess
import sys

from ..children import die_with_parent
from ..errors import (
    BuildFailed,
    InfraError,
    InvalidModel,
    OutOfMemory,
)

# --------------------------------------------------------------------------------------------
# Versions


def decode_version_number(number):
    # type: (int) -> tuple
    """``NV_TENSORRT_VERSION``-style integer to ``(major, minor, patch)``.

    >>> decode_version_number(8201), decode_version_number(100300)
    ((8, 2, 1), (10, 3, 0))
    """
    number = int(number)
    if number >= 100000:  # TensorRT >= 10: MAJOR*10000 + MINOR*100 + PATCH
        return (number // 10000, (number // 100) % 100, number % 100)
    return (number // 1000, (number // 100) % 10, number % 100)


_BANNER_RE = re.compile(r"\[TensorRT v(\d+)\]")
_VERSION_LINE_RE = re.compile(r"TensorRT version: (\d+)\.(\d+)\.(\d+)")


def parse_trtexec_version(text):
    """The TensorRT version trtexec reports, as ``(major, minor, patch)``, or ``None``.

    Reads the banner ``&&&& RUNNING TensorRT.trtexec [TensorRT v8201] # ...`` (TensorRT 10 adds a
    build tag: ``[TensorRT v100300] [b17]``), else the ``TensorRT version: 8.2.1`` line.
    """
    match = _BANNER_RE.search(text)
    if match:
        return decode_version_number(int(match.group(1)))
    match = _VERSION_LINE_RE.search(text)
    if match:
        return tuple(int(part) for part in match.groups())
    return None


def version_tuple(text):
    """``"8.2.1.8"`` -> ``(8, 2, 1, 8)``; non-numeric tails are ignored (``"10.3.0.post1"``)."""
    parts = []
    for piece in str(text).split("."):
        match = re.match(r"\d+", piece)
        if not match:
            break
        parts.append(int(match.group(0)))
    if not parts:
        raise ValueError("not a version: %r" % (text,))
    return tuple(parts)


def format_version(version):
    return ".".join(str(part) for part in version)


# --------------------------------------------------------------------------------------------
# Device and precisions

# Substrings of /proc/device-tree/model (lower-cased) to the module's CUDA compute capability.
# Order matters: "Orin Nano" must match Orin, not Nano. "quill" is the TX2 on older L4T,
# "jetson-agx" the AGX Xavier on older L4T.
JETSON_COMPUTE_CAPABILITY = (
    ("thor", (11, 0)),
    ("orin", (8, 7)),
    ("xavier", (7, 2)),
    ("jetson-agx", (7, 2)),
    ("tx2", (6, 2)),
    ("quill", (6, 2)),
    ("tx1", (5, 3)),
    ("nano", (5, 3)),
)

_FAST_FP16_BELOW_VOLTA = ((5, 3), (6, 0), (6, 2))


def read_device_model(root="/"):
    """The board name from ``<root>/proc/device-tree/model`` (NUL-terminated there), or ``""``."""
    path = os.path.join(root, "proc", "device-tree", "model")
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except (IOError, OSError):
        return ""
    return raw.decode("utf-8", "replace").replace("\x00", "").strip()


def jetson_compute_capability(model):
    lowered = model.lower()
    if "jetson" not in lowered and "quill" not in lowered and "p3450" not in lowered:
        return None
    for needle, capability in JETSON_COMPUTE_CAPABILITY:
        if needle in lowered:
            return capability
    return None


def precisions_for_compute_capability(capability):
    """Precisions TensorRT runs fast on a GPU of this compute capability (``None``: unknown)."""
    precisions = ["fp32"]
    if capability is None:
        return precisions
    capability = tuple(capability)
    if capability >= (7, 0) or capability in _FAST_FP16_BELOW_VOLTA:
        precisions.append("fp16")
    if capability >= (7, 0) or capability == (6, 1):
        precisions.append("int8")
    return precisions


def nvidia_smi_compute_capability(timeout_s=20.0):
    """Compute capability of GPU 0 from ``nvidia-smi`` (desktop drivers >= 510), or ``None``.

    A separate process, so the caller's process never opens a CUDA context just to ask.
    """
    try:
        proc = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            universal_newlines=True,
        )
    except (IOError, OSError):
        return None
    try:
        out, _err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_process(proc)
        return None
    if proc.returncode != 0:
        return None
    match = re.match(r"\s*(\d+)\.(\d+)", out or "")
    if not match:
        return None
    return (int(match.group(1)), int(match.group(2)))


def detect_compute_capability(root="/", use_nvidia_smi=True):
    """``(capability, how)``: from the Jetson board name, else nvidia-smi, else ``(None, None)``."""
    model = read_device_model(root)
    if model:
        capability = jetson_compute_capability(model)
        if capability is not None:
            return capability, "device-tree model %r" % model
    if use_nvidia_smi:
        capability = nvidia_smi_compute_capability()
        if capability is not None:
            return capability, "nvidia-smi"
    return None, None


# --------------------------------------------------------------------------------------------
# Shapes


def quote_tensor_name(name):
    """trtexec reads ``name:dims``; names holding ``:`` or ``,`` go in single quotes."""
    if ":" in name or "," in name:
        return "'%s'" % name
    return name


def shape_spec(shapes):
    """``[("input", [1, 3, 32, 32])]`` -> ``"input:1x3x32x32"`` (trtexec's --shapes grammar)."""
    parts = []
    for name, dims in shapes:
        parts.append("%s:%s" % (quote_tensor_name(name), "x".join(str(int(d)) for d in dims)))
    return ",".join(parts)


def model_has_dynamic_inputs(model):
    for _name, shape, _elem in model.inputs:
        for dim in shape:
            if dim is None or dim <= 0:
                return True
    return False


def resolve_shapes(model, spec):
    """Concrete shapes for every model input, in the model's input order.

    Raises :class:`InvalidModel` when the spec asks a static input for a shape it does not have.
    """
    resolved = model.resolved_shapes(spec)
    ordered = []
    for name, shape, _elem in model.inputs:
        dims = resolved[name]
        if len(dims) != len(shape):
            raise InvalidModel(
                "input %r has rank %d but the spec gives shape %s" % (name, len(shape), dims)
            )
        for axis, declared in enumerate(shape):
            wanted = dims[axis]
            if declared is not None and declared > 0 and declared != wanted:
                raise InvalidModel(
                    "input %r is static with shape %s; the spec asks for %s"
                    % (name, list(shape), dims)
                )
        ordered.append((name, [int(d) for d in dims]))
    return ordered


# --------------------------------------------------------------------------------------------
# Error text -> typed errors

_INFRA_PATTERNS = (
    r"Unknown option",
    r"Could not load library",
    r"cannot open shared object file",
    r"Cannot find device ID",
    r"CUDA initialization failure",
    r"no CUDA-capable device",
    r"Input file cannot be found",
    r"Failed to open file",
)

_PARSE_PATTERNS = (
    r"Failed to parse onnx file",
    r"Failed to parse ONNX model",
    r"Parsing model failed",
    r"ModelImporter\.cpp",
    r"onnx2trt_utils|builtin_op_importers|onnxOpImporters",
    r"In function (importModel|parseGraph|import\w+)",
    r"Invalid Node",
    r"No importer registered for op",
    r"UNSUPPORTED_NODE|INVALID_NODE|INVALID_GRAPH|UNSUPPORTED_GRAPH",
    r"Unsupported ONNX data type",
)

_OOM_PATTERNS = (
    r"out of memory",
    r"OutOfMemory",
    r"Requested amount of GPU memory \(\d+ bytes\) could not be allocated",
    r"NvMapMem\w*: .*error 12",
    r"std::bad_alloc",
    r"cudaErrorMemoryAllocation",
)

# Allocation warnings TensorRT prints during builds that still succeed; on a failed build they
# say the tactics ran out of memory before the builder ran out of tactics.
_OOM_HINT_PATTERNS = (
    r"Requested amount of GPU memory \(\d+ bytes\) could not be allocated",
    r"due to insufficient memory",
    r"Skipping tactic .* insufficient memory",
)

_BUILD_PATTERNS = (
    r"Engine could not be created",
    r"Building engine failed",
    r"Network validation failed",
    r"Could not find any implementation",
    r"Engine creation failed",
    r"Failed to create engine",
    r"Engine set up failed",
    r"Error Code \d+: Internal Error",
    r"buildSerializedNetwork",
    r"Unable to create engine",
)

_ERROR_LINE_RE = re.compile(
    r"\[E\]|\bERROR\b|Error Code \d+|Error\[\d+\]|terminate called|what\(\):|"
    r"Segmentation fault|Aborted|could not be allocated|NvMapMem|Assertion failed",
)


_TIMESTAMP_RE = re.compile(r"^\[\d{2}/\d{2}/\d{4}-\d{2}:\d{2}:\d{2}\] ")
_TAGGED_RE = re.compile(r"^(\[[EWIV]\]|&&&&|ERROR:|WARNING:|INFO:)")
_NOT_ERROR_RE = re.compile(r"^(\[[WIV]\]|WARNING:|INFO:)")


def error_lines(text):
    """The lines of a TensorRT log that report errors (trtexec tags them ``[E]``; warnings and
    info lines are not errors even when they mention a failed allocation), timestamps removed,
    each with the untagged continuation lines that follow it (the ONNX parser's
    ``[6] Invalid Node - Pad_13`` comes on the line after its ``[E]`` line)."""
    picked = []
    in_error = False
    for raw in text.splitlines():
        line = _TIMESTAMP_RE.sub("", raw.strip())
        if not line:
            in_error = False
            continue
        if _ERROR_LINE_RE.search(line) and not _NOT_ERROR_RE.match(line):
            picked.append(line)
            in_error = True
        elif in_error and not _TAGGED_RE.match(line):
            picked.append(line)
        else:
            in_error = False
    return picked


def _matches(patterns, lines):
    for line in lines:
        for pattern in patterns:
            if re.search(pattern, line):
                return line
    return None


def _summary(lines, head=6, tail=2, width=300):
    lines = [line if len(line) <= width else line[: width - 3] + "..." for line in lines]
    if len(lines) > head + tail:
        lines = [*lines[:head], "...", *lines[-tail:]]
    return " | ".join(lines)


def classify_failure(text, returncode=None, phase="build", what="trtexec", unknown=InfraError):
    """The typed error for a failed TensorRT build or run, from its log text.

    Only call this for a run that failed (non-zero exit, ``&&&& FAILED``, a ``None`` engine):
    TensorRT prints allocation warnings during builds that succeed. The order of the checks is
    deliberate: our own breakage first (infra), then a model TensorRT cannot read (invalid
    model), then memory, then any other refusal to build. An unrecognised failure is reported
    as ``unknown`` (an infrastructure error unless the caller knows better, e.g. the builder
    returned no engine) rather than blamed on the candidate.
    """
    lines = error_lines(text)
    tail = _summary(lines) or _summary([line for line in text.splitlines() if line.strip()][-3:])
    where = "%s (%s phase%s)" % (
        what,
        phase,
        ", exit status %s" % returncode if returncode is not None else "",
    )
    if _matches(_INFRA_PATTERNS, lines):
        return InfraError("%s failed for a reason of this device's setup: %s" % (where, tail))
    if _matches(_PARSE_PATTERNS, lines):
        return InvalidModel("TensorRT could not parse the ONNX model: %s" % tail)
    if _matches(_OOM_PATTERNS, lines):
        return OutOfMemory("%s ran out of device memory: %s" % (where, tail))
    if returncode is not None and returncode == -signal.SIGKILL:
        return OutOfMemory(
            "%s was killed by SIGKILL without our asking (on a Jetson that is the kernel's "
            "out-of-memory killer, CPU and GPU share the memory): %s" % (where, tail)
        )
    if _matches(_BUILD_PATTERNS, lines):
        if (
            phase == "build"
            and _matches(("Could not find any implementation",), lines)
            and _matches(_OOM_HINT_PATTERNS, text.splitlines())
        ):
            return OutOfMemory(
                "%s found no tactic that fit in device memory (allocations failed while "
                "timing tactics): %s" % (where, tail)
            )
        if phase == "build":
            return BuildFailed("TensorRT could not build an engine: %s" % tail)
        return BuildFailed("the TensorRT engine could not run: %s" % tail)
    return unknown("%s failed: %s" % (where, tail or "no error text"))


# --------------------------------------------------------------------------------------------
# Child processes


def kill_process(proc):
    """Kill a child and reap it; harmless when it already ended."""
    if proc is None:
        return
    with contextlib.suppress(OSError):
        if proc.poll() is None:
            proc.kill()
    with contextlib.suppress(Exception):
        proc.wait(timeout=30)


def run_logged(argv, log_path, timeout_s, timeout_error, env=None, cwd=None):
    """Run ``argv`` with stdout and stderr into ``log_path``; return its exit status.

    The child never writes to our stdout (which carries the job protocol). On timeout the child
    is killed and ``timeout_error`` raised; on any other way out (an exception, a signal turned
    into one) it is killed too. On Linux the child also dies with this process.
    """
    with open(log_path, "wb") as log:
        try:
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=cwd,
                close_fds=True,
                preexec_fn=die_with_parent,
            )
        except (IOError, OSError) as exc:
            raise InfraError("could not start %s: %s" % (argv[0], exc)) from exc
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            kill_process(proc)
            raise timeout_error(
                "%s did not finish within %.0f s and was killed"
                % (os.path.basename(argv[0]), timeout_s)
            ) from None
        except BaseException:
            kill_process(proc)
            raise


def read_text(path):
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", "replace")
    except (IOError, OSError):
        return ""


def warn(message):
    """Diagnostics go to stderr: stdout carries the job protocol."""
    sys.stderr.write("jetson_agent: %s\n" % message)
    sys.stderr.flush()
