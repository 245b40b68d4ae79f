"""The agent pool against real agents on loopback: device types, least-busy leasing, health,
and measurements that survive an agent killed mid-job."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from agent_helpers import RunningAgent, free_port, start_agent

from optimizer.device.client import MeasurementFailed
from optimizer.device.pool import (
    AgentPool,
    AgentPoolError,
    PooledMeasurement,
    device_type,
    probe_agents,
)

SPEC = {"warmup": 2, "iterations": 10, "repeats": 1, "use_cache": False}


@pytest.fixture()
def two_agents(tmp_path: Path) -> list[RunningAgent]:
    agents = [
        start_agent(tmp_path / name, "--backend", "onnxruntime", "--device-type", label)
        for name, label in (("a", "lab-cpu"), ("b", "lab-cpu"))
    ]
    yield agents
    for agent in agents:
        agent.stop()


def _dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def test_probe_pools_one_device_type_and_rests_silent_agents(two_agents) -> None:
    urls = [a.url for a in two_agents]
    dead = _dead_url()
    plan = probe_agents([*urls, dead], None, None)
    assert sorted(plan.infos) == sorted(urls)
    assert plan.silent == [dead]
    assert plan.device_type == "lab-cpu"
    assert any(dead in note and "re-probed" in note for note in plan.notes)


def test_mixed_device_types_need_a_target(tmp_path: Path, two_agents) -> None:
    other = start_agent(tmp_path / "c", "--backend", "onnxruntime", "--device-type", "orin")
    try:
        urls = [two_agents[0].url, other.url]
        with pytest.raises(AgentPoolError, match=r"2 device types.*set agents\.device"):
            probe_agents(urls, None, None)
        plan = probe_agents(urls, None, "orin")
        assert list(plan.infos) == [other.url]
        assert device_type(plan.infos[other.url]) == "orin"
        assert any("not the target" in note for note in plan.notes)
        with pytest.raises(AgentPoolError, match="no agent of device type 'nano'"):
            probe_agents(urls, None, "nano")
    finally:
        other.stop()


def test_no_agent_answers() -> None:
    with pytest.raises(AgentPoolError, match="no agent answered"):
        probe_agents([_dead_url()], None, None)


def test_least_busy_leasing_and_rest_then_reprobe(two_agents) -> None:
    a, b = (agent.url for agent in two_agents)
    pool = AgentPool([a, b], "lab-cpu", None, reprobe_s=0.5)
    first, second = pool.acquire(), pool.acquire()
    assert {first, second} == {a, b}  # the idle one before the busy one
    pool.release(first)
    assert pool.acquire() == first
    pool.release(first)
    pool.release(second, error="connection refused")
    assert pool.acquire() == first  # the failed one rests
    pool.release(first)
    states = {s["url"]: s for s in pool.snapshot()}
    assert states[second]["healthy"] is False
    assert states[second]["failures"] == 1
    assert states[second]["last_error"] == "connection refused"
    time.sleep(0.6)
    pool.acquire()  # the rested agent answers its re-probe and is healthy again
    assert all(s["healthy"] for s in pool.snapshot())


def test_a_silent_agent_stays_out_until_it_answers() -> None:
    dead = _dead_url()
    pool = AgentPool([dead], "lab-cpu", None, reprobe_s=0.1, unhealthy=[dead])
    assert pool.acquire() is None
    time.sleep(0.2)
    assert pool.acquire() is None  # probed, still silent
    assert "re-probe failed" in pool.snapshot()[0]["last_error"]


def test_measurement_moves_to_a_healthy_agent(two_agents, vit_onnx: Path) -> None:
    dead = _dead_url()
    live = two_agents[0].url
    pool = AgentPool([dead, live], "lab-cpu", None, reprobe_s=60)
    measure = PooledMeasurement(pool, None, wait_healthy_s=5)
    result = measure(vit_onnx, dict(SPEC, precision="fp32"))
    assert result["status"] == "ok"
    assert result["agent_url"] == live
    assert [entry["agent"] for entry in measure.log] == [dead, live]
    assert measure.log[0]["status"] == "infra_error"
    assert measure.log[1]["status"] == "ok"
    assert {s["url"]: s["healthy"] for s in pool.snapshot()} == {dead: False, live: True}


def test_no_healthy_agent_fails_as_infra_error_not_the_candidate(vit_onnx: Path) -> None:
    dead = _dead_url()
    pool = AgentPool([dead], "lab-cpu", None, reprobe_s=60)
    measure = PooledMeasurement(pool, None, wait_healthy_s=1, idle_poll_s=0.1)
    started = time.monotonic()
    with pytest.raises(MeasurementFailed) as failure:
        measure(vit_onnx, dict(SPEC, precision="fp32"))
    assert failure.value.status == "infra_error"
    assert failure.value.candidate_fault is False
    assert "no agent could run it" in str(failure.value)
    assert time.monotonic() - started < 15


def test_a_candidate_fault_is_not_retried_elsewhere(two_agents, vit_onnx: Path) -> None:
    pool = AgentPool([a.url for a in two_agents], "lab-cpu", None, reprobe_s=60)
    measure = PooledMeasurement(pool, None, wait_healthy_s=5)
    with pytest.raises(MeasurementFailed) as failure:
        measure(vit_onnx, dict(SPEC, precision="fp16"))  # onnxruntime on a CPU has no fp16
    assert failure.value.status == "unsupported_precision"
    assert len(measure.log) == 1
    assert all(s["healthy"] and s["failures"] == 0 for s in pool.snapshot())


def test_agent_killed_mid_measurement_then_back_on_its_address(
    tmp_path: Path, vit_onnx: Path
) -> None:
    port = free_port()
    args = ("--backend", "fault_backends:SlowBuildBackend", "--port", str(port))
    agent = start_agent(tmp_path / "first", *args)
    plan = probe_agents([agent.url], None, None)
    pool = AgentPool([agent.url], plan.device_type, None, reprobe_s=0.5)
    measure = PooledMeasurement(pool, None, wait_healthy_s=60, idle_poll_s=0.2)
    outcome: dict[str, object] = {}

    def measure_in_background() -> None:
        try:
            outcome["result"] = measure(vit_onnx, dict(SPEC, precision="fp32"))
        except Exception as exc:  # the assertion below shows it
            outcome["error"] = exc

    worker = threading.Thread(target=measure_in_background)
    worker.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        _, info, _ = agent.request("GET", "/v1/info")
        if info and info["running_job"]:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the job never started")
    os.kill(agent.process.pid, signal.SIGKILL)  # mid-build: the job is lost with the agent
    agent.process.wait()
    time.sleep(1.5)
    back = start_agent(tmp_path / "second", *args)
    try:
        worker.join(90)
        assert "error" not in outcome, outcome.get("error")
        result = outcome["result"]
        assert result["status"] == "ok"
        assert [entry["status"] for entry in measure.log] == ["infra_error", "ok"]
        assert all(entry["agent"] == back.url for entry in measure.log)
    finally:
        back.stop()


class _CutShortServer:
    """Answers each connection with headers that promise a 561-byte body and then closes
    (what a client sees of an agent killed while it answers), until ``cut`` connections have
    been served so; then whole answers."""

    BODY = b'{"device": "test"}'

    def __init__(self, cut: int) -> None:
        import socket

        self.cut = cut
        self.served = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with connection:
                connection.recv(65536)
                whole = self.served >= self.cut
                # Counted before answering: the client may be done before this thread resumes.
                self.served += 1
                length = len(self.BODY) if whole else 561
                head = "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n"
                head += f"Content-Length: {length}\r\n\r\n"
                connection.sendall(head.encode() + (self.BODY if whole else b""))

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize("cut", [1, 10])
def test_an_answer_cut_short_is_retried_then_the_agent_is_unreachable(cut: int) -> None:
    """CI saw IncompleteRead escape a pooled measurement when the agent was killed while it
    answered: it is an unreachable agent (retried, then AgentUnreachable), like a refused
    connection."""
    from optimizer.device.client import AgentClient, AgentUnreachable

    server = _CutShortServer(cut)
    try:
        client = AgentClient(server.url, retries=2, backoff_s=0.01)
        if cut <= client.retries:
            assert client.info() == {"device": "test"}  # the retry got the whole answer
        else:
            with pytest.raises(AgentUnreachable, match="IncompleteRead"):
                client.info()
        assert server.served == min(cut + 1, client.retries + 1)
    finally:
        server.close()
