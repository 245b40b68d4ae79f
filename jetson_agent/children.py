"""Child processes that never outlive their parent: Linux's parent-death signal.

``die_with_parent`` is a ``preexec_fn``: in the forked child, before exec, it asks the kernel to
SIGKILL the child when the thread that started it dies (the agent's worker for a job process, a
job for trtexec or tegrastats), even when that parent was killed outright. libc's ``prctl`` is
looked up here, in the parent: a forked child of a threaded process must not load libraries.
Elsewhere than Linux it is None, and children are stopped the ordinary way.
"""

import ctypes
import signal
import sys

_PR_SET_PDEATHSIG = 1


def _libc_prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _libc_prctl()


def _die_with_parent():  # pragma: no cover - runs in the forked child
    _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGKILL))


die_with_parent = _die_with_parent if _PRCTL is not None else None
