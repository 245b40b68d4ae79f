"""A pool of device agents of one device type, shared by every trial of a campaign.

Measurement is the scarce resource (one job at a time per device), so the pool is modelled on
TVM's RPC tracker: trials lease an agent, the least busy healthy one, and hand it back with what
happened. An agent that stopped answering rests for ``reprobe_s`` and is then probed again
(``GET /v1/info``) before it gets work. The pool holds only bookkeeping, no connections, so one
object serves in-process trials and a Ray actor of it serves trials on any node.

Which agents may pool together is decided once, before the search (:func:`probe_agents`): a
candidate's measurements, and the baseline it is compared with, must come from one device type.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from jetson_agent.errors import INFRA_ERROR
from optimizer.device.client import (
    AgentClient,
    AgentError,
    AgentRequestError,
    AgentUnreachable,
    MeasurementFailed,
    MeasurementTimeout,
    Reference,
)

PROBE_TIMEOUT_S = 3.0


class AgentPoolError(Exception):
    """The campaign's agents cannot form a pool (none answers, or device types are mixed)."""


@dataclass
class AgentState:
    url: str
    device_type: str
    healthy: bool = True
    in_flight: int = 0
    jobs: int = 0  # measurements handed back, whatever their outcome
    failures: int = 0  # of those, lost to the agent (unreachable, infra_error, job lost)
    last_error: str | None = None
    rest_until: float = 0.0


class AgentLease(Protocol):
    """What a trial needs from a pool; :class:`AgentPool` and its Ray actor handle both fit."""

    def acquire(self, avoid: str | None = None) -> str | None: ...

    def release(self, url: str, error: str | None = None) -> None: ...


@dataclass
class PoolPlan:
    """Who measures: agents of the target type that answered, and those that did not answer
    (pooled as resting, re-probed later); ``notes`` say what was left out and why."""

    infos: dict[str, dict[str, Any]]
    silent: list[str]
    notes: list[str]

    @property
    def device_type(self) -> str:
        return device_type(next(iter(self.infos.values())))


def probe_agents(urls: list[str], token: str | None, target: str | None) -> PoolPlan:
    """``GET /v1/info`` from every agent and decide which of them pool together."""
    infos: dict[str, dict[str, Any]] = {}
    silent: list[str] = []
    notes: list[str] = []
    for url in urls:
        try:
            client = AgentClient(url, token, request_timeout_s=PROBE_TIMEOUT_S, retries=1)
            infos[url] = client.info()
        except AgentError as exc:
            silent.append(url)
            notes.append(f"{url} does not answer yet ({exc}); it will be re-probed")
    if not infos:
        raise AgentPoolError("no agent answered: " + "; ".join(notes))
    types = {url: device_type(info) for url, info in infos.items()}
    if target is None:
        kinds = sorted(set(types.values()))
        if len(kinds) > 1:
            listing = ", ".join(f"{url} is {types[url]!r}" for url in infos)
            raise AgentPoolError(
                f"the agents are of {len(kinds)} device types ({listing}): set agents.device "
                "to the one to optimise for"
            )
        return PoolPlan(infos, silent, notes)
    chosen = {url: info for url, info in infos.items() if types[url] == target}
    if not chosen:
        found = ", ".join(sorted(set(types.values())))
        raise AgentPoolError(f"no agent of device type {target!r} answered (found: {found})")
    for url in infos.keys() - chosen.keys():
        notes.append(f"{url} is {types[url]!r}, not the target {target!r}: not used")
    return PoolPlan(chosen, silent, notes)


def device_type(info: dict[str, Any]) -> str:
    device = info["device"]
    return device.get("type") or device["name"]


