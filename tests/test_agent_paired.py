"""Paired jobs on the real agent over real HTTP on 127.0.0.1 (onnxruntime backend, no mocks).

A paired job times a candidate and a reference in alternating blocks in one process and
reports their speedup with an order-statistics interval; everything here is checked from the
outside, from what the agent returns: the interval is re-derived from the returned samples,
the alternation from the blocks' timestamps, and the quiet lock from a separate process whose
"training steps" must never overlap the timed blocks.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import onnx
import pytest
from agent_helpers import REPO, RunningAgent, start_agent
from model_factory import export_tiny_vit

from jetson_agent import multipart
from jetson_agent.quiet import DeviceLock
from jetson_agent.stats import median_interval
from optimizer.device.client import AgentClient, Reference, sha256_file

# Small blocks: a few iterations of ~1 ms models, stretched to 25 ms by min_repeat_ms.
FAST = {"warmup": 2, "iterations": 3, "min_repeat_ms": 25.0}
ROUNDS = 12
UNKNOWN_SHA = "0" * 64
QUANTIZE = (
    "import sys; from onnxruntime.quantization import QuantType, quantize_dynamic; "
    "quantize_dynamic(sys.argv[1], sys.argv[2], weight_type=QuantType.QInt8)"
)


@pytest.fixture(scope="module")
def models(
    tmp_path_factory: pytest.TempPathFactory, vit_onnx: Path, vit_reference_onnx: Path
) -> dict[str, Path]:
    """The candidate (a 2-block ViT) and references of the same inputs (4 and 3 blocks: slower),
    a copy of the 3-block one under another sha, an int8 (dynamically quantized) reference, and
    a ViT fed 48x48 images instead of 32x32."""
    folder = tmp_path_factory.mktemp("paired-models")
    found = {
        "candidate": vit_onnx,
        "reference": vit_reference_onnx,
        "other": export_tiny_vit(folder / "three.onnx", depth=3),
        "wide": export_tiny_vit(folder / "wide.onnx", img_size=48),
    }
    copy = onnx.load(str(found["other"]))
    copy.doc_string = "the same graph under another sha256"
    onnx.save(copy, str(folder / "copy.onnx"))
    found["copy"] = folder / "copy.onnx"
    # In a child process: importing onnxruntime.quantization appends onnxruntime/transformers
    # (which holds an optimizer.py) to sys.path, and a later spawned test process that inherits
    # this one's path would then import that file as vitopt's ``optimizer``.
    subprocess.run(
        [sys.executable, "-c", QUANTIZE, str(found["reference"]), str(folder / "deep-int8.onnx")],
        check=True,
    )
    found["int8"] = folder / "deep-int8.onnx"
    return found


@pytest.fixture(scope="module")
def lock_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("quiet-lock")


@pytest.fixture(scope="module")
def paired_agent(tmp_path_factory: pytest.TempPathFactory, lock_dir: Path) -> RunningAgent:
    running = start_agent(
        tmp_path_factory.mktemp("paired-agent"),
        "--backend",
        "onnxruntime",
        "--quiet-lock",
        str(lock_dir),
    )
    yield running
    running.stop()


def _upload(agent: RunningAgent, path: Path) -> str:
    status, body, headers = agent.request(
        "POST", "/v1/models", path.read_bytes(), {"Content-Type": "application/octet-stream"}
    )
    assert status == 201, body
    assert headers["Location"] == "/v1/models/" + body["model_sha256"]
    return body["model_sha256"]


def _submit(agent: RunningAgent, sha: str, spec: dict) -> tuple[int, dict]:
    body = json.dumps({"model_sha256": sha, "spec": spec}).encode()
    status, payload, _ = agent.request(
        "POST", "/v1/jobs", body, {"Content-Type": "application/json"}
    )
    return status, payload


def _measure_any(agent: RunningAgent, sha: str, spec: dict) -> dict:
    status, payload = _submit(agent, sha, spec)
    assert status == 202, payload
    return agent.wait_done(payload["job_id"])


def _measure(agent: RunningAgent, sha: str, spec: dict) -> dict:
    job = _measure_any(agent, sha, spec)
    assert job["result"]["status"] == "ok", job["result"]
    return job


def _ranks(count: int, confidence: float = 0.95) -> int:
    """The k of the order-statistics interval [x_(k), x_(n-k+1)] of the median, from the
    binomial tail directly (math.comb), independently of jetson_agent.stats; 0: the range."""
    best = 0
    for k in range(1, count // 2 + 1):
        below = sum(math.comb(count, i) for i in range(k)) / 2**count  # P(B <= k - 1)
        if 1 - 2 * below >= confidence:
            best = k
    return best


@pytest.fixture(scope="module")
def shas(paired_agent: RunningAgent, models: dict[str, Path]) -> dict[str, str]:
    """The candidate and the 4-block reference, uploaded raw (POST /v1/models)."""
    return {name: _upload(paired_agent, models[name]) for name in ("candidate", "reference")}


@pytest.fixture(scope="module")
def paired_job(paired_agent: RunningAgent, shas: dict[str, str]) -> dict:
    """One paired job by reference sha, exactly ROUNDS rounds (ratio_ci 0: no adaptive stop)."""
    spec = dict(FAST, repeats=ROUNDS, ratio_ci=0, reference={"model_sha256": shas["reference"]})
    return _measure(paired_agent, shas["candidate"], spec)


# ------------------------------------------------------------------------------------------------
# The result: both distributions, a speedup whose interval the host re-derives


def test_speedup_and_interval_rederive_from_the_returned_samples(
    paired_job: dict, shas: dict[str, str]
) -> None:
    result = paired_job["result"]
    paired = result["paired"]
    candidate_blocks = result["samples_ms"]
    reference_blocks = paired["reference"]["samples_ms"]
    assert len(candidate_blocks) == len(reference_blocks) == paired["rounds"] == ROUNDS

    ratios = [
        statistics.median(ref) / statistics.median(cand)
        for cand, ref in zip(candidate_blocks, reference_blocks, strict=True)
    ]
    assert paired["round_ratios"] == pytest.approx(ratios, rel=1e-12)
    speedup = statistics.median(ratios)
    assert paired["speedup"] == pytest.approx(speedup, rel=1e-12)
    low, high, coverage = median_interval(ratios, 0.95)
    assert paired["speedup_ci"] == pytest.approx([low, high], rel=1e-12)
    assert paired["confidence"] == pytest.approx(coverage, rel=1e-12)
    assert coverage >= 0.95
    k = _ranks(ROUNDS)  # 12 rounds: the 3rd smallest and 3rd largest ratio
    assert (low, high) == (sorted(ratios)[k - 1], sorted(ratios)[ROUNDS - k])
    assert paired["halfwidth"] == pytest.approx((high - low) / 2 / speedup, rel=1e-12)
    assert low <= speedup <= high
    # Four transformer blocks against two (plus the same patch embedding and head): about 2
    # on an idle host; bounds wide enough for a host whose other work preempts the blocks.
    assert 1.0 < speedup < 10.0

    # Both distributions, summarized over all their blocks.
    candidate_all = [x for block in candidate_blocks for x in block]
    reference_all = [x for block in reference_blocks for x in block]
    assert result["latency_ms"]["count"] == len(candidate_all)
    assert paired["reference"]["latency_ms"]["count"] == len(reference_all)
    assert paired["reference"]["latency_ms"]["p50"] == pytest.approx(
        statistics.median(reference_all), rel=1e-12
    )
    assert paired["reference"]["latency_ms"]["p50"] > result["latency_ms"]["p50"]
    assert paired["reference"]["model_sha256"] == shas["reference"]
    assert paired["reference"]["precision"] == "fp32"
    assert "onnxruntime.InferenceSession" in paired["reference"]["build"]["command"]
    assert paired["interval_method"].startswith("order statistics")
    assert result["model_sha256"] == shas["candidate"]


def test_blocks_alternate_with_the_order_flipping_each_round(paired_job: dict) -> None:
    result, paired = paired_job["result"], paired_job["result"]["paired"]
    blocks = paired["blocks"]
    assert len(blocks) == 2 * ROUNDS
    for number in range(ROUNDS):
        pair = blocks[2 * number : 2 * number + 2]
        assert [block["round"] for block in pair] == [number, number]
        first = ["candidate", "reference"] if number % 2 == 0 else ["reference", "candidate"]
        assert [block["model"] for block in pair] == first
    for block, following in itertools.pairwise(blocks):
        assert block["started_at"] < block["ended_at"] <= following["started_at"]
    for block in blocks:
        assert block["count"] == paired["block_iterations"][block["model"]]
    # The blocks' counts are the returned samples', in order.
    counts = {"candidate": [], "reference": []}
    for block in blocks:
        counts[block["model"]].append(block["count"])
    assert counts["candidate"] == [len(b) for b in result["samples_ms"]]
    assert counts["reference"] == [len(b) for b in paired["reference"]["samples_ms"]]
    assert paired_job["started_at"] <= blocks[0]["started_at"]
    assert blocks[-1]["ended_at"] <= paired_job["finished_at"]


# ------------------------------------------------------------------------------------------------
# References the agent does not hold, or that are fed other inputs


def test_unknown_reference_is_404_and_the_client_uploads_it(
    paired_agent: RunningAgent, models: dict[str, Path], shas: dict[str, str]
) -> None:
    status, body = _submit(
        paired_agent, shas["candidate"], dict(FAST, reference={"model_sha256": UNKNOWN_SHA})
    )
    assert status == 404
    assert body["error"]["code"] == "unknown_reference"
    assert UNKNOWN_SHA in body["error"]["message"]
    assert "POST /v1/models" in body["error"]["message"]

    other = models["other"]
    client = AgentClient(paired_agent.url)
    assert client.has_model(sha256_file(other)) is False
    result = client.measure(
        models["candidate"], dict(FAST, repeats=6, ratio_ci=0), reference=Reference(other)
    )
    assert client.has_model(sha256_file(other)) is True
    assert result["paired"]["reference"]["model_sha256"] == sha256_file(other)
    assert result["paired"]["rounds"] == 6
    assert result["cache"]["result_hit"] is False  # another reference: another measurement


def test_a_reference_lost_since_the_client_checked_is_uploaded_again(
    paired_agent: RunningAgent, models: dict[str, Path]
) -> None:
    class StaleClient(AgentClient):
        """Believes the agent holds every reference (as if it had evicted one since)."""

        def ensure_model(self, model_path: Path) -> str:
            return sha256_file(model_path)

    copy = models["copy"]
    client = StaleClient(paired_agent.url)
    assert client.has_model(sha256_file(copy)) is False
    result = client.measure(
        models["candidate"], dict(FAST, repeats=6, ratio_ci=0), reference=Reference(copy)
    )
    assert result["paired"]["reference"]["model_sha256"] == sha256_file(copy)
    assert client.has_model(sha256_file(copy)) is True


def test_a_reference_of_other_inputs_is_422_reference_mismatch(
    paired_agent: RunningAgent, models: dict[str, Path], shas: dict[str, str]
) -> None:
    wide = _upload(paired_agent, models["wide"])
    status, body = _submit(
        paired_agent, shas["candidate"], dict(FAST, reference={"model_sha256": wide})
    )
    assert status == 422
    assert body["error"]["code"] == "reference_mismatch"
    message = body["error"]["message"]
    assert "the reference takes input 1x3x48x48 float32" in message
    assert "the candidate input 1x3x32x32 float32" in message
    assert "same inputs" in message


# ------------------------------------------------------------------------------------------------
# How many rounds, and how long a block


def test_ratio_ci_zero_runs_exactly_the_rounds_asked(paired_job: dict) -> None:
    paired = paired_job["result"]["paired"]
    assert paired["rounds"] == ROUNDS
    assert paired["stopped_by"] == "rounds"
    assert paired["target_halfwidth"] == 0
    assert paired["target_met"] is False


@pytest.mark.parametrize(
    "ratio_ci, max_time_s, stopped_by",
    [
        (1e-9, 0.5, "time_cap"),  # a target no measurement reaches: stopped by the time cap
        (1.0, 30.0, "target"),  # ±100 %: met as soon as the least number of rounds is in
    ],
)
def test_rounds_go_on_towards_ratio_ci_until_max_time_s(
    paired_agent: RunningAgent,
    shas: dict[str, str],
    ratio_ci: float,
    max_time_s: float,
    stopped_by: str,
) -> None:
    spec = dict(
        FAST,
        repeats=6,
        ratio_ci=ratio_ci,
        max_time_s=max_time_s,
        reference={"model_sha256": shas["reference"]},
    )
    paired = _measure(paired_agent, shas["candidate"], spec)["result"]["paired"]
    assert paired["stopped_by"] == stopped_by
    assert paired["target_halfwidth"] == ratio_ci
    if stopped_by == "time_cap":
        assert paired["target_met"] is False
        assert paired["halfwidth"] > ratio_ci
        assert paired["rounds"] > 6  # more than the least, towards the target
        assert max_time_s <= paired["timed_s"] < max_time_s + 2.0
    else:
        assert paired["target_met"] is True
        assert paired["halfwidth"] <= ratio_ci
        assert paired["rounds"] == 6


def test_min_repeat_ms_stretches_each_block(paired_job: dict) -> None:
    result, paired = paired_job["result"], paired_job["result"]["paired"]
    min_repeat_ms = FAST["min_repeat_ms"]
    p50 = {
        "candidate": result["latency_ms"]["p50"],
        "reference": paired["reference"]["latency_ms"]["p50"],
    }
    for model, iterations in paired["block_iterations"].items():
        assert iterations > FAST["iterations"]  # ~1 ms models: 3 iterations last 3 ms, not 25
        # Sized from a 5-iteration calibration, so roughly min_repeat_ms long (the slack is for
        # a busy host, where the calibration and the blocks see different loads).
        assert 0.25 * min_repeat_ms <= iterations * p50[model] < 8 * min_repeat_ms
    durations = sorted(block["ended_at"] - block["started_at"] for block in paired["blocks"])
    assert statistics.median(durations) * 1000 >= 0.5 * min_repeat_ms


def test_min_repeat_ms_lengthens_the_repeats_of_an_unpaired_job(
    paired_agent: RunningAgent, shas: dict[str, str]
) -> None:
    spec = {"warmup": 2, "iterations": 1, "repeats": 2, "min_repeat_ms": 25.0}
    result = _measure(paired_agent, shas["candidate"], spec)["result"]
    assert "paired" not in result
    counts = [len(run) for run in result["samples_ms"]]
    assert counts[0] == counts[1] > 1
    assert counts[0] * result["latency_ms"]["p50"] >= 0.25 * 25.0


# ------------------------------------------------------------------------------------------------
# Caching


def test_a_paired_job_is_cached_per_reference_and_precision(
    paired_agent: RunningAgent,
    paired_job: dict,
    models: dict[str, Path],
    shas: dict[str, str],
) -> None:
    again = _measure(paired_agent, shas["candidate"], paired_job["spec"])["result"]
    assert again["cache"]["result_hit"] is True
    assert again["paired"] == paired_job["result"]["paired"]

    # One int8 reference at two precisions: two measurements, two cache entries.
    int8 = _upload(paired_agent, models["int8"])
    results = {}
    for precision in ("fp32", "int8"):
        spec = dict(
            FAST, repeats=6, ratio_ci=0, reference={"model_sha256": int8, "precision": precision}
        )
        results[precision] = _measure(paired_agent, shas["candidate"], spec)["result"]
        assert results[precision]["cache"]["result_hit"] is False
        assert results[precision]["paired"]["reference"]["precision"] == precision
        hit = _measure(paired_agent, shas["candidate"], spec)["result"]
        assert hit["cache"]["result_hit"] is True
        assert hit["paired"]["reference"]["precision"] == precision
    assert results["fp32"]["samples_ms"] != results["int8"]["samples_ms"]


def test_a_reference_precision_the_device_lacks_is_refused_at_once(
    paired_agent: RunningAgent, shas: dict[str, str]
) -> None:
    spec = dict(FAST, reference={"model_sha256": shas["reference"], "precision": "fp16"})
    job = _measure_any(paired_agent, shas["candidate"], spec)
    assert job["result"]["status"] == "unsupported_precision"
    assert "the reference's precision fp16" in job["result"]["message"]


# ------------------------------------------------------------------------------------------------
# Requests the agent refuses


@pytest.mark.parametrize(
    "spec, words",
    [
        ({"reference": {"model_sha256": UNKNOWN_SHA}, "duration_s": 1.0}, "give iterations"),
        ({"ratio_ci": 0.02}, "spec.ratio_ci applies to paired jobs only"),
        ({"max_time_s": 10}, "spec.max_time_s applies to paired jobs only"),
        ({"reference": {"model_sha256": "abc"}}, "lowercase sha256"),
        ({"reference": {"model_sha256": "A" * 64}}, "lowercase sha256"),
        ({"reference": "0" * 64}, "spec.reference must be an object"),
        ({"reference": {"model_sha256": UNKNOWN_SHA, "precision": "fp64"}}, "reference.precision"),
        ({"reference": {"model_sha256": UNKNOWN_SHA, "shape": [1]}}, "unknown spec.reference"),
        ({"reference": {"model_sha256": UNKNOWN_SHA}, "ratio_ci": 1.5}, "spec.ratio_ci must be"),
        ({"reference": {"model_sha256": UNKNOWN_SHA}, "max_time_s": 0}, "spec.max_time_s"),
        ({"reference": {"model_sha256": UNKNOWN_SHA}, "repeats": 1001}, "between 1 and 1000"),
        ({"min_repeat_ms": -1}, "spec.min_repeat_ms must be"),
        ({"repeats": 21}, "between 1 and 20"),  # unpaired: repeats, not rounds
    ],
)
def test_bad_paired_specs_are_400_bad_spec(
    paired_agent: RunningAgent, shas: dict[str, str], spec: dict, words: str
) -> None:
    status, body = _submit(paired_agent, shas["candidate"], spec)
    assert status == 400
    assert body["error"]["code"] == "bad_spec"
    assert words in body["error"]["message"]


def test_models_are_uploaded_raw_and_then_known(
    paired_agent: RunningAgent, models: dict[str, Path]
) -> None:
    data = models["reference"].read_bytes()
    sha = _upload(paired_agent, models["reference"])
    assert sha == hashlib.sha256(data).hexdigest()
    assert paired_agent.request("HEAD", f"/v1/models/{sha}")[0] == 200
    assert _upload(paired_agent, models["reference"]) == sha  # idempotent
    status, body, _ = paired_agent.request("POST", "/v1/models", b"")
    assert status == 400 and body["error"]["code"] == "bad_request"
    assert paired_agent.request("HEAD", f"/v1/models/{hashlib.sha256(b'x').hexdigest()}")[0] == 404


def test_model_upload_needs_the_token_and_fits_the_limit(tmp_path: Path) -> None:
    agent = start_agent(tmp_path, "--backend", "onnxruntime", "--max-upload-mb", "1", token="s3")
    try:
        status, body, _ = agent.request("POST", "/v1/models", b"onnx", token=None)
        assert status == 401 and body["error"]["code"] == "unauthorized"
        status, body, _ = agent.request("POST", "/v1/models", b"x" * (2 << 20))
        assert status == 413 and body["error"]["code"] == "payload_too_large"
        status, body, _ = agent.request("POST", "/v1/models", b"onnx bytes")
        assert status == 201 and body["model_sha256"] == hashlib.sha256(b"onnx bytes").hexdigest()
    finally:
        agent.stop()


def test_multipart_submission_of_a_paired_job(
    paired_agent: RunningAgent, models: dict[str, Path], shas: dict[str, str]
) -> None:
    """The candidate uploaded with the job (multipart), the reference named by sha."""
    boundary = uuid.uuid4().hex.encode()
    spec = dict(FAST, reference={"model_sha256": UNKNOWN_SHA})
    body = multipart.build(
        {
            "spec": (None, "application/json", json.dumps(spec).encode()),
            "model": ("m.onnx", "application/octet-stream", models["candidate"].read_bytes()),
        },
        boundary,
    )
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary.decode()}"}
    status, payload, _ = paired_agent.request("POST", "/v1/jobs", body, headers)
    assert status == 404 and payload["error"]["code"] == "unknown_reference"


# ------------------------------------------------------------------------------------------------
# The quiet lock: co-located work pauses while a job times

WORKER = """
import json, os, sys, time
from jetson_agent.quiet import DeviceLock

