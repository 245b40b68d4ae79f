"""The agent's pure parts: statistics, multipart, cache eviction, spec, crash typing."""

from __future__ import annotations

import math
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
from jetson_agent.paired import block_iterations, time_paired
from jetson_agent.spec import MeasureSpec
from jetson_agent.stats import median_interval, summarize
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


# ------------------------------------------------------------------------------------------------
# The order-statistics interval of a median (paired jobs' speedup interval)


def _binomial_rank(count: int, confidence: float) -> int:
    """The largest k with 1 - 2 P(B <= k - 1) >= confidence, B ~ Binomial(count, 1/2), from
    exact integer binomial coefficients (0 when no k qualifies: the interval is the range)."""
    best = 0
    for k in range(1, count // 2 + 1):
        if 1 - 2 * sum(math.comb(count, i) for i in range(k)) / 2**count >= confidence:
            best = k
    return best


@pytest.mark.parametrize(
    "count, low_rank, high_rank, coverage",
    [
        (10, 2, 9, 1 - 2 * (1 + 10) / 2**10),  # x_(2), x_(9): 97.85 %
        (20, 6, 15, 1 - 2 * (1 + 20 + 190 + 1140 + 4845 + 15504) / 2**20),  # 95.86 %
    ],
)
def test_median_interval_takes_the_textbook_ranks(
    count: int, low_rank: int, high_rank: int, coverage: float
) -> None:
    rng = np.random.default_rng(count)
    values = [float(v) for v in rng.permutation(count)]  # the i-th smallest is i - 1
    low, high, got = median_interval(values, 0.95)
    assert (low, high) == (low_rank - 1, high_rank - 1)
    assert got == pytest.approx(coverage, rel=1e-12)
    assert got >= 0.95


def test_median_interval_agrees_with_the_binomial_for_every_size() -> None:
    for confidence in (0.9, 0.95, 0.99):
        for count in range(1, 121):
            values = [float(i) for i in range(count)]
            low, high, coverage = median_interval(values[::-1], confidence)
            k = _binomial_rank(count, confidence)
            if k == 0:
                assert (low, high) == (0, count - 1)
                assert coverage == pytest.approx(1 - 2 * 0.5**count)
                continue
            assert (low, high) == (k - 1, count - k), (confidence, count)
            exact = 1 - 2 * sum(math.comb(count, i) for i in range(k)) / 2**count
            assert coverage == pytest.approx(exact, rel=1e-9)
            assert coverage >= confidence


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5])
def test_median_interval_of_fewer_than_six_values_is_their_range(count: int) -> None:
    values = [3.0, 1.0, 4.0, 1.5, 9.0][:count]
    low, high, coverage = median_interval(values, 0.95)
    assert (low, high) == (min(values), max(values))
    assert coverage == pytest.approx(1 - 2 * 0.5**count)
    assert coverage < 0.95  # said honestly: too few rounds for a 95 % interval
    with pytest.raises(ValueError):
        median_interval([], 0.95)


@pytest.mark.parametrize("count", [6, 10, 17, 40])
def test_median_interval_covers_the_true_median_as_often_as_it_says(count: int) -> None:
    # Skewed, heavy-tailed values (like latency ratios): lognormal, true median exp(0) = 1.
    rng = np.random.default_rng(1234 + count)
    trials = 3000
    covered = 0
    for row in rng.lognormal(0.0, 0.5, size=(trials, count)):
        low, high, coverage = median_interval(list(row), 0.95)
        covered += low <= 1.0 <= high
    assert coverage >= 0.95
    rate = covered / trials
    # Distribution-free and exact for continuous values: the rate is the stated coverage,
    # within binomial noise (4 standard errors).
    assert abs(rate - coverage) < 4 * math.sqrt(coverage * (1 - coverage) / trials)
    assert rate >= 0.94


# ------------------------------------------------------------------------------------------------
# Paired specs and the timing loop


