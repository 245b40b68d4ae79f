"""The agent against a hostile client and a stopped or killed agent: every malformed request is
one JSON error with a fitting status (and the agent stays up), no queued model is evicted, no job
outlives the agent, and what a job may write is bounded."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

import psutil
import pytest
from agent_helpers import RunningAgent, start_agent
from model_factory import constant_bomb_model, export_tiny_vit, string_input_model

from optimizer.device.client import AgentClient

TOKEN = "hardening-token"
AUTH = f"Authorization: Bearer {TOKEN}\r\n".encode()
QUICK = {"warmup": 1, "iterations": 3, "repeats": 1}
UPLOAD_CAP = 8 * 1024 * 1024  # --max-upload-mb 8


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> RunningAgent:
    folder = tmp_path_factory.mktemp("guarded")
    running = start_agent(folder, "--backend", "onnxruntime", "--max-upload-mb", "8", token=TOKEN)
    yield running
    running.stop()


def _exchange(agent: RunningAgent, raw: bytes, half_close: bool = False) -> tuple[int, dict, bytes]:
    """Send raw bytes, read the whole answer: (status, headers, body)."""
    host, port = agent.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        try:
            sock.sendall(raw)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the agent may answer and close before reading everything sent
        answer = b""
        while True:
            try:
                chunk = sock.recv(1 << 16)
            except ConnectionResetError:
                break
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


def _request(method: str, path: str, headers: bytes = b"", body: bytes = b"") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: agent\r\n".encode() + AUTH + headers + b"\r\n" + body


def _post(path: str, body: bytes, content_type: str = "application/octet-stream") -> bytes:
    length = f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n".encode()
    return _request("POST", path, length, body)


def _job_json(spec: object, sha: str = "0" * 64) -> bytes:
    return _post(
        "/v1/jobs", json.dumps({"model_sha256": sha, "spec": spec}).encode(), "application/json"
    )


def _multipart(parts: list[tuple[str, bytes]]) -> bytes:
    boundary = "hostile-boundary"
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        + data
        + b"\r\n"
        for name, data in parts
    )
    body += f"--{boundary}--\r\n".encode()
    return _post("/v1/jobs", body, f"multipart/form-data; boundary={boundary}")


def _deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


SPEC = json.dumps(QUICK).encode()
# (request, send then half-close, status, error code): the raw input a careless or hostile client
# sends, and the one JSON answer it must get.
HOSTILE: dict[str, tuple[bytes, bool, int, str]] = {
    "Content-Length -1 (read to the end)": (
        _request("POST", "/v1/models", b"Content-Length: -1\r\n", b"\0" * (2 * UPLOAD_CAP)),
        True,
        400,
        "bad_request",
    ),
    "Content-Length +5": (
        _request("POST", "/v1/models", b"Content-Length: +5\r\n", b"12345"),
        False,
        400,
        "bad_request",
    ),
    "Content-Length in exponent form": (
        _request("POST", "/v1/models", b"Content-Length: 1e1\r\n", b"0123456789"),
        False,
        400,
        "bad_request",
    ),
    "two different Content-Lengths": (
        _request("POST", "/v1/models", b"Content-Length: 3\r\nContent-Length: 5\r\n", b"12345"),
        False,
        400,
        "bad_request",
    ),
    "oversized Content-Length": (
        _request("POST", "/v1/models", f"Content-Length: {2 * UPLOAD_CAP}\r\n".encode()),
        True,
        413,
        "payload_too_large",
    ),
    "no Content-Length": (_request("POST", "/v1/models"), False, 411, "length_required"),
    "chunked body": (
        _request("POST", "/v1/models", b"Transfer-Encoding: chunked\r\n", b"3\r\nabc\r\n0\r\n\r\n"),
        False,
        411,
        "length_required",
    ),
    "chunked body with a Content-Length": (
        _request(
            "POST",
            "/v1/models",
            b"Transfer-Encoding: chunked\r\nContent-Length: 12\r\n",
            b"3\r\nabc\r\n0\r\n\r\n",
        ),
        False,
        411,
        "length_required",
    ),
    "body shorter than its Content-Length": (
        _request("POST", "/v1/models", b"Content-Length: 100\r\n", b"short"),
        True,
        400,
        "bad_request",
    ),
    "empty model upload": (_post("/v1/models", b""), False, 400, "bad_request"),
    "JSON nested 100,000 deep": (
        _post("/v1/jobs", _deep(100_000), "application/json"),
        False,
        400,
        "bad_json",
    ),
    "spec part nested 100,000 deep": (
        _multipart([("spec", _deep(100_000)), ("model", b"onnx")]),
        False,
        400,
        "bad_json",
    ),
    "spec nested inside the spec": (
        _job_json({"input_shapes": {"x": json.loads(_deep(50))}}),
        False,
        400,
        "bad_spec",
    ),
    "duplicate spec parts": (
        _multipart([("spec", SPEC), ("spec", SPEC), ("model", b"onnx")]),
        False,
        400,
        "bad_request",
    ),
    "an extra multipart part": (
        _multipart([("spec", SPEC), ("model", b"onnx"), ("file", b"x")]),
        False,
        400,
        "bad_request",
    ),
    "null for every field": (
        _job_json(dict.fromkeys(["warmup", "precision", "use_cache", "iterations"])),
        False,
        404,  # nulls are "not given": a valid spec, for a model the agent lacks
        "unknown_model",
    ),
    "input_shapes not an object": (_job_json({"input_shapes": []}), False, 400, "bad_spec"),
    "a dimension past 2^20": (
        _job_json({"input_shape": [1, 3, 1 << 21, 1]}),
        False,
        400,
        "bad_spec",
    ),
    "batch past 4096": (_job_json({"batch_size": 4097}), False, 400, "bad_spec"),
    "TRACE": (_request("TRACE", "/v1/info"), False, 405, "method_not_allowed"),
    "a method http.server has no name for": (
        _request("QUERY", "/v1/jobs"),
        False,
        405,
        "method_not_allowed",
    ),
    "GET on a POST-only path": (_request("GET", "/v1/models"), False, 405, "method_not_allowed"),
    "DELETE on an unknown path": (_request("DELETE", "/v1/nothing"), False, 404, "not_found"),
    "a malformed request line": (b"GARBAGE / HTTP/1.1 extra\r\n\r\n", False, 400, "bad_request"),
    "a request line over 64 KiB": (
        b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n",
        False,
        414,
        "request_uri_too_long",
    ),
    "a header over 64 KiB": (
        _request("GET", "/v1/info", b"X-Big: " + b"a" * 70_000 + b"\r\n"),
        False,
        431,
        "request_header_fields_too_large",
    ),
    "no token": (
        b"GET /v1/info HTTP/1.1\r\nHost: agent\r\n\r\n",
        False,
        401,
        "unauthorized",
    ),
}


@pytest.mark.parametrize("raw, half_close, status, code", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_requests_get_one_json_error(
    guarded: RunningAgent, raw: bytes, half_close: bool, status: int, code: str
) -> None:
    rss_before = psutil.Process(guarded.process.pid).memory_info().rss
    got, headers, body = _exchange(guarded, raw, half_close)
    assert got == status, body[:300]
    assert headers.get("Content-Type") == "application/json"
    assert json.loads(body)["error"]["code"] == code
    if status == 405:
        assert headers["Allow"]
    assert guarded.alive()
    # Nothing read past the cap: the agent did not buffer a 2 MiB body it should have refused.
    assert psutil.Process(guarded.process.pid).memory_info().rss - rss_before < UPLOAD_CAP


def test_wait_must_be_one_number(guarded: RunningAgent, vit_onnx: Path) -> None:
    client = AgentClient(guarded.url, TOKEN)
    job_id = client.submit(vit_onnx, QUICK)["job_id"]
    for query in ("wait=abc", "wait=", "wait=nan", "wait=1&wait=2"):
        got, _, body = _exchange(guarded, _request("GET", f"/v1/jobs/{job_id}?{query}"))
        assert (got, json.loads(body)["error"]["code"]) == (400, "bad_request"), query
    got, _, body = _exchange(guarded, _request("GET", f"/v1/jobs/{job_id}?wait=1e300"))
    assert got == 200 and json.loads(body)["job_id"] == job_id  # clamped to 30 s
    got, _, body = _exchange(guarded, _request("HEAD", "/v1/models/not-a-sha"))
    assert (got, body) == (400, b"")
    no_token = f"HEAD /v1/models/{'0' * 64} HTTP/1.1\r\nHost: agent\r\n\r\n".encode()
    assert _exchange(guarded, no_token)[0] == 401


def _spec_problem(agent: RunningAgent, model: Path, spec: dict) -> tuple[int, str, str]:
    client = AgentClient(agent.url, TOKEN)
    sha = client.upload_model(model)
    got, _, body = _exchange(agent, _job_json(dict(QUICK, **spec), sha))
    error = json.loads(body).get("error", {})
    return got, error.get("code", ""), error.get("message", "")


SPEC_MISTAKES = {
    "input_shape of another rank": ({"input_shape": [1, 3, 32]}, "a 1x3x32 tensor"),
    "input_shape against fixed dims": ({"input_shape": [1, 3, 64, 64]}, "model takes 1x3x32x32"),
    "input_shapes naming no input": ({"input_shapes": {"image": [1, 3, 32, 32]}}, "names image"),
}


@pytest.mark.parametrize("spec, fragment", SPEC_MISTAKES.values(), ids=SPEC_MISTAKES.keys())
def test_shapes_that_do_not_fit_the_model_are_the_clients_mistake(
    guarded: RunningAgent, vit_onnx: Path, spec: dict, fragment: str
) -> None:
    got, code, message = _spec_problem(guarded, vit_onnx, spec)
    assert (got, code) == (422, "input_mismatch")
    assert fragment in message


def test_an_input_the_agent_cannot_feed_is_refused_at_submission(
    guarded: RunningAgent, tmp_path: Path
) -> None:
    got, code, message = _spec_problem(guarded, string_input_model(tmp_path / "s.onnx"), {})
    assert (got, code) == (422, "input_mismatch")
    assert "element type 8, which the agent cannot feed" in message


@pytest.mark.slow
def test_queued_jobs_keep_their_models_in_a_small_cache(tmp_path: Path) -> None:
    models = [export_tiny_vit(tmp_path / f"vit{depth}.onnx", depth=depth) for depth in (1, 2, 3, 4)]
    total = sum(model.stat().st_size for model in models)
    assert total > 1024 * 1024, "the models must overflow the 1 MB cache"
    agent = start_agent(tmp_path, "--backend", "onnxruntime", "--cache-max-mb", "1")
    try:
        client = AgentClient(agent.url)
        jobs = [client.submit(model, QUICK)["job_id"] for model in models]
        results = [agent.wait_done(job_id)["result"] for job_id in jobs]
    finally:
        agent.stop()
    assert [result["status"] for result in results] == ["ok"] * 4, results


def _hung_job(tmp_path: Path, vit_onnx: Path) -> tuple[RunningAgent, psutil.Process]:
    """An agent whose job hangs in its build, and that job's process."""
    agent = start_agent(tmp_path, "--backend", "fault_backends:BuildHangBackend")
    AgentClient(agent.url).submit(vit_onnx, QUICK)
    deadline = time.monotonic() + 60
    while True:
        jobs = [
            child
            for child in psutil.Process(agent.process.pid).children(recursive=True)
            if "jetson_agent.job" in " ".join(child.cmdline())
        ]
        if jobs:
            return agent, jobs[0]
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.2)


