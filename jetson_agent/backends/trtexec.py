"""The ``trtexec`` backend: TensorRT's own command-line benchmark, run as a child process.

Build phase (``prepare``)::

    trtexec --onnx=M --saveEngine=E.partial --timingCacheFile=T <workspace> <build-only>
            [--fp16 | --int8 --fp16] [--minShapes=S --optShapes=S --maxShapes=S]

* workspace: ``--workspace=N`` (MiB) before TensorRT 8.4; ``--memPoolSize=workspace:N`` from 8.4
  on (a bare number is MiB in 8.4-8.6's ``pool:sizeInMiB`` grammar and is still MiB in 10.x,
  which dropped ``--workspace``). TensorRT 8.2's default workspace is 16 MiB, too small for many
  tactics, so a workspace is always given (``JETSON_AGENT_TRT_WORKSPACE_MIB``, default 1024).
* build only: ``--buildOnly`` up to 8.5 (its option list prints "Build only"/"Skip inference"),
  ``--skipInference`` from 8.6 (8.6 still accepts ``--buildOnly`` with a deprecation warning,
  TensorRT 10 removed it).
* ``int8`` is built as trtexec's ``--best`` does (``--int8 --fp16``: INT8 kernels where TensorRT
  has them, FP16 elsewhere) with trtexec's placeholder dynamic ranges: no calibration data exists
  on the device, and latency does not depend on the scales.
* shapes are passed only when the model has a dynamic input, as one fixed profile
  (min = opt = max); a static model takes no shape flags.
* the engine goes to ``E.partial`` and is renamed to ``E`` only after trtexec passed, so a killed
  build never leaves a truncated engine that a later job would load. An existing ``E`` is reused
  (``engine_cache_hit``).

Run phase (``Session.time``)::

    trtexec --loadEngine=E --warmUp=0 --iterations=<warmup+N> --duration=0 --avgRuns=1
            --noDataTransfers --exportTimes=F.json [--shapes=S]

* warm-up: trtexec's ``--warmUp`` is a time in milliseconds and ``--iterations`` a minimum, so the
  spec's warm-up *iterations* cannot be given to trtexec as such. trtexec's own warm-up is set to
  0 and ``warmup + N`` iterations are run; the first ``warmup`` exported iterations are dropped
  and the next ``N`` kept (trtexec may run one or two more than asked, which are dropped too).
  In duration mode ``--duration`` is the whole seconds covering the spec's duration (plus one
  for the warm-up); iterations that start after ``duration_s`` from the first timed one are
  dropped.
* per-iteration latency is the GPU compute time of each iteration (``computeMs`` in the export,
  i.e. ``endComputeMs - startComputeMs``, CUDA events around the enqueue): the engine's time on
  the GPU, the quantity the optimiser compares, without host scheduling noise. Host-device copies
  are switched off (``--noDataTransfers``) so they neither count nor contend with the compute on
  a Jetson's shared memory.
* the export's field names: TensorRT 8.x writes ``startEnqMs, endEnqMs, startH2dMs, endH2dMs,
  startComputeMs, endComputeMs, startD2hMs, endD2hMs, h2dMs, computeMs, d2hMs, latencyMs,
  endToEndMs`` for every iteration *including trtexec's warm-up ones*; later versions (TensorRT
  10) drop ``endToEndMs`` and the warm-up iterations. The last ``Timing trace has N queries`` are
  the timed ones in both.
* the human "=== Performance summary ===" (``GPU Compute Time: min = .., max = .., mean = ..,
  median = .., percentile(99%) = ..``; 8.5+ print percentiles 90, 95 and 99) is parsed and
  checked against the export: a count or mean that disagrees is an infrastructure error, not a
  measurement.

Evaluation (``Session.infer``), one trtexec process per input row::

    trtexec --loadEngine=E --warmUp=0 --iterations=1 --duration=0 --avgRuns=1
            --loadInputs=NAME:ROW.bin --exportOutput=OUT.json [--shapes=S]

* the row is written raw (little-endian, the input's dtype), as ``--loadInputs`` reads it; a
  name holding ``:`` or ``,`` is single-quoted, as trtexec's grammar allows;
* ``--exportOutput`` (``exportJSONOutput``) writes one record per output binding with its
  ``"dimensions"`` (``1x10``) and ``"values"``, printed with 6 significant digits; they are read
  back as float32. A process per row makes this the slow path (the engine is deserialized each
  time); the TensorRT Python backend keeps one engine for all rows.
"""

