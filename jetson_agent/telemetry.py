"""Device telemetry: board power, temperatures, clocks and power mode, as the device reports them.

A latency number means little without the conditions it was taken under (a throttled GPU clock,
a 5 W power mode), and energy per inference needs the board's power over the run. This module
reads those from what a Jetson already offers and never invents a value: on a host without the
source a field is ``None`` (or an empty dict), not a zero that would look like a measurement.

Sources, per JetPack release:

* ``tegrastats`` (every JetPack): one line per interval; :func:`parse_tegrastats_line`.
* INA3221 power monitor in sysfs (:class:`Ina3221`): the NVIDIA iio driver ``ina3221x`` on
  JetPack 4.x (``rail_name_N`` and ``in_powerN_input`` in mW), the mainline hwmon driver
  ``ina3221`` on JetPack 5/6 (``inN_label``, ``inN_input`` in mV, ``currN_input`` in mA).
* ``/sys/class/thermal``, ``/sys/class/devfreq``, cpufreq and ``nvpmodel -q``
  (:func:`snapshot`).

Board power ("total_power_mw") is the module's *input* rail only, never a sum of rails:

* ``POM_5V_IN`` on the Jetson Nano (channel 0 of the INA3221 at 0x40; NVIDIA's Nano power
  guide calls it VDD_IN, the main module power input),
* ``VDD_IN`` on Xavier NX, Orin NX and Orin Nano ("total module power" in the Orin power guide),
  and on TX1/TX2 where it is likewise the module input,
* ``VIN`` on Jetson Thor (its INA238 measures the total input, per NVIDIA's forum answer).

Jetson AGX Xavier and AGX Orin have no input channel: AGX Orin's rails are VDD_GPU_SOC,
VDD_CPU_CV, VIN_SYS_5V0 ("system 5V power rail", not the module input) and VDDQ_VDD2_1V8AO,
which VIN_SYS_5V0 itself supplies, so any sum double-counts or misses part of the module. There
``total_power_mw`` is ``None`` and the per-rail figures stay available under ``rails_mw``.

Standard library only and valid on Python 3.6 (JetPack 4.6).
"""

import glob
import os
import platform
import re
import shutil
import subprocess
import threading
import time

# Rails that carry the whole module's input power, in the order they are looked for.
INPUT_RAILS = ("VDD_IN", "POM_5V_IN", "VIN")

TEGRASTATS_INTERVAL_MS = 100
SYSFS_INTERVAL_S = 0.1

_TIMESTAMP_RE = re.compile(r"^\s*(\d{2}-\d{2}-\d{4} \d{2}:\d{2}:\d{2})\s")
_RAM_RE = re.compile(r"\bRAM (\d+)/(\d+)([kMG]?)B")
_SWAP_RE = re.compile(r"\bSWAP (\d+)/(\d+)([kMG]?)B")
_CPU_RE = re.compile(r"\bCPU \[([^\]]*)\](?:@(\d+))?")
_CORE_RE = re.compile(r"^(\d+)%(?:@(\d+))?$")
_EMC_RE = re.compile(r"\bEMC_FREQ (?:(\d+)%)?(?:@(\d+))?")
_GR3D_RE = re.compile(r"\bGR3D_FREQ (?:(\d+)%)?(?:@\[?([\d,]+)\]?)?")
_TEMP_RE = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*)@(-?\d+(?:\.\d+)?)C\b")
# "NAME cur/avg" (JetPack 4, mW implied), "NAME curmW/avgmW" (JetPack 5/6) and a third value
# on newer releases; the lookahead keeps "RAM 1923/3964MB" from reading as a rail.
_RAIL_RE = re.compile(
    r"\b([A-Z][A-Z0-9_]*) (-?\d+)(?:mW)?/(-?\d+)(?:mW)?(?:/(-?\d+)(?:mW)?)?(?![\w/])"
)
_UNIT_TO_MB = {"k": 1.0 / 1024, "": 1.0 / (1024 * 1024), "M": 1.0, "G": 1024.0}
_GPU_DEVFREQ_RE = re.compile(r"gpu|ga10b|gv11b|gp10b|gb10b", re.IGNORECASE)
_POWER_MODE_RE = re.compile(r"NV Power Mode:\s*(\S+)")
_EMC_RATE_FILES = (
    "sys/kernel/debug/bpmp/debug/clk/emc/rate",  # JetPack 5/6 (BPMP clocks), Hz, root only
    "sys/kernel/debug/clk/emc/clk_rate",  # JetPack 4, Hz, root only
)