def _gone(process: psutil.Process, within_s: float) -> bool:
    try:
        process.wait(within_s)
    except psutil.TimeoutExpired:
        return False
    return True


def _scratch(tmp_path: Path) -> list[str]:
    """What agents keep under the cache's jobs/: one folder per agent process, its jobs' inside."""
    jobs = tmp_path / "agent-cache" / "jobs"
    return sorted(str(path.relative_to(jobs)) for path in jobs.rglob("*"))


@pytest.mark.slow
def test_a_stopped_agent_leaves_no_job_and_no_scratch(tmp_path: Path, vit_onnx: Path) -> None:
    agent, job = _hung_job(tmp_path, vit_onnx)
    assert _scratch(tmp_path)  # the running job's folder
    agent.process.send_signal(signal.SIGTERM)
    assert agent.process.wait(30) == 0
    assert _gone(job, 5), "the job outlived the agent"
    assert _scratch(tmp_path) == []


@pytest.mark.slow
def test_a_killed_agent_takes_its_job_and_the_next_one_clears_its_scratch(
    tmp_path: Path, vit_onnx: Path
) -> None:
    agent, job = _hung_job(tmp_path, vit_onnx)
    agent.process.kill()
    agent.process.wait(10)
    assert _gone(job, 10), "the job outlived the killed agent"
    assert _scratch(tmp_path)  # nobody removed it
    again = start_agent(tmp_path, "--backend", "onnxruntime")
    try:
        assert _scratch(tmp_path) == [str(again.process.pid)]  # its own, empty
        assert AgentClient(again.url).measure(vit_onnx, QUICK)["status"] == "ok"
    finally:
        again.stop()
    assert _scratch(tmp_path) == []


