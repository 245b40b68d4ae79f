"""Reading what a device offers: files under a root (sysfs, procfs, the device tree, read under
a test's recorded tree as under ``/``) and commands that may be absent. Every reader answers
None for what is not there, never a guess."""

import os
import re
import shutil
import subprocess


def path(root, relative):
    # type: (str, str) -> str
    """``relative`` (an absolute device path without its leading slash) under ``root``."""
    return os.path.join(root, relative.lstrip("/"))


def read_text(path):
    # type: (str) -> Optional[str]
    """File contents without surrounding whitespace or device-tree NULs; None when unreadable
    (absent, permission denied, or a sensor that errors on read)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    return data.decode("utf-8", "replace").strip().strip("\x00").strip()


def read_int(path):
    # type: (str) -> Optional[int]
    """The leading integer of a sysfs file (``polling_delay_0`` reads "0 ms"); None if absent."""
    text = read_text(path)
    if not text:
        return None
    try:
        return int(text.split()[0])
    except ValueError:
        return None


def numbered(paths, pattern):
    # type: (List[str], str) -> List[Tuple[int, str]]
    """``(N, path)`` for paths whose basename matches ``pattern`` with one integer group, in
    numeric order (so thermal_zone10 sorts after thermal_zone9)."""
    out = []
    for path in paths:
        match = re.match(pattern, os.path.basename(path))
        if match:
            out.append((int(match.group(1)), path))
    return sorted(out)


def which(program):
    # type: (str) -> Optional[str]
    """``program``'s path if it can be run: an explicit path is checked as is, a bare name is
    looked up on PATH."""
    if os.sep in program:
        return program if os.access(program, os.X_OK) else None
    return shutil.which(program)


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
