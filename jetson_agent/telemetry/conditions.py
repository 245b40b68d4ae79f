"""The conditions a latency was taken under: temperatures, clocks, power mode, jetson_clocks,
and whether the GPU clock dropped during a run (throttling)."""

import glob
import os
import re

from .files import numbered, path, read_int, read_text, run_command
from .identity import is_jetson

_GPU_DEVFREQ_RE = re.compile(r"gpu|ga10b|gv11b|gp10b|gb10b", re.IGNORECASE)
_POWER_MODE_RE = re.compile(r"NV Power Mode:\s*(\S+)")
_EMC_RATE_FILES = (
    "sys/kernel/debug/bpmp/debug/clk/emc/rate",  # JetPack 5/6 (BPMP clocks), Hz, root only
    "sys/kernel/debug/clk/emc/clk_rate",  # JetPack 4, Hz, root only
)


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
    zones = glob.glob(path(root, "sys/class/thermal/thermal_zone*"))
    temperatures = {}  # type: Dict[str, float]
    for _index, zone in numbered(zones, r"^thermal_zone(\d+)$"):
        kind = read_text(os.path.join(zone, "type"))
        millidegrees = read_int(os.path.join(zone, "temp"))
        if not kind or millidegrees is None:
            continue
        name = kind if kind not in temperatures else "%s.%s" % (kind, os.path.basename(zone))
        temperatures[name] = millidegrees / 1000.0
    return temperatures


def _gpu_devfreq(root):
    # type: (str) -> Optional[str]
    """The GPU's devfreq folder: 57000000.gpu (Nano), 17000000.gv11b (Xavier),
    17000000.ga10b or 17000000.gpu (Orin), found by name under ``/sys/class/devfreq``."""
    for folder in sorted(glob.glob(path(root, "sys/class/devfreq/*"))):
        if _GPU_DEVFREQ_RE.search(os.path.basename(folder)):
            return folder
    return None


def _cpu_folders(root):
    # type: (str) -> List[Tuple[int, str]]
    """``(N, /sys/devices/system/cpu/cpuN)`` for every CPU folder, in numeric order."""
    return numbered(glob.glob(path(root, "sys/devices/system/cpu/cpu[0-9]*")), r"^cpu(\d+)$")


def read_clocks(root="/"):
    # type: (str) -> Dict[str, Any]
    """Current clocks in MHz: ``gpu`` (devfreq ``cur_freq``, Hz), ``cpu`` per core
    (``scaling_cur_freq``, kHz) and ``emc`` (debugfs, Hz; readable as root only)."""
    gpu_folder = _gpu_devfreq(root)
    gpu_hz = read_int(os.path.join(gpu_folder, "cur_freq")) if gpu_folder else None
    cpus = {}  # type: Dict[str, float]
    for number, folder in _cpu_folders(root):
        khz = read_int(os.path.join(folder, "cpufreq", "scaling_cur_freq"))
        if khz is not None:
            cpus["cpu%d" % number] = khz / 1000.0
    emc_hz = None
    for relative in _EMC_RATE_FILES:
        emc_hz = read_int(path(root, relative))
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
        if read_text(os.path.join(folder, "online")) == "0":
            continue
        freq = os.path.join(folder, "cpufreq")
        pairs.append(
            (
                read_int(os.path.join(freq, "scaling_min_freq")),
                read_int(os.path.join(freq, "scaling_max_freq")),
            )
        )
    gpu_folder = _gpu_devfreq(root)
    if gpu_folder is None:
        return None
    gpu = (
        read_int(os.path.join(gpu_folder, "min_freq")),
        read_int(os.path.join(gpu_folder, "max_freq")),
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
