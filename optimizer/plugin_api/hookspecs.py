"""vitopt's plugin hooks: the reference for plugin authors.

vitopt is extended with `pluggy <https://pluggy.readthedocs.io>`_ (project name ``vitopt``). A
plugin is a module whose functions are named like the hooks below and decorated with
:data:`hookimpl`::

    from optimizer.plugin_api import hookimpl

    @hookimpl
    def vitopt_register_techniques():
        return [LowRank()]

An installed distribution exposes its plugin module through the ``vitopt.plugins`` entry-point
group (``[project.entry-points."vitopt.plugins"] lowrank = "vitopt_lowrank.plugin"`` in its
``pyproject.toml``); the entry-point name (``lowrank``) is the plugin's name, the one
``plugins.disable`` and ``$VITOPT_DISABLE_PLUGINS`` take. The built-in techniques
(``plugins.pruning``, ``plugins.distillation``, ``plugins.quantization``) register through
exactly these hooks. ``vitopt plugins`` lists what is installed; ``vitopt plugin new NAME``
scaffolds a package; ``docs/plugins.md`` is the guide. The contracts themselves live
beside this module: techniques in :mod:`optimizer.plugin_api.technique`, tasks in
:mod:`optimizer.plugin_api.task`, data sources in :mod:`optimizer.plugin_api.data_source`;
:mod:`optimizer.plugin_api` exports them all.

Where hooks run. A campaign has one *driver* process (``vitopt run``: it owns the Optuna study)
and runs each trial either in the driver (``execution.workers: 0``) or in a Ray worker, possibly
on another machine of a cluster. Registration hooks are called in every process that builds the
plugin manager (the driver, each trial's process, ``vitopt plugins``), so they must be cheap and
free of side effects: import heavy libraries inside ``Technique.apply``, not at module level.
Lifecycle hooks are called in the driver only.

Errors. A plugin that fails to import, raises in a registration hook, returns something that is
not a technique, declares an invalid :class:`~optimizer.plugin_api.technique.ParamSpec`, or claims a
technique name or parameter name another plugin has, stops ``vitopt run`` (and makes
``vitopt plugins`` exit non-zero) before any trial, with one line naming the plugin and its
distribution. A technique that raises inside ``apply`` fails that trial only.

Stability: hooks gain keyword arguments over time, never lose them, and an implementation may
accept only the arguments it needs (pluggy passes them by name); new hooks may be added. The
dataclasses of :mod:`optimizer.plugin_api.technique` gain fields with defaults, never lose them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pluggy

from optimizer.plugin_api.data_source import DataSource, Splits
from optimizer.plugin_api.family import ModelFamily
from optimizer.plugin_api.task import Task
from optimizer.plugin_api.technique import Technique

__all__ = [
    "ENTRY_POINT_GROUP",
    "PROJECT",
    "hookimpl",
    "hookspec",
    "vitopt_campaign_finished",
    "vitopt_register_datasets",
    "vitopt_register_model_families",
    "vitopt_register_tasks",
    "vitopt_register_techniques",
    "vitopt_trial_finished",
    "vitopt_trial_started",
]

PROJECT = "vitopt"
ENTRY_POINT_GROUP = "vitopt.plugins"

hookspec = pluggy.HookspecMarker(PROJECT)
#: Decorate a plugin's hook functions with this (``from optimizer.plugin_api import hookimpl``).
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def vitopt_register_techniques() -> Sequence[Technique]:
    """Return the compression techniques this plugin provides (a list, possibly empty).

    Called when the plugin manager is built: in the driver before the search starts (to build
    the search space from every technique's
    :meth:`~optimizer.plugin_api.Technique.search_space`), in every trial's process (a Ray
    worker, or the driver with ``execution.workers: 0``) before the trial runs, and by
    ``vitopt plugins``. Return fresh, cheap objects; do not load models or data here.

    Each technique is checked at once: a ``name`` unique across plugins, a ``stage`` of
    ``prune``, ``train`` or ``quantize``, and valid parameters (each a
    :class:`~optimizer.plugin_api.ParamSpec` with a qualified name unique across plugins, a
    default inside its range, and ``when`` naming parameters declared before it). Raising here,
    or returning something else, stops the campaign before any trial with a message naming the
    plugin and its distribution.
    """


@hookspec
def vitopt_register_tasks() -> Mapping[str, Task]:
    """Return ``{name: task}`` for the tasks this plugin provides (``classification``): each a
    :class:`~optimizer.plugin_api.Task`, best a :class:`~optimizer.plugin_api.TaskBase`
    subclass (its loss, its metrics on torch models and on the deployable ONNX file, its model).

    Called in the driver and in every trial's process, like
    :func:`vitopt_register_techniques`; a task is chosen by the campaign's ``task.name``. An
    entry that is not a task, a name another plugin registers, or raising here stops the
    campaign before any trial, naming the plugin.
    """


@hookspec
def vitopt_register_datasets() -> Mapping[str, DataSource | Callable[[Any], Splits]]:
    """Return ``{name: source}`` for data sources (``digits``, ``imagefolder``): each a
    :class:`~optimizer.plugin_api.DataSource` (best a
    :class:`~optimizer.plugin_api.DataSourceBase` subclass) or a plain function from the
    campaign's ``data`` section to :class:`~optimizer.plugin_api.Splits`.

    The driver calls the source's ``check(data)`` before the baseline is trained, and its
    ``load(data)`` once per process that needs the splits (they are cached per process); a
    source is chosen by the campaign's ``data.source``. Errors stop the campaign as for tasks.
    """


@hookspec
def vitopt_register_model_families() -> Mapping[str, ModelFamily]:
    """Return ``{name: family}`` for the model families this plugin provides (``vit``,
    ``swin``, ``mobilevit``, ``efficientformer``, ``levit``): each a
    :class:`~optimizer.plugin_api.ModelFamily` (best a
    :class:`~optimizer.plugin_api.ModelFamilyBase` subclass) saying what a structural pruner may
    remove from its models, which of their features feed a decode head, and what their export
    for TensorRT 8.2 needs.

    A campaign's ``model.name`` (and ``teacher.name``) picks the first family, in registration
    order, whose ``model_names`` patterns cover it. Called like :func:`vitopt_register_tasks`;
    errors stop the campaign as for tasks.
    """


@hookspec
def vitopt_trial_started(trial_number: int, params: Mapping[str, Any]) -> None:
    """A trial is about to be submitted with ``params`` (every parameter by qualified name).

    For loggers and trackers. Called in the driver only, before the trial runs; the return value
    is ignored. An exception stops the campaign (finished trials are kept, ``vitopt run``
    resumes), so a logger should catch its own errors.
    """


@hookspec
def vitopt_trial_finished(
    trial_number: int, state: str, values: Sequence[float] | None, attrs: Mapping[str, Any]
) -> None:
    """A trial was recorded in the study.

    ``state`` is ``COMPLETE``, ``PRUNED`` or ``FAIL``; ``values`` its objective values (latency,
    or latency and accuracy in Pareto mode; ``None`` unless complete); ``attrs`` its user
    attributes (``accuracy``, ``latency_p50_ms``, ``speedup``, ``fail_reason`` ...). Called in
    the driver only; the return value is ignored; an exception stops the campaign.
    """


@hookspec
def vitopt_campaign_finished(summary: Mapping[str, Any]) -> None:
    """The campaign stopped after reaching its trial target or its time limit; ``summary`` is
    the report ``vitopt run --json`` prints (baseline, best feasible trial, counts). Called in
    the driver only; the return value is ignored.
    """
