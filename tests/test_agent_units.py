"""The agent's pure parts: statistics, multipart, cache eviction, spec, crash typing."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from jetson_agent import multipart
from jetson_agent.backends.onnxruntime_backend import OnnxRuntimeBackend
from jetson_agent.cache import DiskCache, engine_key, result_key
from jetson_agent.errors import SpecError
from jetson_agent.model_check import inspect_model
from jetson_agent.spec import MeasureSpec
from jetson_agent.stats import summarize
from jetson_agent.supervisor import JobProcess


def test_percentiles_match_numpy_linear_interpolation() -> None:
    rng = np.random.default_rng(0)
    samples = list(rng.gamma(2.0, 1.5, size=257))
    stats = summarize(samples)
    for q in (50, 90, 99):
        assert stats[f"p{q}"] == pytest.approx(np.percentile(samples, q), rel=1e-12)
    assert stats["std"] == pytest.approx(np.std(samples, ddof=1), rel=1e-12)
    assert stats["count"] == 257
    assert summarize([4.0])["std"] == 0.0


def test_multipart_round_trips_binary_bytes() -> None:
    data = bytes(range(256)) * 40 + b"\r\n--not-a-boundary\r\n\r\n" + b"\r\n"
    body = multipart.build(
        {"spec": (None, "application/json", b'{"a": 1}'), "model": ("m.onnx", "x", data)},
        b"XyZ123",
    )
    fields = multipart.parse(body, multipart.boundary_of("multipart/form-data; boundary=XyZ123"))
    assert fields == {"spec": b'{"a": 1}', "model": data}


@pytest.mark.parametrize(
    "body",
    [b"garbage", b"--B\r\nno header end", b"--B\r\nContent-Type: x\r\n\r\ndata\r\n--B--\r\n"],
)
def test_multipart_rejects_malformed_bodies(body: bytes) -> None:
    with pytest.raises(multipart.MultipartError):
        multipart.parse(body, b"B")


def test_cache_evicts_least_recently_used_and_spares_protected(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, max_bytes=2500)
    shas = [cache.put_model(bytes([i]) * 1000) for i in range(3)]
    for age, sha in enumerate(shas):  # oldest first
        stamp = time.time() - 100 + age
        os.utime(cache.model_path(sha), (stamp, stamp))
    assert cache.has_model(shas[0])  # touching makes shas[0] the most recent
    removed = cache.evict(protect=[cache.model_path(shas[1])])
    assert removed == [cache.model_path(shas[2])]
    assert cache.size_bytes() == 2000
    with pytest.raises(ValueError):
        cache.model_path("../../etc/passwd")


def test_cache_keys_separate_what_changes_a_measurement() -> None:
    base = MeasureSpec.from_dict({"iterations": 10})
    more = MeasureSpec.from_dict({"iterations": 20})
    fp16 = MeasureSpec.from_dict({"iterations": 10, "precision": "fp16"})
    sha = "a" * 64
    assert engine_key(sha, base, "v1", "dev") == engine_key(sha, more, "v1", "dev")
    assert engine_key(sha, base, "v1", "dev") != engine_key(sha, fp16, "v1", "dev")
    assert result_key(sha, base, "v1", "dev") != result_key(sha, more, "v1", "dev")
    assert result_key(sha, base, "v1", "dev") != result_key(sha, base, "v2", "dev")
    assert result_key(sha, base, "v1", "dev") != result_key(sha, base, "v1", "other")


def test_spec_defaults_and_errors() -> None:
    spec = MeasureSpec.from_dict({})
    assert (spec.precision, spec.iterations, spec.repeats, spec.warmup) == ("fp32", 100, 3, 10)
    with pytest.raises(SpecError, match="spec must be a JSON object"):
        MeasureSpec.from_dict([1])
    with pytest.raises(SpecError, match=r"spec\.repeats must be between 1 and 20"):
        MeasureSpec.from_dict({"repeats": 0})


def test_damaged_cached_engine_is_rebuilt_not_blamed_on_the_model(
    tmp_path: Path, vit_onnx: Path
) -> None:
    model = inspect_model(str(vit_onnx))
    spec = MeasureSpec.from_dict({"iterations": 3})
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"half-written engine")
    backend = OnnxRuntimeBackend()
    session, info = backend.prepare(str(vit_onnx), model, spec, str(engine))
    assert info.engine_cache_hit is False
    assert len(session.time(1, 3, None)) == 3
    _session, again = backend.prepare(str(vit_onnx), model, spec, str(engine))
    assert again.engine_cache_hit is True


@pytest.mark.parametrize(
    "returncode, phase, status",
    [
        (-signal.SIGKILL, "run", "out_of_memory"),
        (-signal.SIGSEGV, "build", "build_failed"),
        (-signal.SIGSEGV, "run", "infra_error"),
        (3, "validate", "infra_error"),
    ],
)
def test_a_job_that_dies_is_typed_from_how_it_died(
    returncode: int, phase: str, status: str
) -> None:
    result = JobProcess._died(returncode, phase, "last words")
    assert result["status"] == status
    assert phase in result["message"]
    assert "last words" in result["message"]
