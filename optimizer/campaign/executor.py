"""Where trials compute: in the driver's own process (``--workers 0``, for debugging) or as Ray
tasks (a local runtime by default, a cluster with ``ray_address``). Both implement one small
interface; the driver owns the study either way.

On Ray, nothing assumes a shared file system: the baseline checkpoint and the baseline's model
(every job's timing reference) travel once through the object store, each trial works in a
scratch folder on its node, and its artifacts come back as bytes that the driver writes under
``runs/NAME/trials/``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from optimizer.campaign.prune_broker import PruneBroker
from optimizer.config import ExecutionConfig
from optimizer.trial.outcome import ShouldPrune, TrialOutcome, TrialRequest
from optimizer.trial.pipeline import run_trial

T = TypeVar("T")
TrialFn = Callable[[TrialRequest, ShouldPrune | None], TrialOutcome]


class Executor(Protocol):
    capacity: int

    def share(self, cls: Callable[..., T], *args: Any) -> Any:
        """An instance of ``cls`` that every trial can use: the object itself in-process, a
        proxy of a Ray actor on Ray."""
        ...

    def submit(self, request: TrialRequest, should_prune: ShouldPrune | None) -> Any: ...

    def wait(
        self,
        handles: list[Any],
        timeout_s: float,
        decide: Callable[[int, int, float], bool] | None = None,
    ) -> list[tuple[Any, TrialOutcome]]:
        """Finished trials among ``handles``; meanwhile pruning questions from running trials
        are answered with ``decide(trial_number, step, value)``."""
        ...

    def cancel(self, handles: list[Any]) -> None: ...

    def shutdown(self) -> None: ...


class InProcessExecutor:
    """Runs each trial to completion inside ``submit``; Optuna's pruner acts per epoch."""

    capacity = 1

    def __init__(self, trial_fn: TrialFn = run_trial) -> None:
        self._trial_fn = trial_fn
        self._done: dict[int, TrialOutcome] = {}

    def share(self, cls: Callable[..., T], *args: Any) -> T:
        return cls(*args)

    def submit(self, request: TrialRequest, should_prune: ShouldPrune | None) -> int:
        outcome = self._trial_fn(request, should_prune)
        outcome.attrs["hostname"] = socket.gethostname()
        self._done[request.number] = outcome
        return request.number

    def wait(
        self, handles: list[int], timeout_s: float, decide: Any = None
    ) -> list[tuple[int, TrialOutcome]]:
        return [(h, self._done.pop(h)) for h in handles if h in self._done]

    def cancel(self, handles: list[int]) -> None:
        for handle in handles:
            self._done.pop(handle, None)

    def shutdown(self) -> None:
        self._done.clear()


class ClusterUnavailable(Exception):
    """``ray.init`` could not join the cluster the campaign names; the message says why."""


class ActorProxy:
    """Method calls on a Ray actor that read like calls on the object (they block for the
    answer); picklable, so trials on any node share the driver's instance."""

    def __init__(self, handle: Any):
        self._handle = handle

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):  # pickle probes dunders on a bare instance
            raise AttributeError(name)
        method = getattr(self._handle, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            import ray

            return ray.get(method.remote(*args, **kwargs))

        return call


def _scratch_root() -> Path:
    return Path(tempfile.gettempdir()) / "vitopt-worker"


def _local_file(data: bytes, suffix: str) -> Path:
    """A file shipped from the driver (the baseline's weights or model), on this node, written
    once per content."""
    path = _scratch_root() / f"{hashlib.sha256(data).hexdigest()[:24]}{suffix}"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.part")
        partial.write_bytes(data)
        partial.replace(path)
    return path


def trial_on_worker(
    request: TrialRequest,
    checkpoint: bytes,
    reference: bytes | None,
    should_prune: ShouldPrune | None,
    trial_fn: TrialFn,
) -> tuple[TrialOutcome, dict[str, bytes]]:
    """A Ray task: run the trial in a scratch folder of this node, return its artifacts as
    bytes and say where it ran."""
    import ray

    _scratch_root().mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"trial-{request.number:05d}-", dir=_scratch_root()))
    try:
        local = dataclasses.replace(
            request,
            checkpoint=_local_file(checkpoint, ".pt"),
            work_dir=scratch,
            reference=None
            if request.reference is None
            else dataclasses.replace(request.reference, path=_local_file(reference, ".onnx")),
        )
        outcome = trial_fn(local, should_prune)
        files = {name: Path(path).read_bytes() for name, path in outcome.artifacts.items()}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    context = ray.get_runtime_context()
    outcome.attrs["node_id"] = context.get_node_id()
    outcome.attrs["node_ip"] = ray.util.get_node_ip_address()
    outcome.attrs["hostname"] = socket.gethostname()
    return outcome, files