# --------------------------------------------------------------------------- tegrastats


def _number(text):
    # type: (str) -> Any
    """An int when the text is one, else a float: keeps the exact figure tegrastats printed."""
    return int(text) if re.match(r"^-?\d+$", text) else float(text)


def _empty_stats():
    # type: () -> Dict[str, Any]
    """Every key a parsed line can have, so a consumer never has to guess which are present."""
    return {
        "timestamp": None,
        "ram_used_mb": None,
        "ram_total_mb": None,
        "swap_used_mb": None,
        "swap_total_mb": None,
        "cpu_loads_pct": [],
        "cpu_freqs_mhz": [],
        "emc_pct": None,
        "emc_freq_mhz": None,
        "gr3d_pct": None,
        "gr3d_freq_mhz": None,
        "gr3d_gpc_freqs_mhz": [],
        "temperatures_c": {},
        "rails_mw": {},
        "total_power_mw": None,
        "total_power_rail": None,
    }


def _parse_memory(line, stats):
    # type: (str, Dict[str, Any]) -> None
    """RAM and SWAP used/total, in MB (tegrastats prints MB; kB/GB converted if ever seen)."""
    for regex, prefix in ((_RAM_RE, "ram"), (_SWAP_RE, "swap")):
        match = regex.search(line)
        if match:
            scale = _UNIT_TO_MB.get(match.group(3), 1.0)
            used, total = int(match.group(1)), int(match.group(2))
            stats[prefix + "_used_mb"] = used if scale == 1.0 else used * scale
            stats[prefix + "_total_mb"] = total if scale == 1.0 else total * scale


def _parse_cpus(line, stats):
    # type: (str, Dict[str, Any]) -> None
    """Per-core load % and MHz; an ``off`` core is ``None`` in both lists so indices stay cores.
    Also reads the old ``CPU [X%,Y%]@MHz`` form where one clock follows the bracket."""
    match = _CPU_RE.search(line)
    if not match:
        return
    shared_freq = int(match.group(2)) if match.group(2) else None
    for entry in match.group(1).split(","):
        core = _CORE_RE.match(entry.strip())
        if core is None:  # "off", or something this parser does not know
            stats["cpu_loads_pct"].append(None)
            stats["cpu_freqs_mhz"].append(None)
            continue
        stats["cpu_loads_pct"].append(int(core.group(1)))
        freq = int(core.group(2)) if core.group(2) else shared_freq
        stats["cpu_freqs_mhz"].append(freq)


def _parse_engines(line, stats):
    # type: (str, Dict[str, Any]) -> None
    """EMC and GPU (GR3D) load and clock. GR3D's clock is ``@N`` before JetPack 5 and a per-GPC
    list ``@[N,M]`` after; ``gr3d_freq_mhz`` is the highest GPC clock, the list is kept too."""
    emc = _EMC_RE.search(line)
    if emc:
        stats["emc_pct"] = int(emc.group(1)) if emc.group(1) else None
        stats["emc_freq_mhz"] = int(emc.group(2)) if emc.group(2) else None
    gr3d = _GR3D_RE.search(line)
    if gr3d:
        stats["gr3d_pct"] = int(gr3d.group(1)) if gr3d.group(1) else None
        freqs = [int(f) for f in (gr3d.group(2) or "").split(",") if f]
        stats["gr3d_gpc_freqs_mhz"] = freqs
        stats["gr3d_freq_mhz"] = max(freqs) if freqs else None