folder, log, stop = sys.argv[1:4]
lock = DeviceLock(folder)
with open(log, "a") as out:
    while not os.path.exists(stop):
        with lock.working():
            start = time.time()
            busy_until = time.perf_counter() + 0.005
            while time.perf_counter() < busy_until:  # a short CPU "training step"
                pass
            end = time.time()
        out.write(json.dumps([start, end]) + "\\n")
        out.flush()
        time.sleep(0.001)
"""


# The campaign's own training loop on that host (``optimizer.plugin_api.training.train_epochs``
# over the paced loader a trial's techniques get, told the lock's folder by
# ``optimizer.device.colocation``, as a trial is): each step logs its loss call.
TRAINER = """
import json, os, sys, time
from pathlib import Path
import torch
from optimizer.device import colocation
from optimizer.plugin_api.training import train_epochs

folder, log, stop = sys.argv[1:4]
colocation.share_device(Path(folder))
torch.set_num_threads(1)
model = torch.nn.Sequential(torch.nn.Linear(64, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10))
batches = [(torch.randn(64, 64), torch.randint(0, 10, (64,))) for _ in range(20)]
out = open(log, "a")

class Stop(Exception):
    pass

def loss(logits, inputs, labels):
    if os.path.exists(stop):
        raise Stop
    start = time.time()
    value = torch.nn.functional.cross_entropy(logits, labels)
    out.write(json.dumps([start, time.time()]) + "\\n")
    out.flush()
    return value