import contextlib
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time

from ..errors import BuildFailed, BuildTimeout, InfraError, RunTimeout, UnsupportedPrecision
from .base import Backend, BuildInfo, Session
from .trt_common import (
    classify_failure,
    detect_compute_capability,
    format_version,
    kill_process,
    model_has_dynamic_inputs,
    parse_trtexec_version,
    precisions_for_compute_capability,
    read_text,
    resolve_shapes,
    run_logged,
    shape_spec,
    warn,
)

ENV_BINARY = "JETSON_AGENT_TRTEXEC"
ENV_WORKSPACE_MIB = "JETSON_AGENT_TRT_WORKSPACE_MIB"
DEFAULT_LOCATIONS = ("/usr/src/tensorrt/bin/trtexec",)
DEFAULT_WORKSPACE_MIB = 1024
DEFAULT_BUILD_TIMEOUT_S = 4 * 3600.0
DEFAULT_RUN_TIMEOUT_S = 2 * 3600.0
VERSION_TIMEOUT_S = 120.0


def _is_executable(path):
    return bool(path) and os.path.isfile(path) and os.access(path, os.X_OK)


def find_trtexec(environ=None):
    """The trtexec to use: ``$JETSON_AGENT_TRTEXEC``, else ``trtexec`` on PATH, else JetPack's
    ``/usr/src/tensorrt/bin/trtexec``; ``None`` when there is none (or the configured one is not
    an executable file)."""
    environ = os.environ if environ is None else environ
    configured = environ.get(ENV_BINARY)
    if configured:
        return configured if _is_executable(configured) else None
    found = shutil.which("trtexec", path=environ.get("PATH", os.defpath))
    if found:
        return found
    for location in DEFAULT_LOCATIONS:
        if _is_executable(location):
            return location
    return None


# --------------------------------------------------------------------------------------------
# Flags by version


def workspace_flag(version, mib):
    if tuple(version) >= (8, 4):
        return "--memPoolSize=workspace:%d" % int(mib)
    return "--workspace=%d" % int(mib)


def build_only_flag(version):
    return "--skipInference" if tuple(version) >= (8, 6) else "--buildOnly"


def precision_flags(precision):
    if precision == "fp16":
        return ["--fp16"]
    if precision == "int8":
        return ["--int8", "--fp16"]
    return []


def build_command(
    binary, version, model_path, engine_out, timing_cache, precision, shapes, workspace_mib
):
    """argv of the build phase; ``shapes`` is a trtexec shape string or ``None`` (static)."""
    argv = [
        binary,
        "--onnx=%s" % model_path,
        "--saveEngine=%s" % engine_out,
        "--timingCacheFile=%s" % timing_cache,
        workspace_flag(version, workspace_mib),
        build_only_flag(version),
    ]
    argv.extend(precision_flags(precision))
    if shapes:
        argv.extend(
            ["--minShapes=%s" % shapes, "--optShapes=%s" % shapes, "--maxShapes=%s" % shapes]
        )
    return argv


def run_command(binary, engine_path, warmup, iterations, duration_s, export_path, shapes):
    """argv of one timed run (see the module docstring for how warm-up is mapped)."""
    argv = [binary, "--loadEngine=%s" % engine_path, "--warmUp=0"]
    if iterations is not None:
        argv.extend(["--iterations=%d" % (warmup + iterations), "--duration=0"])
    else:
        seconds = math.ceil(duration_s) + (1 if warmup else 0)
        argv.extend(["--iterations=%d" % (warmup + 1), "--duration=%d" % max(seconds, 1)])
    argv.extend(["--avgRuns=1", "--noDataTransfers", "--exportTimes=%s" % export_path])
    if shapes:
        argv.append("--shapes=%s" % shapes)
    return argv


