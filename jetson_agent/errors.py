"""Typed job outcomes.

The search on the host must tell a bad candidate (it cannot be built, it runs out of memory) from a
broken device (the agent's own infrastructure failed), so every way a job can end has a name that
travels over the wire as ``status``. Backends raise these; anything else raised inside a job is
reported as ``infra_error``.
"""

OK = "ok"
INVALID_MODEL = "invalid_model"
UNSUPPORTED_PRECISION = "unsupported_precision"
BUILD_FAILED = "build_failed"
OUT_OF_MEMORY = "out_of_memory"
BUILD_TIMEOUT = "build_timeout"
RUN_TIMEOUT = "run_timeout"
INFRA_ERROR = "infra_error"

STATUSES = (
    OK,
    INVALID_MODEL,
    UNSUPPORTED_PRECISION,
    BUILD_FAILED,
    OUT_OF_MEMORY,
    BUILD_TIMEOUT,
    RUN_TIMEOUT,
    INFRA_ERROR,
)

# Outcomes that say something about the candidate model rather than the device.
CANDIDATE_FAULTS = (INVALID_MODEL, UNSUPPORTED_PRECISION, BUILD_FAILED, OUT_OF_MEMORY)


class JobError(Exception):
    """A job ended without a measurement; ``status`` is one of :data:`STATUSES`."""

    status = INFRA_ERROR

    def __init__(self, message, status=None):
        super(JobError, self).__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class InvalidModel(JobError):
    status = INVALID_MODEL


class UnsupportedPrecision(JobError):
    status = UNSUPPORTED_PRECISION


class BuildFailed(JobError):
    status = BUILD_FAILED


class OutOfMemory(JobError):
    status = OUT_OF_MEMORY


class BuildTimeout(JobError):
    status = BUILD_TIMEOUT


class RunTimeout(JobError):
    status = RUN_TIMEOUT


class InfraError(JobError):
    status = INFRA_ERROR


class SpecError(ValueError):
    """A measurement spec sent by a client is malformed (answered with HTTP 400)."""
