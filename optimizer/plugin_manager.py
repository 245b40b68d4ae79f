"""Build the pluggy manager: built-in plugins and installed ``vitopt.plugins`` entry points.

Built-ins register through the same hooks as third-party plugins. A plugin that fails to load,
declares a bad parameter or claims a taken technique name stops the campaign before it starts,
with a message that names the plugin.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable
from dataclasses import dataclass

import pluggy

from . import hookspecs
from .technique import STAGES, ParamSpec, Technique

BUILTIN_PLUGINS = (
    "plugins.classification",
    "plugins.pruning",
    "plugins.distillation",
    "plugins.quantization",
)
DISABLE_ENV = "VITOPT_DISABLE_PLUGINS"


class PluginError(Exception):
    """A plugin is broken; the message names it."""


@dataclass(frozen=True)
class RegisteredTechnique:
    technique: Technique
    plugin: str  # "builtin:plugins.pruning" or "dist-name 1.2 (module)"


def _disabled(extra: Iterable[str]) -> set[str]:
    from_env = {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}
    return from_env | set(extra)


def build_plugin_manager(disable: Iterable[str] = ()) -> pluggy.PluginManager:
    """Built-ins first, then entry points; ``disable`` (and $VITOPT_DISABLE_PLUGINS) names
    plugins to skip (a built-in by module, e.g. ``plugins.quantization``, or an entry-point
    name)."""
    skip = _disabled(disable)
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    for module_name in BUILTIN_PLUGINS:
        if module_name in skip:
            continue
        manager.register(importlib.import_module(module_name), name=f"builtin:{module_name}")
    for name in skip:
        manager.set_blocked(name)
    try:
        manager.load_setuptools_entrypoints(hookspecs.ENTRY_POINT_GROUP)
    except Exception as exc:
        raise PluginError(f"a {hookspecs.ENTRY_POINT_GROUP} plugin failed to load: {exc}") from exc
    return manager


def _plugin_label(manager: pluggy.PluginManager, plugin: object) -> str:
    name = manager.get_name(plugin) or repr(plugin)
    for dist_plugin, dist in manager.list_plugin_distinfo():
        if dist_plugin is plugin:
            return f"{dist.project_name} {dist.version} ({name})"
    return name


def collect_techniques(manager: pluggy.PluginManager) -> list[RegisteredTechnique]:
    """Every registered technique, checked: a stage it may run in, valid parameters, unique
    technique names and parameter names."""
    found: list[RegisteredTechnique] = []
    impls = manager.hook.vitopt_register_techniques.get_hookimpls()
    for impl in reversed(impls):  # registration order
        label = _plugin_label(manager, impl.plugin)
        try:
            techniques = impl.function()
        except Exception as exc:
            raise PluginError(
                f"plugin {label} failed in vitopt_register_techniques: {exc}"
            ) from exc
        if not isinstance(techniques, list | tuple):
            raise PluginError(f"plugin {label} must return a list of techniques")
        for technique in techniques:
            _check_technique(technique, label)
            found.append(RegisteredTechnique(technique, label))
    _check_unique(found)
    return found


def _check_technique(technique: object, label: str) -> None:
    if not isinstance(technique, Technique):
        raise PluginError(
            f"plugin {label} returned {technique!r}, which lacks name/stage/search_space/apply"
        )
    if technique.stage not in STAGES:
        raise PluginError(
            f"plugin {label}: technique {technique.name!r} has stage {technique.stage!r}; "
            f"expected one of {', '.join(STAGES)}"
        )
    for spec in technique.search_space():
        if not isinstance(spec, ParamSpec):
            raise PluginError(
                f"plugin {label}: {technique.name} declared {spec!r}, not a ParamSpec"
            )
        try:
            spec.validate()
        except ValueError as exc:
            raise PluginError(f"plugin {label}: technique {technique.name}: {exc}") from exc


def _check_unique(found: list[RegisteredTechnique]) -> None:
    names: dict[str, str] = {}
    params: dict[str, str] = {}
    for entry in found:
        name = entry.technique.name
        if name in names:
            raise PluginError(
                f"technique name {name!r} is claimed by both {names[name]} and {entry.plugin}"
            )
        names[name] = entry.plugin
        for spec in entry.technique.search_space():
            if spec.name in params:
                raise PluginError(
                    f"search parameter {spec.name!r} is declared by both {params[spec.name]} "
                    f"and {entry.plugin}"
                )
            params[spec.name] = entry.plugin