def infer_command(binary, engine_path, input_name, input_path, output_path, shapes):
    """argv of one inference on the raw input file ``input_path``, its outputs exported as JSON
    to ``output_path``."""
    quoted = "'%s'" % input_name if (":" in input_name or "," in input_name) else input_name
    argv = [binary, "--loadEngine=%s" % engine_path, "--warmUp=0", "--iterations=1"]
    argv.extend(["--duration=0", "--avgRuns=1"])
    argv.extend(["--loadInputs=%s:%s" % (quoted, input_path), "--exportOutput=%s" % output_path])
    if shapes:
        argv.append("--shapes=%s" % shapes)
    return argv


def parse_export_output(records):
    """The arrays of an ``--exportOutput`` file (``exportJSONOutput``: one record per output
    binding, ``"dimensions": "1x10"`` and the values, printed with 6 significant digits), in
    the file's order, as float32."""
    import numpy

    outputs = []
    for record in records:
        dims = [int(d) for d in str(record["dimensions"]).split("x") if d]
        values = numpy.asarray(record["values"], dtype=numpy.float32)
        if values.size != int(numpy.prod(dims)):
            raise InfraError(
                "trtexec exported %d values for output %s of dimensions %s"
                % (values.size, record.get("name"), record["dimensions"])
            )
        outputs.append(values.reshape(dims))
    return outputs


def format_command(argv):
    return " ".join(shlex.quote(arg) for arg in argv)


# --------------------------------------------------------------------------------------------
# Output parsing

_WARMUP_RE = re.compile(r"Warmup completed (\d+) queries over ([\d.eE+-]+) ms")
_TRACE_RE = re.compile(r"Timing trace has (\d+) queries over ([\d.eE+-]+) s")
_SUMMARY_LINE_RE = re.compile(
    r"(Throughput|Latency|End-to-End Host Latency|Enqueue Time|H2D Latency|GPU Compute Time|"
    r"D2H Latency|Total Host Walltime|Total GPU Compute Time): (.*)$"
)
_STAT_RE = re.compile(r"(min|max|mean|median) = ([-+\d.eE]+|inf|nan) ms")
_PERCENTILE_RE = re.compile(r"percentile\(([\d.]+)%\) = ([-+\d.eE]+|inf|nan) ms")
_TRACE_DETAIL_RE = re.compile(r"Average on 1 runs - GPU latency: ([-+\d.eE]+) ms")


def parse_prolog(text):
    """``{"warmup_queries", "warmup_ms", "timed_queries", "timed_s"}`` from the run's prolog
    (values ``None`` when the lines are missing)."""
    result = {"warmup_queries": None, "warmup_ms": None, "timed_queries": None, "timed_s": None}
    warmups = _WARMUP_RE.findall(text)
    if warmups:
        result["warmup_queries"] = int(warmups[-1][0])
        result["warmup_ms"] = float(warmups[-1][1])
    traces = _TRACE_RE.findall(text)
    if traces:
        result["timed_queries"] = int(traces[-1][0])
        result["timed_s"] = float(traces[-1][1])
    return result


def parse_performance_summary(text):
    """The last "=== Performance summary ===" as a dict.

    Latency-like metrics map to ``{"min", "max", "mean", "median", "percentiles": {99.0: ..}}``
    (ms); ``Throughput`` to ``{"qps": ..}``; the two totals to ``{"s": ..}``. Works for the
    single-percentile form of TensorRT <= 8.4 and the ``percentile(90%) .. (95%) .. (99%)`` form
    of 8.5 and later.
    """
    marker = text.rfind("=== Performance summary ===")
    if marker < 0:
        return {}
    summary = {}
    for line in text[marker:].splitlines()[1:]:
        match = _SUMMARY_LINE_RE.search(line)
        if not match:
            if "&&&&" in line or "===" in line:
                break
            continue
        name, rest = match.group(1), match.group(2)
        if name == "Throughput":
            number = re.match(r"\s*([-+\d.eE]+) qps", rest)
            if number:
                summary[name] = {"qps": float(number.group(1))}
        elif name.startswith("Total "):
            number = re.match(r"\s*([-+\d.eE]+) s", rest)
            if number:
                summary[name] = {"s": float(number.group(1))}
        else:
            stats = dict((key, float(value)) for key, value in _STAT_RE.findall(rest))
            stats["percentiles"] = dict(
                (float(p), float(value)) for p, value in _PERCENTILE_RE.findall(rest)
            )
            summary[name] = stats
    return summary


