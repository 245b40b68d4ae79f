"""Start the real device agent as a subprocess on a free loopback port, for tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from optimizer.device.local_agent import start_local_agent, stop_local_agent

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


@dataclass
class RunningAgent:
    url: str
    process: subprocess.Popen
    token: str | None

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        token: str | None = "default",
    ) -> tuple[int, dict | None, dict[str, str]]:
        """One raw HTTP request; returns (status, JSON body or None, headers)."""
        headers = dict(headers or {})
        token = self.token if token == "default" else token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(self.url + path, body, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                raw, status, got = response.read(), response.status, dict(response.headers)
        except urllib.error.HTTPError as exc:
            raw, status, got = exc.read(), exc.code, dict(exc.headers)
        return status, (json.loads(raw) if raw else None), got

    def alive(self) -> bool:
        return self.process.poll() is None and self.request("GET", "/v1/openapi.json")[0] == 200

    def stop(self) -> None:
        stop_local_agent(self.process)

    def wait_done(self, job_id: str, polls: int = 120) -> dict:
        """Long-poll the job (5 s a poll) until it is done."""
        for _ in range(polls):
            status, job, _ = self.request("GET", f"/v1/jobs/{job_id}?wait=5")
            assert status == 200
            if job["state"] == "done":
                return job
        raise AssertionError("job never finished")


def start_agent(tmp: Path, *args: str, token: str | None = None) -> RunningAgent:
    """The real agent on a free loopback port; ``tests/`` is importable by its jobs so that
    ``--backend fault_backends:...`` works."""
    args = list(args)
    if token:
        token_file = tmp / "token"
        token_file.write_text(token + "\n")
        args += ["--token-file", str(token_file)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS)]))
    env.setdefault("JETSON_AGENT_ORT_THREADS", "1")
    process, url = start_local_agent(tmp / "agent-cache", *args, env=env)
    return RunningAgent(url, process, token)


def free_port() -> int:
    """A TCP port nothing listens on now (the OS's pick), for an agent that must come back
    on the same address after it is killed."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
