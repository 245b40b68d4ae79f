"""Where trials compute: in the driver's own process (``--workers 0``, for debugging) or as Ray
tasks (a local runtime by default, a cluster with ``ray_address``). Both implement one small
interface; the driver owns the study either way."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from .config import ExecutionConfig
from .pipeline import ShouldPrune, TrialOutcome, TrialRequest, run_trial
from .prune_broker import PruneBroker


class Executor(Protocol):
    capacity: int

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

    def __init__(self) -> None:
        self._done: dict[int, TrialOutcome] = {}

    def submit(self, request: TrialRequest, should_prune: ShouldPrune | None) -> int:
        self._done[request.number] = run_trial(request, should_prune)
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


class RayExecutor:
    """One Ray task per trial, never retried by Ray: a worker that dies fails its trial and the
    campaign goes on. Per-epoch values travel through a broker actor to the driver, which
    consults Optuna's pruner (see ``prune_broker.py``)."""

    def __init__(self, execution: ExecutionConfig, workers: int):
        import ray

        self._ray = ray
        self._started = not ray.is_initialized()
        if self._started:
            ray.init(
                address=execution.ray_address,
                include_dashboard=False,
                logging_level="WARNING",
                log_to_driver=False,
            )
        self.capacity = workers
        self._numbers: dict[Any, int] = {}
        self._broker = PruneBroker()
        self._task = ray.remote(
            num_cpus=execution.num_cpus, num_gpus=execution.num_gpus, max_retries=0
        )(run_trial)

    def submit(self, request: TrialRequest, should_prune: ShouldPrune | None) -> Any:
        ref = self._task.remote(request, self._broker.for_trial(request.number))
        self._numbers[ref] = request.number
        return ref

    def wait(
        self,
        handles: list[Any],
        timeout_s: float,
        decide: Callable[[int, int, float], bool] | None = None,
    ) -> list[tuple[Any, TrialOutcome]]:
        if not handles:
            return []
        ready, _ = self._ray.wait(handles, num_returns=len(handles), timeout=timeout_s)
        if decide is not None:
            self._broker.serve(decide)
        finished = []
        for ref in ready:
            number = self._numbers.pop(ref)
            try:
                outcome = self._ray.get(ref)
            except self._ray.exceptions.RayError as exc:
                outcome = TrialOutcome(number, "FAIL")
                outcome.attrs["fail_reason"] = f"Ray worker failed: {type(exc).__name__}: {exc}"[
                    :2000
                ]
                outcome.attrs["candidate_fault"] = False
            finished.append((ref, outcome))
        return finished

    def cancel(self, handles: list[Any]) -> None:
        for ref in handles:
            self._ray.cancel(ref, force=True)
            self._numbers.pop(ref, None)

    def shutdown(self) -> None:
        if self._started:
            self._ray.shutdown()


def make_executor(execution: ExecutionConfig, workers: int) -> Executor:
    if workers == 0:
        return InProcessExecutor()
    return RayExecutor(execution, workers)
