"""What a plugin registers, checked as it is collected: techniques (a stage, valid parameters,
names unique across plugins), tasks (the :class:`~optimizer.plugin_api.Task` members) and data
sources (a :class:`~optimizer.plugin_api.DataSource`, or a function). Every problem is a
:class:`PluginError` of one line naming the plugin and its distribution."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pluggy

from optimizer.plugin_api.data_source import DataSource, as_data_source
from optimizer.plugin_api.family import ModelFamily
from optimizer.plugin_api.task import Task, missing_members
from optimizer.plugin_api.technique import STAGES, ParamSpec, Technique
from optimizer.plugin_host.manager import (
    BUILTIN_PREFIX,
    PluginError,
    PluginSource,
    VitoptPluginManager,
    one_line,
)


@dataclass(frozen=True)
class RegisteredTechnique:
    technique: Technique
    source: PluginSource

    @property
    def plugin(self) -> str:
        """The plugin, as error messages name it."""
        return self.source.describe()


def _call(impl: Any, hook: str, label: str, empty: Any) -> Any:
    """What one plugin's implementation of ``hook`` returns (``empty`` for None)."""
    try:
        result = impl.function()
    except Exception as exc:
        raise PluginError(f"{label} failed in {hook}: {one_line(exc)}") from exc
    return empty if result is None else result


def register_techniques(impl: Any, source: PluginSource) -> list[RegisteredTechnique]:
    """The techniques one plugin's ``vitopt_register_techniques`` returns, each checked."""
    label = source.describe()
    techniques = _call(impl, "vitopt_register_techniques", label, [])
    if not isinstance(techniques, list | tuple):
        raise PluginError(
            f"{label}: vitopt_register_techniques must return a list of techniques, "
            f"not {type(techniques).__name__}"
        )
    for technique in techniques:
        _check_technique(technique, label)
    return [RegisteredTechnique(t, source) for t in techniques]


def source_of(manager: pluggy.PluginManager, plugin: object) -> PluginSource:
    if isinstance(manager, VitoptPluginManager):
        return manager.source_of(plugin)
    name = manager.get_name(plugin) or repr(plugin)
    for dist_plugin, dist in manager.list_plugin_distinfo():
        if dist_plugin is plugin:
            return PluginSource(name, name, dist.project_name, dist.version)
    return PluginSource(name.removeprefix(BUILTIN_PREFIX), name)


def collect_techniques(manager: pluggy.PluginManager) -> list[RegisteredTechnique]:
    """Every registered technique, checked: a stage it may run in, valid parameters, unique
    technique names and parameter names, conditions on parameters declared before."""
    found: list[RegisteredTechnique] = []
    # get_hookimpls() is in registration order (built-ins, then entry points); pluggy *calls*
    # hooks in the reverse order, which is why the hook is not simply called here.
    for impl in manager.hook.vitopt_register_techniques.get_hookimpls():
        found.extend(register_techniques(impl, source_of(manager, impl.plugin)))
    problems = cross_check(found)
    if problems:
        raise PluginError(problems[0][1])
    return found


def _check_technique(technique: object, label: str) -> None:
    if not isinstance(technique, Technique):
        missing = [
            attr
            for attr in ("name", "stage", "search_space", "apply")
            if not hasattr(technique, attr)
        ]
        raise PluginError(
            f"{label} returned {type(technique).__name__} from vitopt_register_techniques, "
            f"which lacks {', '.join(missing)} (not a technique)"
        )
    name = technique.name
    if not isinstance(name, str) or not name.strip():
        raise PluginError(f"{label}: a technique's name must be a non-empty string, not {name!r}")
    if technique.stage not in STAGES:
        raise PluginError(
            f"{label}: technique {name!r} has stage {technique.stage!r}; "
            f"expected one of {', '.join(STAGES)}"
        )
    try:
        specs = technique.search_space()
    except Exception as exc:
        raise PluginError(
            f"{label}: technique {name!r} failed in search_space: {one_line(exc)}"
        ) from exc
    if not isinstance(specs, list | tuple):
        raise PluginError(
            f"{label}: technique {name!r}: search_space must return a list of ParamSpec, "
            f"not {type(specs).__name__}"
        )
    for spec in specs:
        if not isinstance(spec, ParamSpec):
            raise PluginError(f"{label}: technique {name!r} declared {spec!r}, not a ParamSpec")
        try:
            spec.validate()
        except ValueError as exc:
            raise PluginError(f"{label}: technique {name!r}: invalid {exc}") from exc


