"""The agent's state: jobs, one FIFO worker, the cache, and what the device is.

Measurement is the scarce resource, so exactly one worker thread measures at a time, in the order
jobs arrived; HTTP threads only enqueue and read. Results already measured for the same
(model, spec, backend version, device) answer at once from the cache without queueing.
"""

import collections
import copy
import queue
import threading
import time
import uuid

from . import API_VERSION, __version__, errors, telemetry
from .backends import load_backend_class
from .cache import engine_key, result_key
from .evaluation import inputs_problem
from .model_check import read_inputs

_KEEP_SIGNATURES = 256


class Job(object):
    """A measurement, or with ``inputs`` (the bytes of an ``.npy`` batch) an evaluation, whose
    ``outputs`` (each an ``.npy`` file's bytes) are kept with the job once it is done."""

    def __init__(self, model_sha, spec, inputs=None):
        self.id = uuid.uuid4().hex
        self.model_sha = model_sha
        self.spec = spec
        self.kind = "measure" if inputs is None else "evaluate"
        self.inputs = inputs
        self.outputs = []
        self.state = "queued"
        self.created_at = time.time()
        self.started_at = None
        self.finished_at = None
        self.result = None
        self.done = threading.Event()

    def finish(self, result):
        self.result = result
        self.finished_at = time.time()
        self.state = "done"
        self.done.set()

    def to_dict(self, queue_position=None):
        data = {
            "job_id": self.id,
            "kind": self.kind,
            "state": self.state,
            "model_sha256": self.model_sha,
            "spec": self.spec.to_dict(),
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }
        if queue_position is not None:
            data["queue_position"] = queue_position
        if self.result is not None:
            data["result"] = self.result
        return data