def parse_trace_details(text):
    """GPU latency of each iteration from the ``--avgRuns=1`` trace lines (a fallback source)."""
    return [float(value) for value in _TRACE_DETAIL_RE.findall(text)]


def parse_export_times(records, timed_queries=None):
    """``(gpu_compute_ms, start_compute_ms)`` lists of the timed iterations of an
    ``--exportTimes`` JSON, oldest first.

    TensorRT 8.x exports trtexec's warm-up iterations too; those are the records before the last
    ``timed_queries`` (from "Timing trace has N queries").
    """
    if not isinstance(records, list):
        raise InfraError("trtexec's --exportTimes file is not a JSON list")
    if timed_queries is not None and len(records) > timed_queries:
        records = records[len(records) - timed_queries :]
    computes, starts = [], []
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise InfraError("trtexec's --exportTimes record %d is not an object" % index)
        try:
            if "computeMs" in record:
                compute = float(record["computeMs"])
            else:
                compute = float(record["endComputeMs"]) - float(record["startComputeMs"])
            start = record.get("startComputeMs")
            starts.append(float(start) if start is not None else None)
        except (KeyError, TypeError, ValueError):
            raise InfraError(
                "trtexec's --exportTimes record %d has no GPU compute time: %r" % (index, record)
            ) from None
        computes.append(compute)
    return computes, starts


def cross_check(computes, summary, prolog):
    """Disagreements between the exported iterations and trtexec's own summary (a list)."""
    problems = []
    timed = prolog.get("timed_queries")
    if timed is not None and len(computes) != timed:
        problems.append("export has %d timed iterations, the log %d" % (len(computes), timed))
    gpu = summary.get("GPU Compute Time")
    if gpu and computes:
        mean = sum(computes) / len(computes)
        if "mean" in gpu and abs(mean - gpu["mean"]) > max(0.01 * abs(gpu["mean"]), 2e-3):
            problems.append("export mean %.6g ms, summary mean %.6g ms" % (mean, gpu["mean"]))
        for key, value in (("min", min(computes)), ("max", max(computes))):
            if key in gpu and abs(value - gpu[key]) > max(1e-3 * abs(gpu[key]), 2e-3):
                problems.append(
                    "export %s %.6g ms, summary %s %.6g ms" % (key, value, key, gpu[key])
                )
    return problems


def select_timed(computes, starts, warmup, iterations, duration_s):
    """Drop the spec's warm-up iterations, then keep ``iterations`` or those that started within
    ``duration_s`` of the first timed one."""
    computes, starts = computes[warmup:], starts[warmup:]
    if iterations is not None:
        if len(computes) < iterations:
            raise InfraError(
                "trtexec ran %d timed iterations, %d were asked for" % (len(computes), iterations)
            )
        return computes[:iterations]
    if not computes:
        raise InfraError("trtexec ran no iteration after the warm-up")
    if starts and starts[0] is not None:
        limit = starts[0] + duration_s * 1000.0
        kept = [c for i, c in enumerate(computes) if starts[i] is None or starts[i] < limit]
        return kept or computes[:1]
    return computes


# --------------------------------------------------------------------------------------------
# Backend


