"""Which device this is: a Jetson or not, and its human name."""

import os
import platform

from .files import path, read_text


def is_jetson(root="/"):
    # type: (str) -> bool
    """A Jetson: L4T's ``/etc/nv_tegra_release`` exists, or the device tree says nvidia,tegra*
    or Jetson."""
    if os.path.exists(path(root, "etc/nv_tegra_release")):
        return True
    compatible = read_text(path(root, "proc/device-tree/compatible")) or ""
    model = read_text(path(root, "proc/device-tree/model")) or ""
    return "nvidia,tegra" in compatible or "jetson" in model.lower()


def _cpu_model(root):
    # type: (str) -> Optional[str]
    """The first ``model name`` in /proc/cpuinfo (x86; most ARM kernels print none)."""
    text = read_text(path(root, "proc/cpuinfo")) or ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    return None


def device_name(root="/"):
    # type: (str) -> str
    """A human name for the device: the device-tree model on a Jetson (e.g. "NVIDIA Jetson Nano
    Developer Kit"), else the CPU model and machine type (e.g. "AMD EPYC (x86_64)")."""
    model = read_text(path(root, "proc/device-tree/model"))
    if model:
        return model
    return "%s (%s)" % (_cpu_model(root) or "unknown CPU", platform.machine() or "unknown")
