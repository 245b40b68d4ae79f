"""Start the real device agent as a subprocess on a free loopback port, for tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

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
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_agent(tmp: Path, *args: str, token: str | None = None) -> RunningAgent:
    """Run ``python -m jetson_agent serve --port 0 ...`` and wait for its listening line."""
    command = [
        sys.executable,
        "-m",
        "jetson_agent",
        "serve",
        "--port",
        "0",
        "--cache-dir",
        str(tmp / "agent-cache"),
        *args,
    ]
    if token:
        token_file = tmp / "token"
        token_file.write_text(token + "\n")
        command += ["--token-file", str(token_file)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS)]))
    env.setdefault("JETSON_AGENT_ORT_THREADS", "1")
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=tmp,
    )
    deadline = time.monotonic() + 60
    assert process.stdout is not None
    line = process.stdout.readline()
    if "listening on " not in line or time.monotonic() > deadline:
        process.kill()
        raise RuntimeError(f"agent did not start: {line!r}")
    url = line.split("listening on ", 1)[1].split()[0]
    return RunningAgent(url, process, token)