class TrtexecSession(Session):
    cold_start = True  # one trtexec process per time() call

    def __init__(self, binary, engine_path, shapes, workdir, run_timeout_s, environ, input_name):
        self.binary = binary
        self.engine_path = engine_path
        self.shapes = shapes
        self.input_name = input_name  # None when the onnx package could not read the model
        self.workdir = workdir
        self.run_timeout_s = run_timeout_s
        self.environ = environ
        self.runs = 0
        self.last_command = None  # argv of the last run
        self.last_summary = {}  # trtexec's "Performance summary" of the last run
        self.last_prolog = {}

    def _run(self, argv):
        """Run trtexec (run ``self.runs``); the text of its log, or its typed failure."""
        log_path = os.path.join(self.workdir, "run-%d.log" % self.runs)
        self.last_command = argv
        returncode = run_logged(
            argv, log_path, self.run_timeout_s, RunTimeout, env=self.environ, cwd=self.workdir
        )
        text = read_text(log_path)
        if returncode != 0 or "&&&& FAILED" in text:
            raise classify_failure(text, returncode, phase="run")
        return text

    def time(self, warmup, iterations, duration_s):
        self.runs += 1
        export_path = os.path.join(self.workdir, "times-%d.json" % self.runs)
        argv = run_command(
            self.binary, self.engine_path, warmup, iterations, duration_s, export_path, self.shapes
        )
        text = self._run(argv)
        prolog = parse_prolog(text)
        summary = parse_performance_summary(text)
        self.last_prolog, self.last_summary = prolog, summary
        try:
            with open(export_path, "r") as handle:
                records = json.load(handle)
        except (IOError, OSError, ValueError) as exc:
            records = None
            computes = parse_trace_details(text)
            starts = [None] * len(computes)
            if not computes:
                raise InfraError("trtexec wrote no readable --exportTimes file (%s)" % exc) from exc
            warn("trtexec --exportTimes unreadable (%s); using its per-iteration trace" % exc)
        if records is not None:
            computes, starts = parse_export_times(records, prolog.get("timed_queries"))
        problems = cross_check(computes, summary, prolog)
        if problems:
            raise InfraError(
                "trtexec's exported times disagree with its own summary: %s" % "; ".join(problems)
            )
        return select_timed(computes, starts, warmup, iterations, duration_s)

    def infer(self, batch):
        """One trtexec process per inference: the row written raw (``--loadInputs``), the
        outputs read back from ``--exportOutput`` (6 significant digits: ties closer than that
        can flip a top-1)."""
        if self.input_name is None:
            raise InfraError("evaluating with trtexec needs the onnx package to name the input")
        self.runs += 1
        input_path = os.path.join(self.workdir, "input-%d.bin" % self.runs)
        output_path = os.path.join(self.workdir, "output-%d.json" % self.runs)
        with open(input_path, "wb") as handle:
            handle.write(batch.tobytes())
        argv = infer_command(
            self.binary, self.engine_path, self.input_name, input_path, output_path, self.shapes
        )
        self._run(argv)
        try:
            with open(output_path, "r") as handle:
                records = json.load(handle)
        except (IOError, OSError, ValueError) as exc:
            raise InfraError("trtexec wrote no readable --exportOutput file (%s)" % exc) from exc
        return parse_export_output(records)

    def close(self):
        shutil.rmtree(self.workdir, ignore_errors=True)


