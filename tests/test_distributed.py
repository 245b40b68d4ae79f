"""Distributed campaigns for real: a two-node Ray cluster started with Ray's own CLI, a pool of
two agents, and the faults a lab sees (an agent killed mid-measurement, a Ray worker killed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from agent_helpers import RunningAgent, free_port, start_agent
from campaign_helpers import counted, load, start_run, wait_until, write_campaign
from click.testing import CliRunner
from optuna.trial import TrialState

from optimizer.cli import main

# Ray turns 127.0.0.1 into the host's routable address; another loopback address keeps every
# packet of the test cluster on this machine.
NODE_IP = "127.0.0.2"


class RayNode:
    """``ray start ... --block`` as a child: it runs the node until it is terminated."""

    def __init__(self, args: list[str], env: dict[str, str]):
        ray = str(Path(sys.executable).parent / "ray")
        command = [ray, "start", *args, "--node-ip-address", NODE_IP, "--num-cpus", "1"]
        command += ["--disable-usage-stats", "--block"]
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.output: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)

    def wait_started(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while not any("Ray runtime started" in line for line in self.output):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("ray start failed:\n" + "".join(self.output[-30:]))
            time.sleep(0.2)

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass


@pytest.fixture()
def ray_env() -> dict[str, str]:
    # 'ray start' turns token authentication on; every process that joins must use it too.
    return dict(os.environ, RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0", COLUMNS="200")


@pytest.fixture()
def two_node_cluster(ray_env: dict[str, str]) -> Iterator[str]:
    address = f"{NODE_IP}:{free_port()}"
    nodes = [
        RayNode(
            ["--head", "--port", address.split(":")[1], "--include-dashboard", "false"], ray_env
        )
    ]
    try:
        nodes[0].wait_started()
        nodes.append(RayNode(["--address", address], ray_env))
        nodes[1].wait_started()
        yield address
    finally:
        for node in reversed(nodes):
            node.stop()
        # 'ray start' leaves the head's address for later ray.init() calls; 'ray stop' (which
        # would also stop every other Ray on the host) is what removes it.
        pointer = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if pointer.exists() and pointer.read_text().strip() == address:
            pointer.unlink()


@pytest.fixture()
def two_agents(tmp_path: Path) -> Iterator[list[RunningAgent]]:
    agents = [
        start_agent(tmp_path / f"agent{i}", "--backend", "onnxruntime", "--device-type", "ci-cpu")
        for i in range(2)
    ]
    yield agents
    for agent in agents:
        agent.stop()


@pytest.mark.slow
def test_campaign_on_a_two_node_cluster_with_two_agents(
    tmp_path: Path,
    two_node_cluster: str,
    two_agents: list[RunningAgent],
    ray_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    urls = [agent.url for agent in two_agents]
    campaign = write_campaign(
        tmp_path,
        **{
            "search.trials": 4,
            "objective.latency_first_cut": False,
            "execution.workers": 2,
            "agents.urls": urls,
        },
    )
    run = start_run(tmp_path, campaign, "--ray-address", two_node_cluster, "--json", env=ray_env)
    _, stderr = run.communicate(timeout=600)
    assert run.returncode == 0, stderr[-3000:]

    trials = load(tmp_path).trials
    assert len(counted(trials)) == 4
    nodes = {t.user_attrs.get("node_id") for t in trials}
    assert len(nodes) == 2, nodes  # one CPU a node, two trials at once: both nodes worked
    assert {t.user_attrs.get("node_ip") for t in trials} == {NODE_IP}
    jobs = [job for t in trials for job in t.user_attrs["agent_jobs"]]
    assert {job["agent"] for job in jobs} == set(urls)  # least busy first: both agents measured
    assert all(job["status"] == "ok" for job in jobs)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert {t.user_attrs["device_type"] for t in complete} == {"ci-cpu"}

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    status = CliRunner().invoke(main, ["status", str(campaign)])
    assert status.exit_code == 0, status.output
    assert "measurements per agent" in status.output
    assert "trials per node" in status.output
    for url in urls:
        assert url in status.output
    per_node = [line for line in status.output.splitlines() if NODE_IP in line]
    assert len(per_node) == 2, status.output


def _agent_info(agent: RunningAgent) -> dict:
    _, info, _ = agent.request("GET", "/v1/info")
    return info or {}


@pytest.mark.slow
def test_agent_killed_mid_measurement_the_campaign_finishes_when_it_is_back(
    tmp_path: Path,
) -> None:
    port = free_port()
    folder = tmp_path / "agent"
    args = ("--backend", "fault_backends:SlowBuildBackend", "--port", str(port))
    agent = start_agent(folder, *args)
    campaign = write_campaign(
        tmp_path,
        **{
            "search.trials": 3,
            "objective.latency_first_cut": False,
            "execution.workers": 0,
            "agents.urls": [agent.url],
            "agents.reprobe_s": 1,
        },
    )
    run = start_run(tmp_path, campaign)
    back = None
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # the baseline measured, the next job mid-build
            info = _agent_info(agent)
            if info.get("jobs_finished", 0) >= 1 and info.get("running_job"):
                break
            assert run.poll() is None, run.communicate()[1][-3000:]
            time.sleep(0.2)
        else:
            raise AssertionError("no second measurement started")
        os.kill(agent.process.pid, signal.SIGKILL)
        agent.process.wait()
        time.sleep(3)  # the campaign sees it gone; its trial waits for a healthy agent
        back = start_agent(folder, *args)
        _, stderr = run.communicate(timeout=600)
        assert run.returncode == 0, stderr[-3000:]
    finally:
        if run.poll() is None:
            run.kill()
        if back is not None:
            back.stop()

    trials = load(tmp_path).trials
    assert len(counted(trials)) == 3
    lost = [
        t for t in trials if any(j["status"] == "infra_error" for j in t.user_attrs["agent_jobs"])
    ]
    assert lost, "no measurement was lost to the killed agent"
    for trial in counted(trials):  # the lost job was measured again: never a failed candidate
        assert trial.user_attrs.get("fail_status") != "infra_error"
        assert trial.state != TrialState.FAIL, trial.user_attrs.get("fail_reason")


def _trial_workers(root: int) -> list[psutil.Process]:
    """Ray worker processes under ``root`` that are running a trial now."""
    found = []
    for child in psutil.Process(root).children(recursive=True):
        try:
            if "trial_on_worker" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found


@pytest.mark.slow
def test_ray_worker_killed_fails_its_trial_and_the_campaign_goes_on(tmp_path: Path) -> None:
    campaign = write_campaign(
        tmp_path,
        **{"search.trials": 4, "objective.latency_first_cut": False, "execution.workers": 2},
    )
    run = start_run(tmp_path, campaign)
    try:
        wait_until(run, tmp_path, lambda trials: any(t.state.is_finished() for t in trials))
        deadline = time.monotonic() + 120
        while not (workers := _trial_workers(run.pid)):
            assert time.monotonic() < deadline, "no trial ever ran in a Ray worker"
            time.sleep(0.2)
        workers[0].kill()
        _, stderr = run.communicate(timeout=600)
        assert run.returncode == 0, stderr[-3000:]
    finally:
        if run.poll() is None:
            run.kill()

    trials = load(tmp_path).trials
    killed = [t for t in trials if "Ray worker failed" in str(t.user_attrs.get("fail_reason"))]
    assert len(killed) == 1
    assert killed[0].state == TrialState.FAIL
    assert killed[0].user_attrs["retried"] is True  # re-run, not counted
    assert killed[0].user_attrs["candidate_fault"] is False
    assert len(counted(trials)) == 4
    rerun = [t for t in trials if t.user_attrs.get("infra_attempt") == 1]
    assert len(rerun) == 1 and rerun[0].params == killed[0].params