def _default_runtime_env(execution: ExecutionConfig) -> dict[str, Any] | None:
    """Joining a cluster, ship this code to the workers (their nodes need the dependencies,
    not vitopt itself), so every node runs the driver's version; ``runtime_env: {}`` opts
    out, for clusters where vitopt is installed on every node."""
    if execution.runtime_env is not None:
        return execution.runtime_env or None
    if execution.ray_address is None:
        return None
    import jetson_agent
    import optimizer
    from optimizer.plugin_host.manager import builtin_package_dir

    return {"py_modules": [optimizer, builtin_package_dir(), jetson_agent]}


class RayExecutor:
    """One Ray task per trial, never retried by Ray: a worker that dies fails its trial (the
    driver decides whether to run it again). Per-epoch values travel through a broker actor to
    the driver, which consults Optuna's pruner (see ``prune_broker.py``)."""

    def __init__(self, execution: ExecutionConfig, workers: int, trial_fn: TrialFn = run_trial):
        import ray

        self._ray = ray
        self._started = not ray.is_initialized()
        if self._started:
            try:
                ray.init(
                    # No address: a fresh runtime on this machine, never a cluster that a
                    # stale /tmp/ray/ray_current_cluster file points to ("auto" joins one).
                    address=execution.ray_address or "local",
                    runtime_env=_default_runtime_env(execution),
                    include_dashboard=False,
                    logging_level="WARNING",
                    log_to_driver=False,
                )
            except (ConnectionError, RuntimeError) as exc:
                hint = (
                    " (a cluster started with 'ray start' checks a token: export "
                    "RAY_AUTH_MODE=token on this machine too; see docs/distributed.md)"
                    if "auth" in str(exc).lower()
                    else ""
                )
                first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise ClusterUnavailable(
                    f"cannot join the Ray cluster at {execution.ray_address}: {first_line}{hint}"
                ) from exc
        self.capacity = workers
        self._trial_fn = trial_fn
        self._requests: dict[Any, TrialRequest] = {}
        self._shipped: dict[Path, Any] = {}  # files the trials need, in the object store
        self._broker = PruneBroker()
        self._task = ray.remote(
            num_cpus=execution.num_cpus,
            num_gpus=execution.num_gpus,
            resources=execution.resources or None,
            max_retries=0,
        )(trial_on_worker)

    def share(self, cls: Callable[..., T], *args: Any) -> Any:
        return ActorProxy(self._ray.remote(num_cpus=0, max_concurrency=64)(cls).remote(*args))

    def _ship(self, path: Path | None) -> Any:
        """The file's bytes in the object store, put there once."""
        if path is None:
            return None
        if path not in self._shipped:
            self._shipped[path] = self._ray.put(path.read_bytes())
        return self._shipped[path]

    def submit(self, request: TrialRequest, should_prune: ShouldPrune | None) -> Any:
        ref = self._task.remote(
            request,
            self._ship(request.checkpoint),
            self._ship(request.reference.path if request.reference else None),
            self._broker.for_trial(request.number),
            self._trial_fn,
        )
        self._requests[ref] = request
        return ref

    def wait(
        self,
        handles: list[Any],
        timeout_s: float,
        decide: Callable[[int, int, float], bool] | None = None,
    ) -> list[tuple[Any, TrialOutcome]]:
        if not handles:
            return []
        # Back as soon as one trial is done (its slot refills at once), with any others done too.
        ready, rest = self._ray.wait(handles, num_returns=1, timeout=timeout_s)
        if ready and rest:
            ready += self._ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        if decide is not None:
            self._broker.serve(decide)
        finished = []
        for ref in ready:
            request = self._requests.pop(ref)
            try:
                outcome, files = self._ray.get(ref)
            except self._ray.exceptions.RayError as exc:
                outcome = TrialOutcome(request.number, "FAIL")
                outcome.attrs["fail_reason"] = f"Ray worker failed: {type(exc).__name__}: {exc}"[
                    :2000
                ]
                outcome.attrs["candidate_fault"] = False
                files = {}
            outcome.artifacts = _write_files(request.work_dir, files)
            finished.append((ref, outcome))
        return finished

    def cancel(self, handles: list[Any]) -> None:
        for ref in handles:
            self._ray.cancel(ref, force=True)
            self._requests.pop(ref, None)

    def shutdown(self) -> None:
        if self._started:
            self._ray.shutdown()


def _write_files(folder: Path, files: dict[str, bytes]) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, data in files.items():
        (folder / name).write_bytes(data)
        paths[name] = str(folder / name)
    return paths


def make_executor(
    execution: ExecutionConfig, workers: int, trial_fn: TrialFn = run_trial
) -> Executor:
    if workers == 0:
        return InProcessExecutor(trial_fn)
    return RayExecutor(execution, workers, trial_fn)