def _parse_power(line, stats):
    # type: (str, Dict[str, Any]) -> None
    """Every rail's current and running average (mW), and the board input rail as the total.
    Sums are deliberately not offered: see the module docstring for why."""
    for name, current, average, _third in _RAIL_RE.findall(line):
        stats["rails_mw"][name] = {"current": int(current), "average": int(average)}
    for rail in INPUT_RAILS:
        if rail in stats["rails_mw"]:
            stats["total_power_mw"] = stats["rails_mw"][rail]["current"]
            stats["total_power_rail"] = rail
            break


def parse_tegrastats_line(line):
    # type: (Any) -> Dict[str, Any]
    """Parse one tegrastats line (JetPack 4, 5, 6 and later formats) into a flat dict.

    Unknown tokens are ignored and a garbage or partial line yields the empty shape rather
    than an exception, because the reader thread must survive whatever a release prints.
    """
    stats = _empty_stats()
    if isinstance(line, bytes):
        line = line.decode("utf-8", "replace")
    if not isinstance(line, str):
        return stats
    timestamp = _TIMESTAMP_RE.match(line)
    if timestamp:
        stats["timestamp"] = timestamp.group(1)
    _parse_memory(line, stats)
    _parse_cpus(line, stats)
    _parse_engines(line, stats)
    stats["temperatures_c"] = {name: float(v) for name, v in _TEMP_RE.findall(line)}
    _parse_power(line, stats)
    return stats


# --------------------------------------------------------------------------- sysfs helpers


def _path(root, relative):
    # type: (str, str) -> str
    """``relative`` (an absolute device path without its leading slash) under ``root``."""
    return os.path.join(root, relative.lstrip("/"))