class Agent(object):
    def __init__(
        self,
        backend_name,
        backend_target,
        cache,
        job_process,
        keep_jobs=1000,
        device_type=None,
        quiet_lock=None,
    ):
        self.backend_name = backend_name
        self.backend = load_backend_class(backend_target)()
        self.backend_version = self.backend.version()
        # Asked once: a TensorRT backend may open a CUDA context to find out.
        self.precisions = self.backend.precisions()
        self.cache = cache
        self.job_process = job_process
        self.device = telemetry.device_name()
        # What a campaign pools agents by: the hardware's name unless the lab labels it, e.g.
        # to tell a Nano in MAXN from one in 5 W mode.
        self.device_type = device_type or self.device
        self._keep_jobs = keep_jobs
        self.quiet_lock = quiet_lock  # folder of the host-local measurement lock (quiet.py)
        self._inputs = collections.OrderedDict()  # sha -> ModelInputs (or None), LRU
        self._jobs = collections.OrderedDict()
        self._pending = []  # ids in FIFO order, for queue positions
        self._queue = queue.Queue()
        self._lock = threading.Lock()
        self._running = None
        self._idle = threading.Event()  # set while no job runs
        self._idle.set()
        self._finished = 0
        self._worker = threading.Thread(target=self._work, name="measure-worker")
        self._worker.daemon = True
        self._worker.start()

    # -- queries ---------------------------------------------------------------------------
    def info(self):
        snapshot = telemetry.snapshot()
        with self._lock:
            queued, running, finished = len(self._pending), self._running, self._finished
        return {
            "agent_version": __version__,
            "api_version": API_VERSION,
            "device": {
                "name": self.device,
                "type": self.device_type,
                "jetson": telemetry.is_jetson(),
            },
            "backend": {"name": self.backend.name, "version": self.backend_version},
            "precisions": self.precisions,
            "evaluates": self.backend.evaluates,
            "power_mode": snapshot.get("power_mode"),
            "jetson_clocks": snapshot.get("jetson_clocks"),
            "clocks_mhz": snapshot.get("clocks_mhz"),
            "temperatures_c": snapshot.get("temperatures_c"),
            "queue_length": queued,
            "running_job": running,
            "jobs_finished": finished,
            "cache": {"bytes": self.cache.size_bytes(), "max_bytes": self.cache.max_bytes},
            "limits": {
                "build_timeout_s": self.job_process.build_timeout_s,
                "run_timeout_s": self.job_process.run_timeout_s,
                "max_file_bytes": self.job_process.max_file_bytes,
            },
        }

    def get(self, job_id):
        with self._lock:
            job = self._jobs.get(job_id)
            position = self._pending.index(job_id) + 1 if job_id in self._pending else None
        return job, position

    # -- submission ------------------------------------------------------------------------
    def submission_problem(self, model_sha, spec):
        """Why a job cannot run as asked, as ``(code, message)``, or None: the spec must fit
        the candidate's inputs (``input_mismatch``); a paired job's reference must be a model
        the agent holds (``unknown_reference``), fed the same inputs (``reference_mismatch``).
        Models the agent cannot read here pass: the job reports them itself."""
        ours = self.model_inputs(model_sha)
        problem = ours.feed_problem(spec) if ours is not None else None
        if problem is not None:
            return "input_mismatch", problem
        if not spec.paired:
            return None
        reference = spec.reference["model_sha256"]
        if not self.cache.has_model(reference):
            return (
                "unknown_reference",
                "no reference model with sha256 %s: upload it (POST /v1/models)" % reference,
            )
        theirs = self.model_inputs(reference)
        if ours is None or theirs is None:
            return None
        reference_spec = spec.for_reference()
        problem = theirs.feed_problem(reference_spec)
        if problem is not None:
            return "reference_mismatch", "the reference: " + problem
        if ours.signature(spec) != theirs.signature(reference_spec):
            return (
                "reference_mismatch",
                "the reference takes %s but the candidate %s: a paired job times two models fed "
                "the same inputs (shapes and element types, in input order)"
                % (theirs.describe(reference_spec), ours.describe(spec)),
            )
        return None

    def evaluation_problem(self, model_sha, spec, inputs):
        """Why an evaluation cannot run as asked, as ``(code, message)``, or None: this
        backend must evaluate (``evaluation_unsupported``), and the inputs (an ``Npy``) must be
        rows of the model's one input (``input_mismatch``)."""
        if not self.backend.evaluates:
            return (
                "evaluation_unsupported",
                "the %s backend times models but does not evaluate them yet; run an agent with "
                "--backend onnxruntime for device-side outputs" % self.backend.name,
            )
        model = self.model_inputs(model_sha)
        if model is None:  # no onnx package here: the job itself reports what it cannot feed
            return None
        problem = inputs_problem(model, inputs) or model.feed_problem(spec)
        return None if problem is None else ("input_mismatch", problem)

    def model_inputs(self, sha):
        """The model's inputs (``ModelInputs``, remembered per model), or None unreadable."""
        with self._lock:
            if sha in self._inputs:
                self._inputs.move_to_end(sha)
                return self._inputs[sha]
        inputs = read_inputs(self.cache.model_path(sha))
        with self._lock:
            self._inputs[sha] = inputs
            while len(self._inputs) > _KEEP_SIGNATURES:
                self._inputs.popitem(last=False)
        return inputs

    def submit(self, model_sha, spec, inputs=None):
        """Queue a measurement of the model, or with ``inputs`` an evaluation of it."""
        job = Job(model_sha, spec, inputs)
        immediate = self._immediate_result(model_sha, spec, results=inputs is None)
        with self._lock:
            self._jobs[job.id] = job
            self._forget_old()
            if immediate is None:
                self._pending.append(job.id)
        if immediate is None:
            self._queue.put(job)
        else:
            job.started_at = time.time()
            job.finish(immediate)
        return job

    def _immediate_result(self, model_sha, spec, results=True):
        """A result known without running: a precision this device lacks, or (``results``) a
        measurement's result from the cache."""
        supported = self.precisions
        asked = [("precision", spec.precision)]
        if spec.paired:  # else a backend without its own check would time it at another one
            asked.append(("the reference's precision", spec.reference["precision"]))
        for what, precision in asked:
            if precision not in supported:
                return {
                    "status": errors.UNSUPPORTED_PRECISION,
                    "message": "%s %s is not supported by %s on %s (supported: %s)"
                    % (what, precision, self.backend.name, self.device, ", ".join(supported)),
                    "cache": {"result_hit": False, "engine_hit": False},
                }
        if not (results and spec.use_cache):
            return None
        cached = self.cache.get_result(
            result_key(model_sha, spec, self.backend_version, self.device)
        )
        if cached is not None:
            cached["cache"] = dict(cached["cache"], result_hit=True)
        return cached

    def _forget_old(self):
        while len(self._jobs) > self._keep_jobs:
            oldest_id, oldest = next(iter(self._jobs.items()))
            if oldest.state != "done":
                break
            del self._jobs[oldest_id]

    def close(self, timeout_s=30.0):
        """Stop measuring: kill the running job and wait (up to ``timeout_s``) until its
        scratch folder is gone; queued jobs are dropped with the agent."""
        self.job_process.stop()
        if self._idle.wait(timeout_s):
            self.job_process.close()

    # -- the one worker --------------------------------------------------------------------
    def _work(self):
        while True:
            job = self._queue.get()
            with self._lock:
                self._pending.remove(job.id)
                self._running = job.id
                self._idle.clear()
            job.state = "running"
            job.started_at = time.time()
            try:
                result = self._evaluate(job) if job.kind == "evaluate" else self._measure(job)
            except Exception as exc:  # the worker must survive anything
                result = {"status": errors.INFRA_ERROR, "message": "agent error: %s" % exc}
            job.finish(result)
            with self._lock:
                self._running = None
                self._finished += 1
            self._idle.set()

    def _files(self, sha, spec):
        """The model's path and its engine's, for a spec."""
        engine = engine_key(sha, spec, self.backend_version, self.device)
        return self.cache.model_path(sha), self.cache.engine_path(engine)

    def _queued_models(self):
        """Models that jobs not yet done will read (theirs and their references)."""
        with self._lock:
            jobs = [job for job in self._jobs.values() if job.state != "done"]
        shas = set(job.model_sha for job in jobs)
        shas.update(job.spec.reference["model_sha256"] for job in jobs if job.spec.paired)
        return [self.cache.model_path(sha) for sha in shas]

    def _paths(self, job):
        """The files a job reads and writes (its model's, and a paired job's reference's),
        kept from eviction while it runs."""
        spec = job.spec
        paths = {}
        paths["model_path"], paths["engine_path"] = self._files(job.model_sha, spec)
        if spec.paired:
            paths["reference_model_path"], paths["reference_engine_path"] = self._files(
                spec.reference["model_sha256"], spec.for_reference()
            )
        self.cache.evict(protect=list(paths.values()) + self._queued_models())
        return paths

    def _stamped(self, job, result):
        """``result`` with where and when it was run."""
        result["device"] = self.device
        result["device_type"] = self.device_type
        result["model_sha256"] = job.model_sha
        result["measured_at"] = time.time()
        return result

    def _evaluate(self, job):
        result, job.outputs = self.job_process.evaluate(
            self._paths(job), job.spec.to_dict(), job.inputs
        )
        job.inputs = None  # the job's memory is its outputs from here on
        return self._stamped(job, result)

    def _measure(self, job):
        spec = job.spec
        result = self.job_process.run(self._paths(job), spec.to_dict(), self.quiet_lock)
        self._stamped(job, result)
        result["cache"] = {
            "result_hit": False,
            "engine_hit": bool((result.get("build") or {}).get("engine_cache_hit")),
        }
        if result.get("status") == errors.OK:
            key = result_key(job.model_sha, spec, self.backend_version, self.device)
            self.cache.put_result(key, copy.deepcopy(result))
        return result
