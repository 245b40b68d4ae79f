"""What ``vitopt plugins`` shows: every installed plugin, disabled ones too, with what it
registers or its error. The forgiving twin of :func:`~optimizer.plugin_host.registry.
build_registry`: a broken plugin is reported and the survey goes on with the next."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from optimizer.plugin_api.technique import Technique
from optimizer.plugin_host.checks import (
    NAMED_HOOKS,
    RegisteredTechnique,
    claimed_twice,
    cross_check,
    register_named,
    register_techniques,
)
from optimizer.plugin_host.manager import (
    PluginError,
    PluginSource,
    VitoptPluginManager,
    candidates,
    disabled_names,
    load_candidate,
)


@dataclass
class PluginStatus:
    """One installed plugin, as ``vitopt plugins`` shows it."""

    source: PluginSource
    disabled: bool
    techniques: list[Technique] = field(default_factory=list)
    # What it registers by name, by hook (tasks, data sources, model families: NAMED_HOOKS).
    named: dict[str, dict[str, Any]] = field(default_factory=dict)
    hooks: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def tasks(self) -> list[str]:
        return list(self.named.get("vitopt_register_tasks", {}))

    @property
    def datasets(self) -> list[str]:
        return list(self.named.get("vitopt_register_datasets", {}))

    @property
    def model_families(self) -> dict[str, Any]:
        """Its model families by name (each says the model names it covers)."""
        return self.named.get("vitopt_register_model_families", {})


@dataclass
class Survey:
    plugins: list[PluginStatus]
    unknown_disabled: list[str]

    @property
    def errors(self) -> list[str]:
        """What stops a campaign: errors of enabled plugins."""
        return [p.error for p in self.plugins if p.error and not p.disabled]


def survey(disable: Iterable[str] = ()) -> Survey:
    """Every installed plugin (disabled ones too), with its techniques or its error; never
    raises for a broken plugin. Name and parameter clashes are checked among enabled plugins,
    as a campaign would."""
    skip = disabled_names(disable)
    manager = VitoptPluginManager()
    statuses: list[PluginStatus] = []
    registered: list[RegisteredTechnique] = []
    for candidate in candidates():
        status = PluginStatus(candidate.source, disabled=candidate.source.name in skip)
        statuses.append(status)
        try:
            plugin = load_candidate(candidate)
            manager.add(plugin, candidate.source, candidate.dist)
            status.hooks = sorted(caller.name for caller in manager.get_hookcallers(plugin) or ())
            for impl in manager.hook.vitopt_register_techniques.get_hookimpls():
                if impl.plugin is plugin:
                    entries = register_techniques(impl, candidate.source)
                    status.techniques = [entry.technique for entry in entries]
                    if not status.disabled:
                        registered.extend(entries)
            for hook in NAMED_HOOKS:
                for impl in getattr(manager.hook, hook).get_hookimpls():
                    if impl.plugin is plugin:
                        entries = register_named(hook, impl, candidate.source)
                        status.named.setdefault(hook, {}).update(entries)
        except PluginError as exc:
            status.error = str(exc)
    by_source = {status.source: status for status in statuses}
    for source, problem in cross_check(registered):
        status = by_source[source]
        status.error = status.error or problem
    for hook, (kind, _) in NAMED_HOOKS.items():
        claimed: dict[str, PluginSource] = {}
        for status in statuses:
            if status.disabled or status.error:
                continue
            for name in status.named.get(hook, {}):
                if name in claimed:
                    status.error = claimed_twice(kind, name, claimed[name], status.source)
                claimed.setdefault(name, status.source)
    known = {status.source.name for status in statuses}
    return Survey(statuses, sorted(skip - known))
