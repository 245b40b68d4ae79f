"""One registry per process: the enabled plugins' techniques (by stage), tasks, data sources and
model families, loaded and checked once.

The driver, each trial's process and the conformance helpers ask :func:`plugin_registry` for
it; ``plugins.disable`` (and ``$VITOPT_DISABLE_PLUGINS``) applies to all three kinds, and a
name two plugins register is a :class:`~optimizer.plugin_host.manager.PluginError` naming both,
whichever kind it is: no plugin silently overrides another.
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from optimizer.config import CampaignError
from optimizer.plugin_api.data_source import DataSource
from optimizer.plugin_api.family import ModelFamily, covers
from optimizer.plugin_api.hookspecs import ENTRY_POINT_GROUP
from optimizer.plugin_api.task import Task
from optimizer.plugin_api.technique import STAGES, ParamSpec, Stage
from optimizer.plugin_host.checks import (
    NAMED_HOOKS,
    RegisteredTechnique,
    claimed_twice,
    collect_techniques,
    register_named,
    source_of,
)
from optimizer.plugin_host.manager import (
    PluginError,
    PluginSource,
    VitoptPluginManager,
    build_plugin_manager,
    disabled_names,
)


@dataclass(frozen=True)
class Registry:
    manager: VitoptPluginManager
    techniques: tuple[RegisteredTechnique, ...]
    # name -> (entry, the plugin that registered it), by hook (NAMED_HOOKS).
    named: Mapping[str, Mapping[str, tuple[Any, PluginSource]]]

    def stage(self, stage: Stage) -> list[RegisteredTechnique]:
        """The techniques of ``stage``, in the order they run (registration order)."""
        return [entry for entry in self.techniques if entry.technique.stage == stage]

    def by_stage(self) -> dict[Stage, list[RegisteredTechnique]]:
        return {stage: self.stage(stage) for stage in STAGES}

    def declared(self) -> list[ParamSpec]:
        """Every technique's parameters, in declaration order."""
        return [spec for entry in self.techniques for spec in entry.technique.search_space()]

    def task(self, name: str, key: str = "task.name") -> Task:
        return self._entry("vitopt_register_tasks", name, key)

    def data_source(self, name: str, key: str = "data.source") -> DataSource:
        return self._entry("vitopt_register_datasets", name, key)

    def model_family(self, model_name: str) -> ModelFamily | None:
        """The first family, in registration order, that covers the timm model ``model_name``
        (``None`` when none does)."""
        families = self.named["vitopt_register_model_families"].values()
        return next((f for f, _ in families if covers(f, model_name)), None)

    def no_family(self, model_name: str, key: str = "model.name") -> str:
        """Why ``model_name`` has no family: the line a refusal shows."""
        families = self.named["vitopt_register_model_families"]
        known = "; ".join(
            f"{name}: {', '.join(family.model_names)}" for name, (family, _) in families.items()
        )
        return (
            f"{key}: no model family covers {model_name!r} (families: {known or 'none'}; "
            "see vitopt plugins)"
        )

    def names(self, hook: str) -> list[str]:
        return sorted(self.named[hook])

    def _entry(self, hook: str, name: str, key: str) -> Any:
        entries = self.named[hook]
        if name not in entries:
            # The campaign file's mistake, not a plugin's.
            raise CampaignError(
                f"{key}: {name!r} is not registered by any enabled plugin "
                f"(registered: {', '.join(sorted(entries)) or 'none'}; see vitopt plugins)"
            )
        return entries[name][0]


def build_registry(disable: Iterable[str] = ()) -> Registry:
    """Load the enabled plugins and check everything they register (PluginError at the first
    problem). Use :func:`plugin_registry`, which builds it once per process."""
    manager = build_plugin_manager(disable)
    named: dict[str, dict[str, tuple[Any, PluginSource]]] = {}
    for hook, (kind, _) in NAMED_HOOKS.items():
        entries: dict[str, tuple[Any, PluginSource]] = {}
        for impl in getattr(manager.hook, hook).get_hookimpls():  # in registration order
            source = source_of(manager, impl.plugin)
            for name, entry in register_named(hook, impl, source).items():
                if name in entries:
                    raise PluginError(claimed_twice(kind, name, entries[name][1], source))
                entries[name] = (entry, source)
        named[hook] = entries
    return Registry(manager, tuple(collect_techniques(manager)), named)


def plugin_registry(disable: Iterable[str] = ()) -> Registry:
    """The registry of this process for the campaign's ``plugins.disable``: built on first use,
    then shared. A plugin installed or disabled since (another entry point on the path, another
    ``$VITOPT_DISABLE_PLUGINS``) builds a new one."""
    installed = tuple(
        sorted(
            (ep.name, ep.value) for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        )
    )
    return _cached(frozenset(disabled_names(disable)), installed)


@functools.cache
def _cached(disable: frozenset[str], installed: tuple[tuple[str, str], ...]) -> Registry:
    return build_registry(disable)
