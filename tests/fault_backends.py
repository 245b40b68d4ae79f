"""Backends that fail on purpose, loaded by the agent as ``--backend fault_backends:Name``
(the module:Class extension point), to prove that a hung or crashed job never takes the
agent down."""

import os
import signal
import time

from jetson_agent.backends.onnxruntime_backend import OnnxRuntimeBackend


class BuildHangBackend(OnnxRuntimeBackend):
    name = "build-hang"

    def prepare(self, model_path, model, spec, engine_path):
        time.sleep(3600)


class CrashingBackend(OnnxRuntimeBackend):
    name = "crashing"

    def prepare(self, model_path, model, spec, engine_path):
        os.kill(os.getpid(), signal.SIGSEGV)


class SlowBuildBackend(OnnxRuntimeBackend):
    """Takes ``SLOW_BUILD_S`` seconds (default 3) to build, so a test can act mid-job."""

    name = "slow-build"

    def prepare(self, model_path, model, spec, engine_path):
        time.sleep(float(os.environ.get("SLOW_BUILD_S", "3")))
        return super().prepare(model_path, model, spec, engine_path)


class TimingOnlyBackend(OnnxRuntimeBackend):
    """Times models but does not evaluate them (a backend without `infer`)."""

    name = "timing-only"
    evaluates = False
