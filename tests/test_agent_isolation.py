"""A job that hangs or crashes is killed and typed; the agent keeps serving, one job at a time."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import pytest
from agent_helpers import start_agent
from model_factory import endless_loop_model

from optimizer.device.client import AgentClient, MeasurementFailed

QUICK = {"warmup": 1, "iterations": 5, "repeats": 1}


@pytest.mark.slow
def test_run_timeout_kills_a_hung_job_and_the_next_job_runs(tmp_path: Path, vit_onnx: Path) -> None:
    agent = start_agent(tmp_path, "--backend", "onnxruntime", "--run-timeout", "3")
    try:
        client = AgentClient(agent.url, retries=0)
        hung = endless_loop_model(tmp_path / "endless.onnx")
        with pytest.raises(MeasurementFailed) as failure:
            client.measure(hung, QUICK)
        assert failure.value.status == "run_timeout"
        assert "within 3 s" in str(failure.value)
        assert not failure.value.candidate_fault
        assert client.measure(vit_onnx, QUICK)["status"] == "ok"
    finally:
        agent.stop()


@pytest.mark.slow
def test_build_timeout_and_crash_are_typed(tmp_path: Path, vit_onnx: Path) -> None:
    (tmp_path / "a").mkdir()
    hang = start_agent(
        tmp_path / "a", "--backend", "fault_backends:BuildHangBackend", "--build-timeout", "2"
    )
    try:
        with pytest.raises(MeasurementFailed) as failure:
            AgentClient(hang.url, retries=0).measure(vit_onnx, QUICK)
        assert failure.value.status == "build_timeout"
        assert hang.alive()
    finally:
        hang.stop()
    (tmp_path / "b").mkdir()
    crash = start_agent(tmp_path / "b", "--backend", "fault_backends:CrashingBackend")
    try:
        with pytest.raises(MeasurementFailed) as failure:
            AgentClient(crash.url, retries=0).measure(vit_onnx, QUICK)
        assert failure.value.status == "build_failed"
        assert "SIGSEGV" in str(failure.value)
        assert crash.alive()
    finally:
        crash.stop()


@pytest.mark.slow
def test_concurrent_jobs_never_overlap(tmp_path: Path, vit_onnx: Path) -> None:
    agent = start_agent(tmp_path, "--backend", "onnxruntime")
    results: list[dict] = []
    errors: list[BaseException] = []

    def submit(iterations: int) -> None:
        try:
            spec = {"warmup": 2, "iterations": iterations, "repeats": 1}
            results.append(AgentClient(agent.url).measure(vit_onnx, spec))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=submit, args=(20 + i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        agent.stop()
    assert not errors
    windows = sorted((r["job"]["started_at"], r["job"]["finished_at"]) for r in results)
    assert len(windows) == 4
    for (_, end), (next_start, _) in itertools.pairwise(windows):
        assert end <= next_start, "two measurements overlapped"
