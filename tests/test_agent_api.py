"""The real agent over real HTTP on 127.0.0.1: measurement, cache, and every bad input."""

from __future__ import annotations

import json
import math
import statistics
import time
import uuid
from pathlib import Path

import pytest
from agent_helpers import RunningAgent, start_agent

from jetson_agent import multipart
from optimizer.device.client import AgentClient, MeasurementFailed

SPEC = {"warmup": 3, "iterations": 20, "repeats": 2}


def _post_model(agent: RunningAgent, data: bytes, spec: dict, token: str | None = "default"):
    boundary = uuid.uuid4().hex.encode()
    body = multipart.build(
        {
            "spec": (None, "application/json", json.dumps(spec).encode()),
            "model": ("m.onnx", "application/octet-stream", data),
        },
        boundary,
    )
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary.decode()}"}
    return agent.request("POST", "/v1/jobs", body, headers, token=token)


def test_measures_a_vit_with_consistent_statistics(agent: RunningAgent, vit_onnx: Path) -> None:
    client = AgentClient(agent.url)
    result = client.measure(vit_onnx, SPEC)
    latency = result["latency_ms"]
    samples = [x for run in result["samples_ms"] for x in run]
    assert result["status"] == "ok"
    assert latency["count"] == len(samples) == SPEC["iterations"] * SPEC["repeats"]
    assert (
        0 < latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    )
    assert math.isclose(latency["mean"], statistics.mean(samples), rel_tol=1e-9)
    assert math.isclose(latency["std"], statistics.stdev(samples), rel_tol=1e-9)
    assert math.isclose(latency["cv"], latency["std"] / latency["mean"], rel_tol=1e-9)
    assert math.isclose(latency["p50"], statistics.median(samples), rel_tol=1e-9)
    assert len(result["repeats"]) == SPEC["repeats"]
    assert result["backend"]["name"] == "onnxruntime"
    assert result["peak_memory_mb"] > 10
    assert result["cache"] == {"result_hit": False, "engine_hit": False}
    assert "onnxruntime.InferenceSession" in result["build"]["command"]
    assert result["model"]["inputs"] == {"input": [1, 3, 32, 32]}
    assert result["power"] is None  # no power rails on this host: absent, never invented
    if result["remeasured"]:
        assert result["other_attempt"]["latency_ms"]["count"] == latency["count"]

    started = time.perf_counter()
    again = client.measure(vit_onnx, SPEC)
    elapsed = time.perf_counter() - started
    assert again["cache"]["result_hit"] is True
    assert again["uploaded"] is False  # HEAD /v1/models/{sha} said the agent has it
    assert again["latency_ms"] == latency
    assert elapsed < 2.0, "a cache hit must not re-measure"

    fresh = client.measure(vit_onnx, dict(SPEC, use_cache=False))
    assert fresh["cache"] == {"result_hit": False, "engine_hit": True}
    assert fresh["samples_ms"] != result["samples_ms"]


def test_new_spec_on_known_model_reuses_the_engine(agent: RunningAgent, vit_onnx: Path) -> None:
    client = AgentClient(agent.url)
    client.measure(vit_onnx, {"warmup": 1, "iterations": 5, "repeats": 1})
    result = client.measure(vit_onnx, {"warmup": 1, "iterations": 6, "repeats": 1})
    assert result["cache"] == {"result_hit": False, "engine_hit": True}
    assert result["latency_ms"]["count"] == 6


def test_info_reports_backend_and_honest_precisions(agent: RunningAgent) -> None:
    status, info, _ = agent.request("GET", "/v1/info")
    assert status == 200
    assert info["backend"]["name"] == "onnxruntime"
    assert info["precisions"] == ["fp32", "int8"]  # a CPU has no fp16 kernels worth timing
    assert info["queue_length"] == 0
    assert info["device"]["jetson"] is False
    assert info["power_mode"] is None


def test_openapi_document_describes_every_route(agent: RunningAgent) -> None:
    status, doc, _ = agent.request("GET", "/v1/openapi.json", token=None)
    assert status == 200
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) == {
        "/v1/info",
        "/v1/jobs",
        "/v1/evaluations",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/outputs/{index}",
        "/v1/models",
        "/v1/models/{sha256}",
        "/v1/openapi.json",
    }


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"this is not an onnx model at all" * 10, "not a valid ONNX model"),
        (None, "not a valid ONNX model"),  # the real ViT, truncated
    ],
)
def test_broken_models_are_invalid_model_and_agent_survives(
    agent: RunningAgent, vit_onnx: Path, payload: bytes | None, message: str
) -> None:
    data = payload if payload is not None else vit_onnx.read_bytes()[:50_000]
    status, body, _ = _post_model(agent, data, SPEC)
    assert status == 202
    job = agent.wait_done(body["job_id"])
    assert job["result"]["status"] == "invalid_model"
    assert message in job["result"]["message"]
    assert agent.alive()