def claimed_twice(kind: str, name: str, first: PluginSource, second: PluginSource) -> str:
    """The one-line error for a name two plugins register (a technique, a task, a source)."""
    return f"{kind} name {name!r} is claimed by both {first.describe()} and {second.describe()}"


def cross_check(found: Sequence[RegisteredTechnique]) -> list[tuple[PluginSource, str]]:
    """What only shows across plugins: a technique or parameter name claimed twice (blamed on
    the later claimant), a ``when`` on a parameter not declared before."""
    problems: list[tuple[PluginSource, str]] = []
    names: dict[str, RegisteredTechnique] = {}
    params: dict[str, RegisteredTechnique] = {}
    for entry in found:
        name = entry.technique.name
        if name in names:
            problems.append(
                (entry.source, claimed_twice("technique", name, names[name].source, entry.source))
            )
            continue
        names[name] = entry
        for spec in entry.technique.search_space():
            first = params.get(spec.name)
            if first is not None:
                problems.append(
                    (
                        entry.source,
                        f"search parameter {spec.name!r} is declared by both {first.plugin} "
                        f"(technique {first.technique.name!r}) and {entry.plugin} "
                        f"(technique {name!r})",
                    )
                )
                continue
            for dependency in spec.when:
                if dependency not in params:
                    problems.append(
                        (
                            entry.source,
                            f"{entry.plugin}: technique {name!r}: parameter {spec.name!r} is "
                            f"conditional on {dependency!r}, which is not declared before it",
                        )
                    )
            params[spec.name] = entry
    return problems


def _conforming(entry: object, protocol: type, what: str, label: str, hint: str) -> None:
    """PluginError naming the members of ``protocol`` that ``entry`` (``what``) lacks."""
    if not isinstance(entry, protocol):
        raise PluginError(
            f"{label}: {what} is a {type(entry).__name__}, which lacks "
            f"{', '.join(missing_members(entry, protocol))} ({hint})"
        )


def check_task(task: object, label: str, name: str) -> Task:
    hint = "subclass optimizer.plugin_api.TaskBase for the optional members' defaults"
    _conforming(task, Task, f"task {name!r}", label, hint)
    return task


def check_data_source(source: object, label: str, name: str) -> DataSource:
    try:
        return as_data_source(source)
    except TypeError as exc:
        raise PluginError(f"{label}: data source {name!r}: {exc}") from exc


def check_family(family: object, label: str, name: str) -> ModelFamily:
    hint = "subclass optimizer.plugin_api.ModelFamilyBase for the defaults"
    _conforming(family, ModelFamily, f"model family {name!r}", label, hint)
    if not family.model_names:
        raise PluginError(f"{label}: model family {name!r} covers no model name (model_names)")
    return family


# Each registering hook of named entries: what it registers (as errors name it) and its check.
NAMED_HOOKS: dict[str, tuple[str, Callable[[object, str, str], Any]]] = {
    "vitopt_register_tasks": ("task", check_task),
    "vitopt_register_datasets": ("data source", check_data_source),
    "vitopt_register_model_families": ("model family", check_family),
}


def register_named(hook: str, impl: Any, source: PluginSource) -> dict[str, Any]:
    """What one plugin's implementation of ``hook`` (a :data:`NAMED_HOOKS` key) registers,
    each entry checked."""
    label = source.describe()
    _, check = NAMED_HOOKS[hook]
    entries = _call(impl, hook, label, {})
    if not isinstance(entries, Mapping):
        raise PluginError(
            f"{label}: {hook} must return a mapping of names, not {type(entries).__name__}"
        )
    return {str(name): check(entry, label, str(name)) for name, entry in entries.items()}
