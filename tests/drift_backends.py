"""A device that slows down part-way through a campaign, as a Jetson does when it throttles:
loaded by the agent as ``--backend drift_backends:ThrottlingBackend``.

Each job process builds one backend; the agent's own process builds one at start-up. After
``THROTTLE_AFTER_JOBS`` jobs (counted in the file ``THROTTLE_STATE``), every inference of every
model runs ``THROTTLE_FACTOR`` times as long (a busy wait after the real run), so candidate and
reference slow alike, as on a throttled device: paired speedups hold, absolute latencies drift.

``THROTTLE_BASE_MS`` adds a fixed busy wait to every inference (before the factor): a tiny
model's own time (0.06-0.15 ms, by job process) varies more between jobs than the throttle
moves it, while a device whose work is mostly that fixed wait drifts by the factor alone.
"""

import os
import time

from jetson_agent.backends.onnxruntime_backend import OnnxRuntimeBackend


class _SlowRuns:
    def __init__(self, session, factor, base_s):
        self._session = session
        self._factor = factor
        self._base_s = base_s

    def run(self, outputs, feeds):
        start = time.perf_counter()
        result = self._session.run(outputs, feeds)
        until = start + (time.perf_counter() - start + self._base_s) * self._factor
        while time.perf_counter() < until:
            pass
        return result


class ThrottlingBackend(OnnxRuntimeBackend):
    name = "throttling"

    def __init__(self):
        super().__init__()
        with open(os.environ["THROTTLE_STATE"], "a") as state:
            state.write("x")
        with open(os.environ["THROTTLE_STATE"]) as state:
            built = len(state.read())
        jobs_before = built - 2  # the agent's own instance, and this job's
        throttled = jobs_before >= int(os.environ.get("THROTTLE_AFTER_JOBS", "3"))
        self._factor = float(os.environ.get("THROTTLE_FACTOR", "1.3")) if throttled else 1.0
        self._base_s = float(os.environ.get("THROTTLE_BASE_MS", "0")) / 1000.0

    def prepare(self, model_path, model, spec, engine_path):
        session, build = super().prepare(model_path, model, spec, engine_path)
        session._session = _SlowRuns(session._session, self._factor, self._base_s)
        return session, build
