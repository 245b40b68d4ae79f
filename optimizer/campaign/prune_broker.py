"""Optuna's pruner for trials that run in Ray workers, with the driver as the study's only writer.

A worker's per-epoch report goes to a small async Ray actor and waits there; the driver drains
the actor between its other work, writes the value with ``trial.report``, asks
``trial.should_prune()`` and posts the answer, which releases the worker. A driver that does not
answer in time lets training go on (never a false prune).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

ANSWER_TIMEOUT_S = 60.0


class _Broker:
    def __init__(self) -> None:
        self._pending: list[tuple[int, int, float]] = []
        self._answers: dict[tuple[int, int], asyncio.Future] = {}

    async def ask(self, trial: int, step: int, value: float) -> bool:
        future = asyncio.get_running_loop().create_future()
        self._answers[(trial, step)] = future
        self._pending.append((trial, step, value))
        try:
            return await asyncio.wait_for(future, ANSWER_TIMEOUT_S)
        except asyncio.TimeoutError:
            return False
        finally:
            self._answers.pop((trial, step), None)

    async def take(self) -> list[tuple[int, int, float]]:
        pending, self._pending = self._pending, []
        return pending

    async def answer(self, trial: int, step: int, prune: bool) -> None:
        future = self._answers.get((trial, step))
        if future is not None and not future.done():
            future.set_result(prune)


class RemoteShouldPrune:
    """The ``should_prune`` a Ray trial receives: picklable, it asks the broker actor."""

    def __init__(self, broker: Any, trial: int):
        self._broker = broker
        self._trial = trial

    def __call__(self, step: int, value: float) -> bool:
        import ray

        return bool(ray.get(self._broker.ask.remote(self._trial, step, value)))


class PruneBroker:
    """Driver side: create the actor, hand out callables, answer pending reports."""

    def __init__(self) -> None:
        import ray

        self._ray = ray
        self._actor = ray.remote(num_cpus=0)(_Broker).remote()

    def for_trial(self, number: int) -> RemoteShouldPrune:
        return RemoteShouldPrune(self._actor, number)

    def serve(self, decide: Callable[[int, int, float], bool]) -> int:
        """Answer every report waiting now; ``decide(trial, step, value)`` runs in the driver."""
        pending = self._ray.get(self._actor.take.remote())
        for trial, step, value in pending:
            self._actor.answer.remote(trial, step, decide(trial, step, value))
        return len(pending)