@pytest.mark.slow
def test_a_second_agent_on_one_cache_leaves_the_first_ones_job_alone(
    tmp_path: Path, vit_onnx: Path
) -> None:
    first, job = _hung_job(tmp_path, vit_onnx)  # as a 'vitopt export' beside a running campaign
    try:
        second = start_agent(tmp_path, "--backend", "onnxruntime")
        try:
            assert job.is_running()
            assert any(path.startswith(f"{first.process.pid}/") for path in _scratch(tmp_path))
        finally:
            second.stop()
    finally:
        first.stop()


def test_a_job_cannot_write_a_file_past_its_cap(tmp_path: Path) -> None:
    bomb = constant_bomb_model(tmp_path / "bomb.onnx")
    assert bomb.stat().st_size < 1000
    agent = start_agent(tmp_path, "--backend", "onnxruntime", "--cache-max-mb", "4")
    try:
        cap = agent.request("GET", "/v1/info")[1]["limits"]["max_file_bytes"]
        assert cap == 1024 * 1024  # a quarter of the cache
        result = AgentClient(agent.url).measure(bomb, QUICK)
    finally:
        agent.stop()
    assert result["status"] == "ok"  # the model runs; its 64 MB optimised graph is not kept
    assert "not cached: larger than the job's file size cap" in result["build"]["command"]
    cache = tmp_path / "agent-cache"
    files = [path for path in cache.rglob("*") if path.is_file()]
    assert files and max(path.stat().st_size for path in files) <= cap