class AgentPool:
    """Least-busy leasing with health. Thread-safe; every method returns at once except
    :meth:`acquire`, which may probe a rested agent (a few seconds at most)."""

    def __init__(
        self,
        urls: list[str],
        device: str,
        token: str | None,
        reprobe_s: float,
        unhealthy: list[str] | tuple[str, ...] = (),
    ):
        self._token = token
        self._reprobe_s = reprobe_s
        self._lock = threading.Lock()
        self._agents = {url: AgentState(url, device) for url in urls}
        for url in unhealthy:
            self._rest(self._agents[url], "did not answer the first probe")

    def acquire(self, avoid: str | None = None) -> str | None:
        """The URL of the least busy healthy agent (``avoid`` only if it is the last one), or
        None when every agent is resting. A rested agent is probed before it is trusted."""
        for state in self._due_for_probe():
            self._probe(state)
        with self._lock:
            healthy = [s for s in self._agents.values() if s.healthy]
            others = [s for s in healthy if s.url != avoid] or healthy
            if not others:
                return None
            chosen = min(others, key=lambda s: (s.in_flight, s.jobs))
            chosen.in_flight += 1
            return chosen.url

    def release(self, url: str, error: str | None = None) -> None:
        """Hand a lease back; ``error`` says the agent (not the candidate) failed the job."""
        with self._lock:
            state = self._agents[url]
            state.in_flight = max(0, state.in_flight - 1)
            state.jobs += 1
            if error is not None:
                state.failures += 1
                self._rest(state, error)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(state) for state in self._agents.values()]

    def _rest(self, state: AgentState, error: str) -> None:
        state.healthy = False
        state.last_error = error
        state.rest_until = time.monotonic() + self._reprobe_s

    def _due_for_probe(self) -> list[AgentState]:
        now = time.monotonic()
        with self._lock:
            due = [s for s in self._agents.values() if not s.healthy and s.rest_until <= now]
            for state in due:  # one prober per agent, whatever the concurrency
                state.rest_until = now + self._reprobe_s
            return due

    def _probe(self, state: AgentState) -> None:
        client = AgentClient(state.url, self._token, request_timeout_s=PROBE_TIMEOUT_S, retries=0)
        try:
            info = client.info()
        except AgentError as exc:
            with self._lock:
                state.last_error = f"re-probe failed: {exc}"
            return
        with self._lock:
            if device_type(info) == state.device_type:
                state.healthy = True
            else:
                state.last_error = f"now reports device type {device_type(info)!r}"


# The agent answered 404 for something it had: it restarted (jobs live in memory) or evicted
# the model between our HEAD and POST. The device is not at fault and neither is the candidate.
_LOST_STATE = ("unknown_job", "unknown_model")


class PooledMeasurement:
    """Measure one model through a pool: when the agent fails (unreachable, ``infra_error``, a
    lost job) the job goes to another agent, or to the same one once it answers again, up to
    ``attempts`` agents and at most ``wait_healthy_s`` without any healthy agent. A candidate's
    own failure (``build_failed`` …) or a timeout is raised at once: no other agent would
    change it. A paired job's reference is uploaded to whichever agent measures it. ``log``
    keeps every job's agent and error, for the trial's record."""

    def __init__(
        self,
        lease: AgentLease,
        token: str | None,
        wait_healthy_s: float,
        attempts: int = 3,
        idle_poll_s: float = 0.5,
    ):
        self.lease = lease
        self.token = token
        self.wait_healthy_s = wait_healthy_s
        self.attempts = attempts
        self.idle_poll_s = idle_poll_s
        self.log: list[dict[str, Any]] = []

    def __call__(
        self, model_path: Path, spec: dict[str, Any], reference: Reference | None = None
    ) -> dict[str, Any]:
        """The ``ok`` result of a measurement, with the ``agent_url`` that measured it."""
        result, url = self._on_an_agent(
            lambda client: client.measure(model_path, spec, reference=reference)
        )
        result["agent_url"] = url
        return result

    def evaluate(self, model_path: Path, precision: str, inputs: Any) -> list[Any]:
        """The model's outputs on ``inputs`` (:meth:`AgentClient.evaluate`); the agent that ran
        them is in :attr:`log`."""
        outputs, _url = self._on_an_agent(
            lambda client: client.evaluate(model_path, precision, inputs)
        )
        return outputs

    def _on_an_agent(self, job: Callable[[AgentClient], Any]) -> tuple[Any, str]:
        failed = 0
        last: str | None = None
        waiting_since = time.monotonic()
        while failed < self.attempts:
            url = self.lease.acquire(avoid=last)
            if url is None:
                if time.monotonic() - waiting_since > self.wait_healthy_s:
                    break
                time.sleep(self.idle_poll_s)
                continue
            error: str | None = None
            try:
                result = job(AgentClient(url, self.token, retries=2))
            except MeasurementFailed as exc:
                if exc.status != INFRA_ERROR:
                    self.log.append({"agent": url, "error": None, "status": exc.status})
                    raise
                error = str(exc)
            except (AgentUnreachable, MeasurementTimeout) as exc:
                error = str(exc)
            except AgentRequestError as exc:
                if exc.code not in _LOST_STATE:
                    self.log.append({"agent": url, "error": str(exc)[:500], "status": exc.code})
                    raise
                error = f"the agent lost the job: {exc}"
            finally:
                self.lease.release(url, error)
            if error is None:
                self.log.append({"agent": url, "error": None, "status": "ok"})
                return result, url
            self.log.append({"agent": url, "error": error[:500], "status": INFRA_ERROR})
            failed += 1
            last = url
            waiting_since = time.monotonic()
        errors = "; ".join(entry["error"] for entry in self.log if entry["error"])[-1500:]
        raise MeasurementFailed(
            {
                "status": INFRA_ERROR,
                "message": f"no agent could run it ({failed} failed, waited up to "
                f"{self.wait_healthy_s:g} s for a healthy one): {errors or 'none was healthy'}",
            }
        )
