"""Run the device agent as a child process on a free loopback port: the embedded agent of a
campaign that names none, and the agent benchmarks and tests talk to."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path


class AgentStartError(RuntimeError):
    """The agent process did not come up; the message carries what it printed."""


def start_local_agent(
    cache_dir: Path, *args: str, env: Mapping[str, str] | None = None
) -> tuple[subprocess.Popen, str]:
    """Start ``python -m jetson_agent serve --port 0`` and return (process, its URL), read from
    the line the agent prints once it listens."""
    command = [
        sys.executable,
        "-m",
        "jetson_agent",
        "serve",
        "--port",
        "0",
        "--cache-dir",
        str(cache_dir),
        *args,
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=dict(env) if env is not None else None,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if "listening on " not in line:
        process.kill()
        process.wait()
        raise AgentStartError(f"the device agent did not start: {line.strip()!r}")
    return process, line.split("listening on ", 1)[1].split()[0]


def _die_with_parent() -> None:
    """In the child, before exec: Linux sends it SIGTERM when its parent dies, so an embedded
    agent never outlives a driver that was killed (SIGKILL leaves no chance to stop it). Linux
    ties this to the thread that started the child: start agents from a long-lived thread."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def stop_local_agent(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def local_agent(cache_dir: Path, *args: str, env: Mapping[str, str] | None = None) -> Iterator[str]:
    process, url = start_local_agent(cache_dir, *args, env=env)
    try:
        yield url
    finally:
        stop_local_agent(process)
