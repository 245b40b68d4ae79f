"""Run one job in a subprocess and turn whatever happens to it into a typed result.

The agent must outlive every candidate: the job process gets its own session (process group) so
a timeout kills it together with anything it spawned (trtexec, tegrastats), and a process that
dies without writing a result is classified from how it died.

No job outlives the agent either. An agent that stops (SIGTERM, Ctrl-C) kills the running job's
process group and removes its scratch folder before it exits (:meth:`JobProcess.stop`); one that
is killed outright takes the job with it (Linux's parent-death signal), and what it could not
remove, its folder under the cache's ``jobs/`` (named by its process id), is removed when another
agent starts there.
What a job may write is bounded too: no file it writes (an optimised graph, an engine, its log)
may exceed ``max_file_bytes`` (RLIMIT_FSIZE).
"""

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from . import errors
from .children import die_with_parent

_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read_phases(stream, lines):
    for line in iter(stream.readline, ""):
        if line.startswith("PHASE "):
            lines.put((line[6:].strip(), time.monotonic()))
    lines.put((None, time.monotonic()))


def _tail(path, limit=2000):
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - limit))
            return handle.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _signal_name(number):
    try:
        return signal.Signals(number).name
    except ValueError:
        return "signal %d" % number


class JobProcess(object):
    """Runs jobs with the agent's build/run time limits, optional address-space cap and file
    size cap, in scratch folders under ``scratch_dir``."""

    def __init__(
        self,
        backend_target,
        build_timeout_s,
        run_timeout_s,
        memory_limit_mb=None,
        scratch_dir=None,
        max_file_bytes=None,
    ):
        self.backend_target = backend_target
        self.build_timeout_s = build_timeout_s
        self.run_timeout_s = run_timeout_s
        self.memory_limit_mb = memory_limit_mb
        self.max_file_bytes = max_file_bytes
        # This agent's own folder under the shared one: another agent on the same cache (a
        # 'vitopt export' beside a running campaign) never touches it.
        self.scratch_dir = None
        if scratch_dir is not None:
            _remove_orphans(scratch_dir)
            self.scratch_dir = os.path.join(scratch_dir, str(os.getpid()))
            os.makedirs(self.scratch_dir, exist_ok=True)
        self._lock = threading.Lock()
        self._proc = None
        self._stopping = False

    def stop(self):
        """Kill the running job (its whole process group) and refuse new ones; the thread in
        :meth:`run` then removes its scratch folder and returns a killed job's result."""
        with self._lock:
            self._stopping = True
            proc = self._proc
        if proc is not None and proc.poll() is None:
            self._kill(proc)

    def close(self):
        """Remove this agent's scratch folder (once no job runs)."""
        if self.scratch_dir is not None:
            shutil.rmtree(self.scratch_dir, ignore_errors=True)

    def _limits(self, spec):
        build = min(spec.get("build_timeout_s") or self.build_timeout_s, self.build_timeout_s)
        run = min(spec.get("run_timeout_s") or self.run_timeout_s, self.run_timeout_s)
        return build, run

    def run(self, paths, spec, quiet_lock=None):
        """Measure with ``spec`` (a dict already validated by MeasureSpec); ``paths`` holds
        ``model_path`` and ``engine_path`` (and a paired job's ``reference_model_path`` and
        ``reference_engine_path``); ``quiet_lock`` is the folder of the host's measurement
        lock, held through the run phase."""
        with self._scratch() as work:
            return self._run_in(work, paths, spec, quiet_lock, "measure")

    def evaluate(self, paths, spec, inputs):
        """Run the model at ``paths`` (``model_path``, ``engine_path``), built with ``spec``, on
        ``inputs`` (the bytes of an ``.npy`` batch); returns the job's result and the bytes of
        each output's ``.npy`` file (none unless the job succeeded)."""
        with self._scratch() as work:
            outputs_dir = os.path.join(work, "outputs")
            os.mkdir(outputs_dir)
            inputs_path = os.path.join(work, "inputs.npy")
            with open(inputs_path, "wb") as handle:
                handle.write(inputs)
            paths = dict(paths, inputs_path=inputs_path, outputs_dir=outputs_dir)
            result = self._run_in(work, paths, spec, None, "evaluate")
            files = []
            if result.get("status") == errors.OK:
                for output in result["outputs"]:
                    with open(os.path.join(outputs_dir, "%d.npy" % output["index"]), "rb") as f:
                        files.append(f.read())
            return result, files

    @contextlib.contextmanager
    def _scratch(self):
        """A job's own folder under this agent's scratch folder, removed when it ends."""
        work = tempfile.mkdtemp(prefix="jetson-agent-job-", dir=self.scratch_dir)
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _run_in(self, work, paths, spec, quiet_lock, kind):
        request_path = os.path.join(work, "request.json")
        result_path = os.path.join(work, "result.json")
        stderr_path = os.path.join(work, "stderr.log")
        request = dict(paths)
        request.update(
            {
                "kind": kind,
                "spec": spec,
                "backend_target": self.backend_target,
                "result_path": result_path,
                "memory_limit_mb": self.memory_limit_mb,
                "max_file_bytes": self.max_file_bytes,
                "quiet_lock": quiet_lock,
            }
        )
        with open(request_path, "w") as handle:
            json.dump(request, handle)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_PACKAGE_PARENT, env.get("PYTHONPATH")) if p
        )
        build_limit, run_limit = self._limits(spec)
        with self._lock:
            if self._stopping:
                return {"status": errors.INFRA_ERROR, "message": "the agent is stopping"}
            with open(stderr_path, "w") as stderr:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "jetson_agent.job", request_path],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    universal_newlines=True,
                    start_new_session=True,
                    preexec_fn=die_with_parent,
                    env=env,
                )
            self._proc = proc
        lines = queue.Queue()
        reader = threading.Thread(target=_read_phases, args=(proc.stdout, lines))
        reader.daemon = True
        reader.start()
        phase, timed_out = self._watch(proc, lines, build_limit, run_limit)
        proc.wait()
        with self._lock:
            self._proc = None
            if self._stopping:
                return {
                    "status": errors.INFRA_ERROR,
                    "message": "the agent stopped during %s; the job was killed" % phase,
                    "phase": phase,
                }
        reader.join(5)
        proc.stdout.close()
        if timed_out:
            status, limit = (
                (errors.RUN_TIMEOUT, run_limit)
                if phase == "run"
                else (errors.BUILD_TIMEOUT, build_limit)
            )
            return {
                "status": status,
                "message": "the %s phase did not finish within %g s; the job was killed"
                % ("run" if phase == "run" else "build", limit),
                "phase": phase,
            }
        if os.path.exists(result_path):
            with open(result_path) as handle:
                return json.load(handle)
        return self._died(proc.returncode, phase, _tail(stderr_path))

    def _watch(self, proc, lines, build_limit, run_limit):
        """Follow the phase lines until the process exits; kill it when a limit passes."""
        phase = "start"
        deadline = time.monotonic() + build_limit
        while True:
            try:
                name, _at = lines.get(timeout=max(0.0, min(0.5, deadline - time.monotonic())))
            except queue.Empty:
                name = ""
            if name is None:  # stdout closed: the process is exiting
                return phase, False
            if name:
                phase = name
                if name == "run":
                    deadline = time.monotonic() + run_limit
                elif name == "done":
                    deadline = time.monotonic() + 60
            if time.monotonic() >= deadline and proc.poll() is None:
                self._kill(proc)
                return phase, True

    @staticmethod
    def _kill(proc):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            proc.kill()

    @staticmethod
    def _died(returncode, phase, stderr_tail):
        detail = (" Last output: " + stderr_tail[-500:]) if stderr_tail else ""
        if returncode is not None and returncode < 0:
            sig = -returncode
            if sig == signal.SIGKILL:
                return {
                    "status": errors.OUT_OF_MEMORY,
                    "message": "the job process was killed by SIGKILL during %s, most likely by "
                    "the kernel's out-of-memory killer.%s" % (phase, detail),
                    "phase": phase,
                }
            status = (
                errors.BUILD_FAILED
                if phase in ("start", "validate", "build")
                else (errors.INFRA_ERROR)
            )
            return {
                "status": status,
                "message": "the job process died with %s during %s.%s"
                % (_signal_name(sig), phase, detail),
                "phase": phase,
            }
        return {
            "status": errors.INFRA_ERROR,
            "message": "the job process exited with code %s during %s without a result.%s"
            % (returncode, phase, detail),
            "phase": phase,
        }


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive: someone else's process
        pass
    return True


def _remove_orphans(folder):
    """Remove what agents that were killed left in ``folder``: the scratch folders named after
    a process that no longer runs."""
    if not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        if not (name.isdigit() and _alive(int(name))):
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
