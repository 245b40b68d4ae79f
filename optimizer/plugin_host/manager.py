"""Build the pluggy manager: built-in plugins and installed ``vitopt.plugins`` entry points.

Built-ins register through the same hooks as third-party plugins. Entry points are loaded here,
one by one with :mod:`importlib.metadata` (not pluggy's ``load_setuptools_entrypoints``, which
stops at the first failure without saying which plugin failed), so that every problem names the
plugin and the distribution it came from::

    plugin 'lowrank' from vitopt-lowrank 0.1.0 failed to import: ModuleNotFoundError: ...

A plugin that fails to load, declares a bad parameter or claims a taken technique or parameter
name stops the campaign before it starts (:class:`PluginError`, one line). :func:`survey` is
the forgiving variant behind ``vitopt plugins``: it reports each plugin's techniques or its
error, and goes on with the next.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pluggy

from optimizer.plugin_api import hookspecs
from optimizer.plugin_api.technique import STAGES, ParamSpec, Technique

BUILTIN_PLUGINS = (
    "plugins.classification",
    "plugins.segmentation",
    "plugins.pruning",
    "plugins.distillation",
    "plugins.quantization",
)
DISABLE_ENV = "VITOPT_DISABLE_PLUGINS"
_BUILTIN_PREFIX = "builtin:"


def builtin_package_dir() -> str:
    """The folder of the package holding the built-in plugins, found without importing it (the
    core imports no plugin: import-linter checks it), for shipping to Ray workers."""
    package = BUILTIN_PLUGINS[0].split(".")[0]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the built-in plugins' package {package!r} is not installed")
    return next(iter(spec.submodule_search_locations))


class PluginError(Exception):
    """A plugin is broken; the message (one line) names it and its distribution."""


@dataclass(frozen=True)
class PluginSource:
    """Where a plugin comes from.

    ``name`` is what ``plugins.disable`` and ``$VITOPT_DISABLE_PLUGINS`` take: the entry-point
    name of an installed plugin, the module of a built-in (``plugins.quantization``)."""

    name: str
    module: str
    distribution: str | None = None  # None for a built-in
    version: str | None = None

    @property
    def builtin(self) -> bool:
        return self.distribution is None

    @property
    def origin(self) -> str:
        """``built-in`` or ``vitopt-lowrank 0.1.0``."""
        return "built-in" if self.builtin else f"{self.distribution} {self.version}"

    @property
    def registered_name(self) -> str:
        """The plugin's name in the pluggy manager."""
        return f"{_BUILTIN_PREFIX}{self.name}" if self.builtin else self.name

    def describe(self) -> str:
        """``plugin 'lowrank' from vitopt-lowrank 0.1.0`` (or ``built-in plugin '...'``)."""
        if self.builtin:
            return f"built-in plugin {self.name!r}"
        return f"plugin {self.name!r} from {self.origin}"


@dataclass(frozen=True)
class RegisteredTechnique:
    technique: Technique
    source: PluginSource

    @property
    def plugin(self) -> str:
        """The plugin, as error messages name it."""
        return self.source.describe()


class _DistInfo:
    """What pluggy's ``list_plugin_distinfo`` gives: a distribution with ``project_name``."""

    def __init__(self, dist: importlib.metadata.Distribution) -> None:
        self._dist = dist

    @property
    def project_name(self) -> str:
        return str(self._dist.metadata["Name"])

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._dist, attr)