def test_fp16_on_cpu_is_unsupported_precision_at_once(agent: RunningAgent, vit_onnx: Path) -> None:
    with pytest.raises(MeasurementFailed) as failure:
        AgentClient(agent.url).measure(vit_onnx, dict(SPEC, precision="fp16"))
    assert failure.value.status == "unsupported_precision"
    assert failure.value.candidate_fault
    assert "fp32, int8" in str(failure.value)


def test_int8_of_an_unquantized_model_is_refused(agent: RunningAgent, vit_onnx: Path) -> None:
    with pytest.raises(MeasurementFailed) as failure:
        AgentClient(agent.url).measure(vit_onnx, dict(SPEC, precision="int8"))
    assert failure.value.status == "unsupported_precision"
    assert "quantize it first" in str(failure.value)


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ({"precision": "int4"}, "spec.precision must be one of"),
        ({"iterations": -5}, "spec.iterations must be between"),
        ({"iterations": 10, "duration_s": 1.0}, "not both"),
        ({"repeats": "3"}, "spec.repeats must be an integer"),
        ({"warmpu": 3}, "unknown spec field(s) warmpu"),
        ({"input_shape": [1, 3, -32, 32]}, "spec.input_shape must hold integers from 1 to"),
    ],
)
def test_bad_specs_are_400_with_the_field_named(
    agent: RunningAgent, vit_onnx: Path, spec: dict, fragment: str
) -> None:
    status, body, _ = _post_model(agent, vit_onnx.read_bytes(), spec)
    assert status == 400
    assert body["error"]["code"] == "bad_spec"
    assert fragment in body["error"]["message"]


def test_malformed_json_is_400(agent: RunningAgent) -> None:
    status, body, _ = agent.request(
        "POST", "/v1/jobs", b"{not json", {"Content-Type": "application/json"}
    )
    assert (status, body["error"]["code"]) == (400, "bad_json")
    boundary = "b0undary"
    raw = multipart.build(
        {"spec": (None, "application/json", b"{oops"), "model": (None, "x", b"abc")},
        boundary.encode(),
    )
    status, body, _ = agent.request(
        "POST", "/v1/jobs", raw, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    assert (status, body["error"]["code"]) == (400, "bad_json")
    assert "the spec field is not valid JSON" in body["error"]["message"]


def test_unknown_and_hostile_job_ids_are_404(agent: RunningAgent) -> None:
    for job_id in (uuid.uuid4().hex, "..%2F..%2Fetc%2Fpasswd", "../../etc/passwd", "abc"):
        status, body, _ = agent.request("GET", f"/v1/jobs/{job_id}")
        assert status == 404, job_id
        assert body["error"]["code"] in ("unknown_job", "not_found")


def test_model_presence_is_checked_by_sha(agent: RunningAgent, vit_onnx: Path) -> None:
    import hashlib

    sha = hashlib.sha256(b"never uploaded").hexdigest()
    assert agent.request("HEAD", f"/v1/models/{sha}")[0] == 404
    assert agent.request("HEAD", "/v1/models/..%2Fsecrets")[0] == 400
    status, body, _ = agent.request(
        "POST",
        "/v1/jobs",
        json.dumps({"model_sha256": sha, "spec": SPEC}).encode(),
        {"Content-Type": "application/json"},
    )
    assert (status, body["error"]["code"]) == (404, "unknown_model")


def test_unsupported_media_type_and_unknown_route(agent: RunningAgent) -> None:
    status, body, _ = agent.request("POST", "/v1/jobs", b"x", {"Content-Type": "text/plain"})
    assert (status, body["error"]["code"]) == (415, "unsupported_media_type")
    status, body, _ = agent.request("GET", "/v1/nothing")
    assert (status, body["error"]["code"]) == (404, "not_found")


def test_token_is_required_and_checked(tmp_path: Path, vit_onnx: Path) -> None:
    secured = start_agent(tmp_path, "--backend", "onnxruntime", token="s3cret-token")
    try:
        assert secured.request("GET", "/v1/info", token=None)[0] == 401
        status, body, headers = secured.request("GET", "/v1/info", token="wrong")
        assert status == 401
        assert body["error"]["code"] == "unauthorized"
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert secured.request("GET", "/v1/info")[0] == 200
        assert _post_model(secured, b"x", SPEC, token=None)[0] == 401
        result = AgentClient(secured.url, "s3cret-token").measure(vit_onnx, SPEC)
        assert result["status"] == "ok"
    finally:
        secured.stop()


def test_oversized_upload_is_413(tmp_path: Path) -> None:
    small = start_agent(tmp_path, "--backend", "onnxruntime", "--max-upload-mb", "1")
    try:
        status, body, _ = _post_model(small, b"\0" * (2 * 1024 * 1024), SPEC)
        assert status == 413
        assert "exceeds the agent's limit" in body["error"]["message"]
        assert small.alive()
    finally:
        small.stop()
