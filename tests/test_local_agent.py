"""The embedded agent a campaign starts never outlives its driver, even one killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

DRIVER = """
import sys, time
from pathlib import Path
from optimizer.device.local_agent import start_local_agent
process, url = start_local_agent(Path(sys.argv[1]), "--backend", "onnxruntime")
print(process.pid, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_embedded_agent_dies_with_a_killed_driver(tmp_path: Path) -> None:
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(tmp_path / "cache")], stdout=subprocess.PIPE, text=True
    )
    agent_pid = int(driver.stdout.readline())
    assert _alive(agent_pid)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    deadline = time.monotonic() + 15
    while _alive(agent_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(agent_pid)