class TrtexecBackend(Backend):
    name = "trtexec"
    evaluates = True

    def __init__(self, binary=None, proc_root="/", environ=None, workspace_mib=None):
        self._environ = dict(os.environ if environ is None else environ)
        self._binary = binary
        self._proc_root = proc_root
        self._workspace_mib = workspace_mib
        self._version = None

    @classmethod
    def available(cls):
        return find_trtexec() is not None

    def binary(self):
        found = self._binary or find_trtexec(self._environ)
        if not found:
            configured = self._environ.get(ENV_BINARY)
            if configured:
                raise InfraError("%s=%s is not an executable file" % (ENV_BINARY, configured))
            raise InfraError("no trtexec on PATH nor at %s" % ", ".join(DEFAULT_LOCATIONS))
        return found

    def version_tuple(self):
        if self._version is None:
            binary = self.binary()
            try:
                proc = subprocess.Popen(
                    [binary, "--help"],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=self._environ,
                    universal_newlines=True,
                )
            except (IOError, OSError) as exc:
                raise InfraError("could not run %s: %s" % (binary, exc)) from exc
            try:
                out, _ = proc.communicate(timeout=VERSION_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                kill_process(proc)
                raise InfraError(
                    "%s --help did not answer within %.0f s" % (binary, VERSION_TIMEOUT_S)
                ) from None
            version = parse_trtexec_version(out or "")
            if version is None:
                raise InfraError("could not read the TensorRT version from %s --help" % binary)
            self._version = tuple(version)
        return self._version

    def version(self):
        return format_version(self.version_tuple())

    def precisions(self):
        capability, _how = detect_compute_capability(self._proc_root)
        return precisions_for_compute_capability(capability)

    def workspace_mib(self):
        if self._workspace_mib is not None:
            return int(self._workspace_mib)
        value = self._environ.get(ENV_WORKSPACE_MIB)
        if value:
            try:
                return max(1, int(value))
            except ValueError:
                raise InfraError(
                    "%s must be a whole number of MiB, got %r" % (ENV_WORKSPACE_MIB, value)
                ) from None
        return DEFAULT_WORKSPACE_MIB

    def prepare(self, model_path, model, spec, engine_path):
        binary = self.binary()
        version = self.version_tuple()
        precision = spec.precision
        # trtexec runs in a scratch directory: every path it is given must be absolute.
        engine_path = os.path.abspath(engine_path)
        available = self.precisions()
        if precision not in available:
            raise UnsupportedPrecision(
                "%s is not supported on this device (it runs %s)"
                % (precision, ", ".join(available))
            )
        shapes_list = resolve_shapes(model, spec)
        shapes = shape_spec(shapes_list) if model_has_dynamic_inputs(model) else None
        build_timeout = spec.build_timeout_s or DEFAULT_BUILD_TIMEOUT_S
        run_timeout = spec.run_timeout_s or DEFAULT_RUN_TIMEOUT_S
        engine_dir = os.path.dirname(os.path.abspath(engine_path))
        if not os.path.isdir(engine_dir):
            os.makedirs(engine_dir)
        workdir = tempfile.mkdtemp(prefix="trtexec-")
        try:
            started = time.time()
            cache_hit = os.path.isfile(engine_path) and os.path.getsize(engine_path) > 0
            build_argv = None
            if not cache_hit:
                build_argv = self._build(
                    binary,
                    version,
                    model_path,
                    engine_path,
                    precision,
                    shapes,
                    build_timeout,
                    workdir,
                )
            build_time_s = 0.0 if cache_hit else time.time() - started
            run_preview = run_command(
                binary,
                engine_path,
                spec.warmup,
                spec.iterations,
                spec.duration_s,
                "<times.json>",
                shapes,
            )
            parts = []
            if build_argv is not None:
                parts.append(
                    "build: %s  [renamed to %s once trtexec passed]"
                    % (format_command(build_argv), engine_path)
                )
            else:
                parts.append("engine reused: %s" % engine_path)
            parts.append(
                "run (per repeat): %s  [the first %d exported iterations are discarded as "
                "warm-up; latency = GPU compute time (computeMs) of each iteration]"
                % (format_command(run_preview), spec.warmup)
            )
            input_name = model.inputs[0][0] if model is not None and model.inputs else None
            session = TrtexecSession(
                binary, engine_path, shapes, workdir, run_timeout, self._environ, input_name
            )
            return session, BuildInfo(build_time_s, cache_hit, "; ".join(parts))
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise

    def _build(
        self, binary, version, model_path, engine_path, precision, shapes, timeout_s, workdir
    ):
        partial = engine_path + ".partial"
        timing_cache = os.path.join(
            os.path.dirname(os.path.abspath(engine_path)),
            "trtexec-%s.timing-cache" % format_version(version),
        )
        argv = build_command(
            binary,
            version,
            os.path.abspath(model_path),
            partial,
            timing_cache,
            precision,
            shapes,
            self.workspace_mib(),
        )
        log_path = os.path.join(workdir, "build.log")
        try:
            returncode = run_logged(
                argv, log_path, timeout_s, BuildTimeout, env=self._environ, cwd=workdir
            )
            text = read_text(log_path)
            if returncode != 0 or "&&&& FAILED" in text:
                raise classify_failure(text, returncode, phase="build")
            if not os.path.isfile(partial) or os.path.getsize(partial) == 0:
                raise BuildFailed("trtexec passed but wrote no engine to %s" % partial)
            os.rename(partial, engine_path)
        finally:
            if os.path.exists(partial):
                with contextlib.suppress(OSError):
                    os.remove(partial)
        return argv