try:
    train_epochs(model, colocation.PacedLoader(batches), loss, epochs=100000, lr=1e-3)
except Stop:
    pass
"""


def _steps(log: Path) -> list[list[float]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.endswith("]")]


def _wait_for(condition, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


@pytest.mark.parametrize("script", [WORKER, TRAINER], ids=["lock-steps", "train-epochs"])
def test_co_located_steps_pause_while_a_paired_job_times(
    paired_agent: RunningAgent, lock_dir: Path, shas: dict[str, str], tmp_path: Path, script: str
) -> None:
    log, stop = tmp_path / "steps.jsonl", tmp_path / "stop"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    worker = subprocess.Popen(
        [sys.executable, "-c", script, str(lock_dir), str(log), str(stop)], env=env
    )
    try:
        _wait_for(lambda: len(_steps(log)) >= 5)
        spec = dict(
            FAST,
            repeats=8,
            ratio_ci=0,
            use_cache=False,
            reference={"model_sha256": shas["reference"]},
        )
        job = _measure(paired_agent, shas["candidate"], spec)
        done = time.time()
        _wait_for(lambda: sum(1 for s in _steps(log) if s[0] >= done) >= 5)
    finally:
        stop.touch()
        worker.wait(10)
    assert worker.returncode == 0
    result = job["result"]
    blocks = result["paired"]["blocks"]
    window = (blocks[0]["started_at"], blocks[-1]["ended_at"])
    steps = _steps(log)
    overlapping = [s for s in steps if s[0] < window[1] and s[1] > window[0]]
    assert overlapping == [], f"steps ran while the job timed {window}: {overlapping[:3]}"
    assert any(end <= window[0] for _start, end in steps)  # paused, not absent
    assert any(start >= window[1] for start, _end in steps)
    assert result["quiet_lock_wait_s"] is not None and result["quiet_lock_wait_s"] >= 0


HOLDER = """
import sys, time
from jetson_agent.quiet import DeviceLock

with getattr(DeviceLock(sys.argv[1]), sys.argv[2])():
    print("held", flush=True)
    time.sleep(3600)
"""


@pytest.mark.parametrize("held, waiting", [("measuring", "working"), ("working", "measuring")])
def test_a_killed_holder_releases_the_quiet_lock(tmp_path: Path, held: str, waiting: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path), held],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    entered = threading.Event()

    def wait_for_lock() -> None:
        lock = DeviceLock(str(tmp_path))
        with getattr(lock, waiting)():
            entered.set()
        lock.close()

    try:
        assert holder.stdout.readline().strip() == "held"
        thread = threading.Thread(target=wait_for_lock, daemon=True)
        thread.start()
        assert not entered.wait(0.3), f"{waiting} got in while another process was {held}"
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        assert entered.wait(5), "the kernel did not drop the killed holder's lock"
        thread.join(5)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