def _read_text(path):
    # type: (str) -> Optional[str]
    """File contents without surrounding whitespace or device-tree NULs; None when unreadable
    (absent, permission denied, or a sensor that errors on read)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    return data.decode("utf-8", "replace").strip().strip("\x00").strip()


def _read_int(path):
    # type: (str) -> Optional[int]
    """The leading integer of a sysfs file (``polling_delay_0`` reads "0 ms"); None if absent."""
    text = _read_text(path)
    if not text:
        return None
    try:
        return int(text.split()[0])
    except ValueError:
        return None


def _numbered(paths, pattern):
    # type: (List[str], str) -> List[Tuple[int, str]]
    """``(N, path)`` for paths whose basename matches ``pattern`` with one integer group, in
    numeric order (so thermal_zone10 sorts after thermal_zone9)."""
    out = []
    for path in paths:
        match = re.match(pattern, os.path.basename(path))
        if match:
            out.append((int(match.group(1)), path))
    return sorted(out)


# --------------------------------------------------------------------------- INA3221


class Ina3221(object):
    """The INA3221 power rails in sysfs, found once and then read cheaply at ~10 Hz.

    JetPack 4.x (NVIDIA iio driver): ``/sys/bus/i2c/drivers/ina3221x/<bus-addr>/iio:device<N>/``
    with ``rail_name_<c>`` and ``in_power<c>_input`` in mW (channels from 0).
    JetPack 5/6 (hwmon driver): ``/sys/bus/i2c/drivers/ina3221/<bus-addr>/hwmon/hwmon<N>/`` with
    ``in<c>_label``, ``in<c>_input`` in mV and ``curr<c>_input`` in mA (channels from 1); power is
    mV x mA / 1000. Channels labelled ``NC`` (not connected) and the "sum of shunt voltages"
    channel (a label but no current) are skipped.
    """

    def __init__(self, root="/"):
        # type: (str) -> None
        self.root = root
        self.driver = None  # type: Optional[str]
        # (rail, power file) for iio; (rail, mV file, mA file) for hwmon
        self._iio = []  # type: List[Tuple[str, str]]
        self._hwmon = []  # type: List[Tuple[str, str, str]]
        self._discover_iio()
        if not self._iio:
            self._discover_hwmon()

    def _discover_iio(self):
        # type: () -> None
        """JetPack 4: one power file per named rail."""
        base = _path(self.root, "sys/bus/i2c/drivers/ina3221x")
        names = glob.glob(os.path.join(base, "*", "iio:device*", "rail_name_*"))
        for channel, name_file in _numbered(names, r"^rail_name_(\d+)$"):
            rail = _read_text(name_file)
            power = os.path.join(os.path.dirname(name_file), "in_power%d_input" % channel)
            if rail and os.path.exists(power):
                self._iio.append((rail, power))
        if self._iio:
            self.driver = "ina3221x"

    def _discover_hwmon(self):
        # type: () -> None
        """JetPack 5/6: a voltage and a current file per labelled channel."""
        base = _path(self.root, "sys/bus/i2c/drivers/ina3221")
        labels = glob.glob(os.path.join(base, "*", "hwmon", "hwmon*", "in*_label"))
        for channel, label_file in _numbered(labels, r"^in(\d+)_label$"):
            rail = _read_text(label_file)
            folder = os.path.dirname(label_file)
            volts = os.path.join(folder, "in%d_input" % channel)
            amps = os.path.join(folder, "curr%d_input" % channel)
            if rail and rail != "NC" and os.path.exists(volts) and os.path.exists(amps):
                self._hwmon.append((rail, volts, amps))
        if self._hwmon:
            self.driver = "ina3221"

    def available(self):
        # type: () -> bool
        """Whether any INA3221 rail was found under ``root``."""
        return self.driver is not None

    def read_rails(self):
        # type: () -> Dict[str, float]
        """Instantaneous power of every rail, in mW; a rail that fails to read is left out."""
        rails = {}  # type: Dict[str, float]
        for rail, power_file in self._iio:
            value = _read_int(power_file)
            if value is not None:
                rails[rail] = float(value)
        for rail, volts_file, amps_file in self._hwmon:
            millivolts, milliamps = _read_int(volts_file), _read_int(amps_file)
            if millivolts is not None and milliamps is not None:
                rails[rail] = millivolts * milliamps / 1000.0
        return rails

    def read(self):
        # type: () -> Dict[str, Any]
        """Rails plus the board input rail as ``total_power_mw`` (None when the module has no
        input channel, e.g. AGX Orin), with the same keys as a parsed tegrastats line."""
        rails = self.read_rails()
        result = {"rails_mw": rails, "total_power_mw": None, "total_power_rail": None}
        for rail in INPUT_RAILS:
            if rail in rails:
                result["total_power_mw"] = rails[rail]
                result["total_power_rail"] = rail
                break
        return result


def read_ina3221(root="/"):
    # type: (str) -> Dict[str, Any]
    """One reading of the INA3221 rails under ``root`` (see :class:`Ina3221`)."""
    return Ina3221(root).read()


# --------------------------------------------------------------------------- PowerMonitor


def _which(program):
    # type: (str) -> Optional[str]
    """``program``'s path if it can be run: an explicit path is checked as is, a bare name is
    looked up on PATH."""
    if os.sep in program:
        return program if os.access(program, os.X_OK) else None
    return shutil.which(program)


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
        path = _which(tegrastats)
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


# --------------------------------------------------------------------------- energy


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


# --------------------------------------------------------------------------- snapshot


def run_command(argv, timeout=5.0):
    # type: (List[str], float) -> Optional[str]
    """Combined stdout+stderr of ``argv``, or None when it cannot be run (absent binary, timeout).
    The default runner for :func:`snapshot`; tests inject their own."""
    try:
        process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True
        )
    except (OSError, ValueError):
        return None
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        return None
    return output


def parse_nvpmodel(output):
    # type: (Optional[str]) -> Tuple[Optional[str], Optional[int]]
    """``(mode name, mode id)`` from ``nvpmodel -q`` output, e.g. ``NV Power Mode: MAXN`` then
    ``0``; warning lines such as ``NVPM WARN: fan mode is not set!`` are skipped."""
    if not output:
        return None, None
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for index, line in enumerate(lines):
        match = _POWER_MODE_RE.search(line)
        if match:
            following = lines[index + 1] if index + 1 < len(lines) else ""
            mode_id = int(following) if re.match(r"^\d+$", following) else None
            return match.group(1), mode_id
    return None, None


def read_temperatures(root="/"):
    # type: (str) -> Dict[str, float]
    """``{zone type: °C}`` from ``/sys/class/thermal/thermal_zone*`` (millidegrees in sysfs).
    Zones that fail to read are skipped; a repeated type gets its zone name appended. Tegra
    reports -256 °C for a sensor that is powered off (e.g. CV clusters); that is kept as read."""
    zones = glob.glob(_path(root, "sys/class/thermal/thermal_zone*"))
    temperatures = {}  # type: Dict[str, float]
    for _index, zone in _numbered(zones, r"^thermal_zone(\d+)$"):
        kind = _read_text(os.path.join(zone, "type"))
        millidegrees = _read_int(os.path.join(zone, "temp"))
        if not kind or millidegrees is None:
            continue
        name = kind if kind not in temperatures else "%s.%s" % (kind, os.path.basename(zone))
        temperatures[name] = millidegrees / 1000.0
    return temperatures


def _gpu_devfreq(root):
    # type: (str) -> Optional[str]
    """The GPU's devfreq folder: 57000000.gpu (Nano), 17000000.gv11b (Xavier),
    17000000.ga10b or 17000000.gpu (Orin), found by name under ``/sys/class/devfreq``."""
    for folder in sorted(glob.glob(_path(root, "sys/class/devfreq/*"))):
        if _GPU_DEVFREQ_RE.search(os.path.basename(folder)):
            return folder
    return None


def _cpu_folders(root):
    # type: (str) -> List[Tuple[int, str]]
    """``(N, /sys/devices/system/cpu/cpuN)`` for every CPU folder, in numeric order."""
    return _numbered(glob.glob(_path(root, "sys/devices/system/cpu/cpu[0-9]*")), r"^cpu(\d+)$")


def read_clocks(root="/"):
    # type: (str) -> Dict[str, Any]
    """Current clocks in MHz: ``gpu`` (devfreq ``cur_freq``, Hz), ``cpu`` per core
    (``scaling_cur_freq``, kHz) and ``emc`` (debugfs, Hz; readable as root only)."""
    gpu_folder = _gpu_devfreq(root)
    gpu_hz = _read_int(os.path.join(gpu_folder, "cur_freq")) if gpu_folder else None
    cpus = {}  # type: Dict[str, float]
    for number, folder in _cpu_folders(root):
        khz = _read_int(os.path.join(folder, "cpufreq", "scaling_cur_freq"))
        if khz is not None:
            cpus["cpu%d" % number] = khz / 1000.0
    emc_hz = None
    for relative in _EMC_RATE_FILES:
        emc_hz = _read_int(_path(root, relative))
        if emc_hz is not None:
            break
    return {
        "gpu": gpu_hz / 1e6 if gpu_hz is not None else None,
        "cpu": cpus,
        "emc": emc_hz / 1e6 if emc_hz is not None else None,
    }


def jetson_clocks_active(root="/"):
    # type: (str) -> Optional[bool]
    """Whether ``jetson_clocks`` is in effect, or None when that cannot be told.

    ``jetson_clocks`` pins each online CPU's and the GPU's minimum clock to its maximum; this is
    the test jetson-stats applies (``jetson_clocks_alive``: min == max for CPUs and GPU), read
    here straight from cpufreq/devfreq because ``jetson_clocks --show`` needs root. None off a
    Jetson or when the files are unreadable. A custom nvpmodel mode with min == max would also
    read True.
    """
    if not is_jetson(root):
        return None
    pairs = []  # type: List[Tuple[Optional[int], Optional[int]]]
    for _number, folder in _cpu_folders(root):
        if _read_text(os.path.join(folder, "online")) == "0":
            continue
        freq = os.path.join(folder, "cpufreq")
        pairs.append(
            (
                _read_int(os.path.join(freq, "scaling_min_freq")),
                _read_int(os.path.join(freq, "scaling_max_freq")),
            )
        )
    gpu_folder = _gpu_devfreq(root)
    if gpu_folder is None:
        return None
    gpu = (
        _read_int(os.path.join(gpu_folder, "min_freq")),
        _read_int(os.path.join(gpu_folder, "max_freq")),
    )
    pairs.append(gpu)
    readable = [(low, high) for low, high in pairs if low is not None and high is not None]
    if not readable or gpu not in readable:
        return None
    return all(low == high for low, high in readable)


def snapshot(root="/", run=None):
    # type: (str, Optional[Callable[[List[str]], Optional[str]]]) -> Dict[str, Any]
    """The device's conditions right now: ``temperatures_c``, ``clocks_mhz``, ``power_mode``
    (and ``power_mode_id``) from ``nvpmodel -q``, and ``jetson_clocks``. Each field is None or
    empty when this host does not offer it (no nvpmodel off a Jetson)."""
    runner = run if run is not None else run_command
    mode, mode_id = parse_nvpmodel(runner(["nvpmodel", "-q"]))
    return {
        "temperatures_c": read_temperatures(root),
        "clocks_mhz": read_clocks(root),
        "power_mode": mode,
        "power_mode_id": mode_id,
        "jetson_clocks": jetson_clocks_active(root),
    }


def _gpu_mhz(reading):
    # type: (Optional[Dict[str, Any]]) -> Optional[float]
    """GPU clock from a :func:`snapshot` (``clocks_mhz.gpu``) or a parsed tegrastats line
    (``gr3d_freq_mhz``)."""
    if not reading:
        return None
    clocks = reading.get("clocks_mhz")
    if isinstance(clocks, dict) and clocks.get("gpu") is not None:
        return float(clocks["gpu"])
    if reading.get("gr3d_freq_mhz") is not None:
        return float(reading["gr3d_freq_mhz"])
    return None


def clocks_dropped(before, after, tolerance=0.1):
    # type: (Optional[Dict[str, Any]], Optional[Dict[str, Any]], float) -> bool
    """True when the GPU clock fell by more than ``tolerance`` (10%) between two readings, the
    sign of thermal or power throttling during a run, so the agent re-measures. False when
    either clock is unknown: no evidence of throttling is not evidence of it."""
    first, second = _gpu_mhz(before), _gpu_mhz(after)
    if first is None or second is None or first <= 0:
        return False
    return second < first * (1.0 - tolerance)


# --------------------------------------------------------------------------- identity


def is_jetson(root="/"):
    # type: (str) -> bool
    """A Jetson: L4T's ``/etc/nv_tegra_release`` exists, or the device tree says nvidia,tegra*
    or Jetson."""
    if os.path.exists(_path(root, "etc/nv_tegra_release")):
        return True
    compatible = _read_text(_path(root, "proc/device-tree/compatible")) or ""
    model = _read_text(_path(root, "proc/device-tree/model")) or ""
    return "nvidia,tegra" in compatible or "jetson" in model.lower()


def _cpu_model(root):
    # type: (str) -> Optional[str]
    """The first ``model name`` in /proc/cpuinfo (x86; most ARM kernels print none)."""
    text = _read_text(_path(root, "proc/cpuinfo")) or ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    return None


def device_name(root="/"):
    # type: (str) -> str
    """A human name for the device: the device-tree model on a Jetson (e.g. "NVIDIA Jetson Nano
    Developer Kit"), else the CPU model and machine type (e.g. "AMD EPYC (x86_64)")."""
    model = _read_text(_path(root, "proc/device-tree/model"))
    if model:
        return model
    return "%s (%s)" % (_cpu_model(root) or "unknown CPU", platform.machine() or "unknown")
