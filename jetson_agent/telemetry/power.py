"""Board power while a job runs, sampled in the background, and the energy of its inferences."""

import subprocess
import threading
import time

from .files import which
from .ina3221 import Ina3221
from .tegrastats import TEGRASTATS_INTERVAL_MS, parse_tegrastats_line

SYSFS_INTERVAL_S = 0.1


class PowerMonitor(object):
    """Samples board input power in a background thread while a job runs.

    Two sources, same output: a ``tegrastats`` subprocess (``command``, an argv list) whose
    lines are parsed as they arrive, or the INA3221 sysfs files (``reader``) polled every
    ``interval_s``. Samples are ``(time.monotonic(), total_power_mw)`` taken when the value
    arrived, so they line up with the agent's own monotonic run timestamps.
    """

    def __init__(self, command=None, reader=None, interval_s=SYSFS_INTERVAL_S):
        # type: (Optional[List[str]], Optional[Ina3221], float) -> None
        if (command is None) == (reader is None):
            raise ValueError("give exactly one of command (tegrastats argv) or reader (Ina3221)")
        self.command = list(command) if command is not None else None
        self.reader = reader
        self.interval_s = interval_s
        self.source = "tegrastats" if command is not None else "ina3221"
        self.input_rail = None  # type: Optional[str]
        self._samples = []  # type: List[Tuple[float, float]]
        self._lock = threading.Lock()
        self._stop_event = threading.Event()
        self._thread = None  # type: Optional[threading.Thread]
        self._process = None  # type: Optional[subprocess.Popen]

    @classmethod
    def detect(cls, root="/", tegrastats="tegrastats"):
        # type: (str, str) -> Optional[PowerMonitor]
        """tegrastats when it is on PATH, else INA3221 sysfs polling when a board input rail is
        readable, else None: a host without either has no power figure, not an invented one."""
        path = which(tegrastats)
        if path is not None:
            return cls(command=[path, "--interval", str(TEGRASTATS_INTERVAL_MS)])
        reader = Ina3221(root)
        if reader.available() and reader.read()["total_power_mw"] is not None:
            return cls(reader=reader)
        return None

    @property
    def running(self):
        # type: () -> bool
        """Whether sampling is under way."""
        return self._thread is not None

    def start(self):
        # type: () -> None
        """Begin sampling (clears earlier samples). Raises OSError if tegrastats cannot start."""
        if self._thread is not None:
            raise RuntimeError("PowerMonitor already started")
        with self._lock:
            self._samples = []
        self._stop_event.clear()
        if self.command is not None:
            self._process = subprocess.Popen(
                self.command,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                universal_newlines=True,
                bufsize=1,
            )
            target = self._read_tegrastats
        else:
            target = self._poll_sysfs
        self._thread = threading.Thread(target=target, name="power-monitor")
        self._thread.daemon = True
        self._thread.start()

    def stop(self):
        # type: () -> List[Tuple[float, float]]
        """End sampling (terminating tegrastats) and return every sample taken since start."""
        self._stop_event.set()
        self._terminate_process()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._thread = None
        return self.samples()

    def samples(self):
        # type: () -> List[Tuple[float, float]]
        """A copy of the samples so far; safe to call while running."""
        with self._lock:
            return list(self._samples)

    def idle_power_mw(self, seconds=1.0):
        # type: (float) -> Optional[float]
        """Mean board power over ``seconds``, taken before a job so energy can be reported above
        idle. Uses the running sampler if there is one, else starts and stops its own."""
        already_running = self.running
        since = time.monotonic()
        if not already_running:
            self.start()
        time.sleep(seconds)
        if already_running:
            window = [p for t, p in self.samples() if t >= since]
        else:
            window = [p for _t, p in self.stop()]
        return sum(window) / len(window) if window else None

    def _add(self, when, power_mw, rail):
        # type: (float, float, Optional[str]) -> None
        with self._lock:
            self._samples.append((when, power_mw))
        self.input_rail = rail

    def _read_tegrastats(self):
        # type: () -> None
        """Reader thread: one sample per tegrastats line that carries an input rail. Ends when
        the process exits or is terminated (readline then returns "")."""
        process = self._process
        if process is None or process.stdout is None:
            return
        for line in iter(process.stdout.readline, ""):
            now = time.monotonic()
            stats = parse_tegrastats_line(line)
            if stats["total_power_mw"] is not None:
                self._add(now, float(stats["total_power_mw"]), stats["total_power_rail"])

    def _poll_sysfs(self):
        # type: () -> None
        """Poller thread: reads the input rail every ``interval_s`` until stopped."""
        reader = self.reader
        while reader is not None and not self._stop_event.is_set():
            reading = reader.read()
            now = time.monotonic()
            if reading["total_power_mw"] is not None:
                self._add(now, float(reading["total_power_mw"]), reading["total_power_rail"])
            self._stop_event.wait(self.interval_s)

    def _terminate_process(self):
        # type: () -> None
        """Stop tegrastats politely, then forcibly, and release its pipe."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=3.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _power_at(points, when):
    # type: (List[Tuple[float, float]], float) -> float
    """Power at ``when`` by linear interpolation between the neighbouring samples; beyond the
    first or last sample the nearest one is held (there is nothing to interpolate towards)."""
    before = [p for p in points if p[0] <= when]
    after = [p for p in points if p[0] >= when]
    if not before:
        return after[0][1]
    if not after:
        return before[-1][1]
    (t0, p0), (t1, p1) = before[-1], after[0]
    if t1 == t0:
        return p0
    return p0 + (p1 - p0) * (when - t0) / (t1 - t0)


def _trapezoid_mj(curve):
    # type: (List[Tuple[float, float]]) -> float
    """Integral of mW over seconds, i.e. millijoules, by the trapezoidal rule."""
    total = 0.0
    for index in range(1, len(curve)):
        (t0, p0), (t1, p1) = curve[index - 1], curve[index]
        total += (t1 - t0) * (p0 + p1) / 2.0
    return total


def energy_report(samples, run_start, run_end, idle_mw, inferences):
    # type: (List[Tuple[float, float]], float, float, Optional[float], Optional[int]) -> Dict[str, Any]
    """Energy of the timed run from power samples.

    Integrates power (trapezoidal rule) over exactly [run_start, run_end], interpolating the
    power at both edges from the samples around them. ``energy_per_inference_mj`` is the energy
    *above idle*, ``(energy - idle_mw * duration) / inferences``, because the board's idle draw
    is not the model's cost. Fields are None with a ``reason`` when they cannot be computed
    honestly (fewer than 2 samples in the window, no idle baseline, no inferences).
    """
    report = {
        "samples_in_window": 0,
        "duration_s": None,
        "energy_mj": None,
        "mean_power_mw": None,
        "idle_power_mw": idle_mw,
        "energy_above_idle_mj": None,
        "energy_per_inference_mj": None,
        "reason": None,
    }  # type: Dict[str, Any]
    if run_end <= run_start:
        report["reason"] = "run window is empty (run_end <= run_start)"
        return report
    points = sorted(samples)
    inside = [p for p in points if run_start <= p[0] <= run_end]
    report["samples_in_window"] = len(inside)
    if len(inside) < 2:
        report["reason"] = "fewer than 2 power samples inside the run window (%d)" % len(inside)
        return report
    interior = [p for p in inside if run_start < p[0] < run_end]
    start = (run_start, _power_at(points, run_start))
    end = (run_end, _power_at(points, run_end))
    curve = [start, *interior, end]
    duration = run_end - run_start
    energy = _trapezoid_mj(curve)
    report.update(duration_s=duration, energy_mj=energy, mean_power_mw=energy / duration)
    if idle_mw is None:
        report["reason"] = "no idle power baseline; energy above idle not computed"
    elif not inferences or inferences <= 0:
        report["reason"] = "no inference count; energy per inference not computed"
    else:
        above = energy - idle_mw * duration
        report.update(energy_above_idle_mj=above, energy_per_inference_mj=above / inferences)
    return report