class VitoptPluginManager(pluggy.PluginManager):
    """pluggy's manager with vitopt's hook specs, which knows where each plugin came from."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.sources: dict[str, PluginSource] = {}  # by registered name
        self._distributions: list[tuple[object, importlib.metadata.Distribution]] = []

    def add(
        self,
        plugin: object,
        source: PluginSource,
        dist: importlib.metadata.Distribution | None = None,
    ) -> None:
        """Register ``plugin`` and check its hook implementations; PluginError if it cannot."""
        try:
            self.register(plugin, name=source.registered_name)
        except Exception as exc:
            raise PluginError(
                f"{source.describe()} cannot be registered: {_one_line(exc)}"
            ) from exc
        self.sources[source.registered_name] = source
        if dist is not None:
            self._distributions.append((plugin, dist))
        unknown = [
            caller.name
            for caller in self.get_hookcallers(plugin) or ()
            if caller.spec is None and any(not impl.optionalhook for impl in caller.get_hookimpls())
        ]
        if unknown:
            self.unregister(plugin)
            known = ", ".join(sorted(n for n in dir(hookspecs) if n.startswith("vitopt_")))
            raise PluginError(
                f"{source.describe()} implements {', '.join(sorted(unknown))}, which is not a "
                f"vitopt hook (known: {known})"
            )

    def source_of(self, plugin: object) -> PluginSource:
        name = self.get_name(plugin) or repr(plugin)
        return self.sources.get(name) or PluginSource(name=name, module=name)

    def list_plugin_distinfo(self) -> list[tuple[object, Any]]:  # type: ignore[override]
        return [(plugin, _DistInfo(dist)) for plugin, dist in self._distributions]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def disabled_names(extra: Iterable[str] = ()) -> set[str]:
    """Plugins to skip: ``extra`` (a campaign's ``plugins.disable``) and $VITOPT_DISABLE_PLUGINS
    (comma-separated)."""
    from_env = {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}
    return from_env | {n.strip() for n in extra if n.strip()}


@dataclass
class _Candidate:
    source: PluginSource
    load: Callable[[], object]
    dist: importlib.metadata.Distribution | None = None
    error: str | None = None  # known broken before loading


def _dist_source(ep: importlib.metadata.EntryPoint, dist: Any) -> PluginSource:
    name = str(dist.metadata["Name"] or "?") if dist is not None else "?"
    version = str(dist.version) if dist is not None else "?"
    return PluginSource(name=ep.name, module=ep.value, distribution=name, version=version)


def _candidates() -> list[_Candidate]:
    """Built-ins, then the installed entry points, in sys.path order (the first copy of a
    distribution found wins, as for imports). Two distributions claiming one plugin name are an
    error for the second."""
    found = [
        _Candidate(PluginSource(name=module, module=module), _importer(module))
        for module in BUILTIN_PLUGINS
    ]
    claimed = {c.source.name: c.source for c in found}
    seen_dists: set[str] = set()
    for dist in importlib.metadata.distributions():
        dist_name = str(dist.metadata["Name"] or "")
        key = dist_name.lower().replace("_", "-")
        if key in seen_dists:
            continue  # a shadowed copy further down sys.path
        entry_points = [ep for ep in dist.entry_points if ep.group == hookspecs.ENTRY_POINT_GROUP]
        if not entry_points:
            continue
        seen_dists.add(key)
        for ep in entry_points:
            source = _dist_source(ep, dist)
            candidate = _Candidate(source, ep.load, dist)
            other = claimed.get(ep.name)
            if other is not None:
                candidate.error = (
                    f"{source.describe()}: the plugin name {ep.name!r} is taken by "
                    f"{other.describe()}"
                )
            else:
                claimed[ep.name] = source
            found.append(candidate)
    return found


def _importer(module: str) -> Callable[[], object]:
    return lambda: importlib.import_module(module)


def _load(candidate: _Candidate) -> object:
    if candidate.error is not None:
        raise PluginError(candidate.error)
    try:
        return candidate.load()
    except Exception as exc:
        raise PluginError(
            f"{candidate.source.describe()} failed to import: {_one_line(exc)}"
        ) from exc


def build_plugin_manager(disable: Iterable[str] = ()) -> VitoptPluginManager:
    """Built-ins first, then entry points; ``disable`` (and $VITOPT_DISABLE_PLUGINS) names
    plugins to skip (a built-in by module, e.g. ``plugins.quantization``, or an entry-point
    name). Raises :class:`PluginError` at the first plugin that cannot be loaded."""
    skip = disabled_names(disable)
    manager = VitoptPluginManager()
    for candidate in _candidates():
        if candidate.source.name in skip:
            continue
        manager.add(_load(candidate), candidate.source, candidate.dist)
    return manager


def _register_techniques(
    manager: pluggy.PluginManager, impl: Any, source: PluginSource
) -> list[RegisteredTechnique]:
    label = source.describe()
    try:
        techniques = impl.function()
    except Exception as exc:
        raise PluginError(
            f"{label} failed in vitopt_register_techniques: {_one_line(exc)}"
        ) from exc
    if techniques is None:
        techniques = []
    if not isinstance(techniques, list | tuple):
        raise PluginError(
            f"{label}: vitopt_register_techniques must return a list of techniques, "
            f"not {type(techniques).__name__}"
        )
    for technique in techniques:
        _check_technique(technique, label)
    return [RegisteredTechnique(t, source) for t in techniques]


def _source(manager: pluggy.PluginManager, plugin: object) -> PluginSource:
    if isinstance(manager, VitoptPluginManager):
        return manager.source_of(plugin)
    name = manager.get_name(plugin) or repr(plugin)
    for dist_plugin, dist in manager.list_plugin_distinfo():
        if dist_plugin is plugin:
            return PluginSource(name, name, dist.project_name, dist.version)
    return PluginSource(name.removeprefix(_BUILTIN_PREFIX), name)


def collect_techniques(manager: pluggy.PluginManager) -> list[RegisteredTechnique]:
    """Every registered technique, checked: a stage it may run in, valid parameters, unique
    technique names and parameter names, conditions on parameters declared before."""
    found: list[RegisteredTechnique] = []
    # get_hookimpls() is in registration order (built-ins, then entry points); pluggy *calls*
    # hooks in the reverse order, which is why the hook is not simply called here.
    for impl in manager.hook.vitopt_register_techniques.get_hookimpls():
        found.extend(_register_techniques(manager, impl, _source(manager, impl.plugin)))
    problems = _cross_check(found)
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
            f"{label}: technique {name!r} failed in search_space: {_one_line(exc)}"
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


def _claimed_twice(kind: str, name: str, first: PluginSource, second: PluginSource) -> str:
    """The one-line error for a name two plugins register (a technique, a task, a source)."""
    return f"{kind} name {name!r} is claimed by both {first.describe()} and {second.describe()}"


def _cross_check(found: Sequence[RegisteredTechnique]) -> list[tuple[PluginSource, str]]:
    """What only shows across plugins: a technique or parameter name claimed twice (blamed on
    the later claimant), a ``when`` on a parameter not declared before."""
    problems: list[tuple[PluginSource, str]] = []
    names: dict[str, RegisteredTechnique] = {}
    params: dict[str, RegisteredTechnique] = {}
    for entry in found:
        name = entry.technique.name
        if name in names:
            problems.append(
                (entry.source, _claimed_twice("technique", name, names[name].source, entry.source))
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


@dataclass
class PluginStatus:
    """One installed plugin, as ``vitopt plugins`` shows it."""

    source: PluginSource
    disabled: bool
    techniques: list[Technique] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    hooks: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class Survey:
    plugins: list[PluginStatus]
    unknown_disabled: list[str]

    @property
    def errors(self) -> list[str]:
        """What stops a campaign: errors of enabled plugins."""
        return [p.error for p in self.plugins if p.error and not p.disabled]


def _registered_names(
    manager: pluggy.PluginManager, plugin: object, source: PluginSource, what: str
) -> list[str]:
    names: list[str] = []
    for impl in getattr(manager.hook, f"vitopt_register_{what}").get_hookimpls():
        if impl.plugin is not plugin:
            continue
        try:
            registered = impl.function()
        except Exception as exc:
            raise PluginError(
                f"{source.describe()} failed in vitopt_register_{what}: {_one_line(exc)}"
            ) from exc
        if not isinstance(registered, Mapping):
            raise PluginError(
                f"{source.describe()}: vitopt_register_{what} must return a mapping of names, "
                f"not {type(registered).__name__}"
            )
        names.extend(str(name) for name in registered)
    return names


# Each registering hook: what it registers, as clash errors name it, and the PluginStatus
# attribute listing a plugin's names.
_REGISTRIES = {
    "vitopt_register_tasks": ("task", "tasks"),
    "vitopt_register_datasets": ("data source", "datasets"),
}


def survey(disable: Iterable[str] = ()) -> Survey:
    """Every installed plugin (disabled ones too), with its techniques or its error; never
    raises for a broken plugin. Name and parameter clashes are checked among enabled plugins,
    as a campaign would."""
    skip = disabled_names(disable)
    manager = VitoptPluginManager()
    statuses: list[PluginStatus] = []
    registered: list[RegisteredTechnique] = []
    for candidate in _candidates():
        status = PluginStatus(candidate.source, disabled=candidate.source.name in skip)
        statuses.append(status)
        try:
            plugin = _load(candidate)
            manager.add(plugin, candidate.source, candidate.dist)
            status.hooks = sorted(caller.name for caller in manager.get_hookcallers(plugin) or ())
            for impl in manager.hook.vitopt_register_techniques.get_hookimpls():
                if impl.plugin is plugin:
                    entries = _register_techniques(manager, impl, candidate.source)
                    status.techniques = [entry.technique for entry in entries]
                    if not status.disabled:
                        registered.extend(entries)
            status.tasks = _registered_names(manager, plugin, candidate.source, "tasks")
            status.datasets = _registered_names(manager, plugin, candidate.source, "datasets")
        except PluginError as exc:
            status.error = str(exc)
    by_source = {status.source: status for status in statuses}
    for source, problem in _cross_check(registered):
        status = by_source[source]
        status.error = status.error or problem
    for kind, names_of in _REGISTRIES.values():
        claimed: dict[str, PluginSource] = {}
        for status in statuses:
            if status.disabled or status.error:
                continue
            for name in getattr(status, names_of):
                if name in claimed:
                    status.error = _claimed_twice(kind, name, claimed[name], status.source)
                claimed.setdefault(name, status.source)
    known = {status.source.name for status in statuses}
    return Survey(statuses, sorted(skip - known))


def registered(manager: pluggy.PluginManager, hook: str, name: str, key: str) -> Any:
    """The entry ``name`` that the enabled plugins register through ``hook``
    (``vitopt_register_tasks`` or ``vitopt_register_datasets``: each answers a dict of name ->
    entry). Two plugins registering one name is a PluginError naming both (as for techniques:
    neither silently wins); a name none registered is the campaign file's mistake, a
    CampaignError naming its ``key`` and the names there are."""
    from optimizer.config import CampaignError

    known: dict[str, tuple[Any, PluginSource]] = {}
    for impl in getattr(manager.hook, hook).get_hookimpls():  # in registration order
        source = _source(manager, impl.plugin)
        for entry_name, entry in (impl.function() or {}).items():
            if entry_name in known:
                kind = _REGISTRIES[hook][0]
                raise PluginError(_claimed_twice(kind, entry_name, known[entry_name][1], source))
            known[entry_name] = (entry, source)
    if name not in known:
        raise CampaignError(
            f"{key}: {name!r} is not registered by any enabled plugin "
            f"(registered: {', '.join(sorted(known)) or 'none'}; see vitopt plugins)"
        )
    return known[name][0]
