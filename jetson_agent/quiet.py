"""A quiet device on a shared host: co-located work pauses while a job times.

When the agent runs on the machine that also trains candidates (a campaign's embedded agent),
training steps compete with the timed runs for the same cores, caches and memory bandwidth.
``serve --quiet-lock DIR`` makes each job hold this lock exclusively for its run phase, and
co-located work (the trials of a campaign on this host) holds it shared for each short step
(a training batch, an export, an evaluation): a measurement waits for the steps under way to
end, and no step starts until it is done.

Two ``flock`` files, so that a stream of shared holders cannot starve the measurement: a
worker passes the *gate* (shared, released at once) before it takes the *steps* lock (shared,
for one step); a job closes the gate (exclusive) and then takes the steps lock (exclusive).
The kernel drops a dead process's locks, so a killed job or trial never wedges the other side.
Standard library only: the host side imports it from here too.
"""

import contextlib
import fcntl
import os
import time

GATE = "gate.lock"
STEPS = "steps.lock"


class DeviceLock(object):
    def __init__(self, folder):
        self.folder = folder
        self._files = {}
        self._working = 0  # nested working() steps of this process (flock does not count)

    def _fd(self, name):
        if name not in self._files:
            self._files[name] = os.open(os.path.join(self.folder, name), os.O_RDWR | os.O_CREAT)
        return self._files[name]

    @contextlib.contextmanager
    def measuring(self):
        """Hold the device exclusively; yields the seconds spent waiting for co-located steps."""
        asked = time.monotonic()
        gate, steps = self._fd(GATE), self._fd(STEPS)
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(steps, fcntl.LOCK_EX)
            try:
                yield time.monotonic() - asked
            finally:
                fcntl.flock(steps, fcntl.LOCK_UN)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def working(self):
        """One step of co-located work: waits while a measurement runs. A step inside a step
        (a training batch inside an export's step, say) holds the same lock: only the
        outermost takes and releases it."""
        if self._working:
            self._working += 1
            try:
                yield
            finally:
                self._working -= 1
            return
        gate, steps = self._fd(GATE), self._fd(STEPS)
        fcntl.flock(gate, fcntl.LOCK_SH)
        fcntl.flock(gate, fcntl.LOCK_UN)
        fcntl.flock(steps, fcntl.LOCK_SH)
        self._working = 1
        try:
            yield
        finally:
            self._working = 0
            fcntl.flock(steps, fcntl.LOCK_UN)

    def close(self):
        for fd in self._files.values():
            os.close(fd)
        self._files = {}


def prepare_folder(folder):
    """Create the lock folder (the agent does, at start-up) and return its absolute path."""
    folder = os.path.abspath(folder)
    if not os.path.isdir(folder):
        os.makedirs(folder)
    return folder
