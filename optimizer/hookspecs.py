"""vitopt's plugin hooks (pluggy project ``vitopt``, entry-point group ``vitopt.plugins``).

Written for plugin authors. A plugin is a module (or object) with functions named like the hooks
below and marked with :data:`hookimpl`; installed distributions expose it through the
``vitopt.plugins`` entry point, and the built-in techniques register exactly the same way.

Stability: hooks gain keyword arguments over time, never lose them; an implementation may
accept only the arguments it needs (pluggy passes arguments by name).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pluggy

from .technique import Technique

PROJECT = "vitopt"
ENTRY_POINT_GROUP = "vitopt.plugins"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def vitopt_register_techniques() -> Sequence[Technique]:
    """Return the compression techniques this plugin provides.

    Each technique declares its ``stage`` (prune, train or quantize), its search parameters
    (fully qualified names such as ``prune.ratio``, unique across all plugins) and ``apply``.
    Called once per process when the plugin manager is built.
    """


@hookspec
def vitopt_register_tasks() -> Mapping[str, Any]:
    """Return ``{name: task}`` for the tasks this plugin provides (``classification`` ...).

    A task knows how to build the head of a model, its loss, and its metric on ONNX outputs.
    """


@hookspec
def vitopt_register_datasets() -> Mapping[str, Any]:
    """Return ``{name: factory}`` for data sources (``digits``, ``imagefolder`` ...).

    A factory takes the campaign's ``data`` section and returns train/val/test datasets.
    """


@hookspec
def vitopt_trial_started(trial_number: int, params: Mapping[str, Any]) -> None:
    """A trial is about to run with ``params`` (for loggers; the return value is ignored)."""


@hookspec
def vitopt_trial_finished(
    trial_number: int, state: str, values: Sequence[float] | None, attrs: Mapping[str, Any]
) -> None:
    """A trial ended: ``state`` is COMPLETE, PRUNED or FAIL; ``attrs`` are its user attributes."""


@hookspec
def vitopt_campaign_finished(summary: Mapping[str, Any]) -> None:
    """The campaign stopped (finished, interrupted or out of time); ``summary`` is its report."""
