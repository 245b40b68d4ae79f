"""``tegrastats`` lines, parsed: memory, CPU and GPU loads and clocks, temperatures, rails."""

import re

from .rails import input_rail

TEGRASTATS_INTERVAL_MS = 100

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
    rail = input_rail(stats["rails_mw"])
    if rail is not None:
        stats["total_power_mw"] = stats["rails_mw"][rail]["current"]
        stats["total_power_rail"] = rail


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