def test_paired_spec_defaults_keys_and_reference_spec() -> None:
    sha = "b" * 64
    paired = MeasureSpec.from_dict({"reference": {"model_sha256": sha}})
    assert paired.paired and paired.reference == {"model_sha256": sha, "precision": "fp32"}
    assert (paired.iterations, paired.repeats, paired.min_repeat_ms) == (10, 10, 50.0)
    assert (paired.ratio_ci, paired.max_time_s) == (0.02, 30.0)
    plain = MeasureSpec.from_dict({})
    assert (plain.min_repeat_ms, plain.ratio_ci, plain.max_time_s) == (0.0, None, None)
    assert MeasureSpec.from_dict({"reference": {"model_sha256": sha}, "ratio_ci": 0}).ratio_ci == 0

    fp16 = MeasureSpec.from_dict({"reference": {"model_sha256": sha, "precision": "fp16"}})
    other = MeasureSpec.from_dict({"reference": {"model_sha256": "c" * 64}})
    model = "a" * 64
    keys = {result_key(model, s, "v1", "dev") for s in (plain, paired, fp16, other)}
    assert len(keys) == 4  # unpaired, and one entry per reference sha and precision
    # The reference is built like an unpaired job of it at its precision: one engine for both.
    reference = fp16.for_reference()
    assert reference.precision == "fp16" and not reference.paired
    assert engine_key(sha, reference, "v1", "dev") == engine_key(
        sha, MeasureSpec.from_dict({"precision": "fp16"}), "v1", "dev"
    )


def test_block_iterations_last_min_repeat_ms_at_least() -> None:
    spec = MeasureSpec.from_dict({"reference": {"model_sha256": "b" * 64}, "iterations": 4})
    assert block_iterations([1.0, 9.0, 1.0, 1.0, 1.0], spec) == 50  # 50 ms at the median 1 ms
    assert block_iterations([20.0] * 5, spec) == 4  # slow models: the spec's iterations
    spec.min_repeat_ms = 0.0
    assert block_iterations([0.01] * 5, spec) == 4


class _FixedSession:
    def __init__(self, ms: float, cold: bool = False):
        self.ms = ms
        self.cold_start = cold
        self.calls: list[tuple[int, int]] = []

    def time(self, warmup, iterations, duration_s):
        self.calls.append((warmup, iterations))
        return [self.ms] * iterations


def test_time_paired_stops_at_the_target_and_warms_up_cold_sessions() -> None:
    spec = MeasureSpec.from_dict(
        {
            "reference": {"model_sha256": "b" * 64},
            "warmup": 3,
            "iterations": 5,
            "repeats": 7,
            "min_repeat_ms": 0,
        }
    )
    candidate, reference = _FixedSession(2.0), _FixedSession(5.0, cold=True)
    blocks, paired = time_paired(candidate, reference, spec)
    # Steady ratios: the interval has no width, met at the least number of rounds.
    assert paired["stopped_by"] == "target" and paired["target_met"] is True
    assert paired["rounds"] == 7 and len(blocks) == 7
    assert paired["speedup"] == 2.5 and paired["speedup_ci"] == [2.5, 2.5]
    # Calibration first (with the warm-up), then blocks: a cold session warms up in each.
    assert candidate.calls == [(3, 5)] + [(0, 5)] * 7
    assert reference.calls == [(3, 5)] + [(3, 5)] * 7


def test_openapi_documents_paired_jobs_with_the_spec_limits() -> None:
    from jetson_agent import spec as limits
    from jetson_agent.openapi import openapi_document

    doc = openapi_document()
    fields = doc["components"]["schemas"]["Spec"]["properties"]
    assert set(fields) == set(MeasureSpec.FIELDS)
    assert fields["reference"]["required"] == ["model_sha256"]
    assert fields["reference"]["properties"]["precision"]["enum"] == list(limits.PRECISIONS)
    assert fields["min_repeat_ms"]["maximum"] == limits.MAX_REPEAT_MS
    assert (fields["ratio_ci"]["minimum"], fields["ratio_ci"]["maximum"]) == (0, 1)
    assert fields["max_time_s"]["maximum"] == limits.MAX_DURATION_S
    assert fields["repeats"]["maximum"] == limits.MAX_ROUNDS
    upload = doc["paths"]["/v1/models"]["post"]
    assert set(upload["responses"]) == {"201", "400", "401", "411", "413"}
    jobs = doc["paths"]["/v1/jobs"]["post"]["responses"]
    assert "unknown_reference" in jobs["404"]["description"]
    assert "reference_mismatch" in jobs["422"]["description"]
    assert "input_mismatch" in jobs["422"]["description"]
    paired = doc["components"]["schemas"]["Paired"]["properties"]
    assert paired["stopped_by"]["enum"] == ["target", "time_cap", "rounds"]
    result = doc["components"]["schemas"]["Result"]["properties"]
    assert result["paired"] == {"$ref": "#/components/schemas/Paired"}

    def walk(node):  # OpenAPI 3.0: exclusiveMinimum is a boolean beside minimum
        if isinstance(node, dict):
            if "exclusiveMinimum" in node:
                assert node["exclusiveMinimum"] is True and "minimum" in node, node
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
