"""Build the pluggy manager: built-in plugins and installed ``vitopt.plugins`` entry points.

Built-ins register through the same hooks as third-party plugins. Entry points are loaded here,
one by one with :mod:`importlib.metadata` (not pluggy's ``load_setuptools_entrypoints``, which
stops at the first failure without saying which plugin failed), so that every problem names the
plugin and the distribution it came from::

    plugin 'lowrank' from vitopt-lowrank 0.1.0 failed to import: ModuleNotFoundError: ...

A plugin that fails to load stops the campaign before it starts (:class:`PluginError`, one
line). What the loaded plugins register is checked in :mod:`.checks` and held, once per process,
by :mod:`.registry`; :mod:`.survey` is the forgiving variant behind ``vitopt plugins``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pluggy

from optimizer.plugin_api import hookspecs

BUILTIN_PLUGINS = (
    "plugins.classification",
    "plugins.segmentation",
    "plugins.pruning",
    "plugins.families",
    "plugins.distillation",
    "plugins.quantization",
)
DISABLE_ENV = "VITOPT_DISABLE_PLUGINS"
BUILTIN_PREFIX = "builtin:"


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
        return f"{BUILTIN_PREFIX}{self.name}" if self.builtin else self.name

    def describe(self) -> str:
        """``plugin 'lowrank' from vitopt-lowrank 0.1.0`` (or ``built-in plugin '...'``)."""
        if self.builtin:
            return f"built-in plugin {self.name!r}"
        return f"plugin {self.name!r} from {self.origin}"


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
            raise PluginError(f"{source.describe()} cannot be registered: {one_line(exc)}") from exc
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


def one_line(exc: BaseException) -> str:
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


def candidates() -> list[_Candidate]:
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


def load_candidate(candidate: _Candidate) -> object:
    if candidate.error is not None:
        raise PluginError(candidate.error)
    try:
        return candidate.load()
    except Exception as exc:
        raise PluginError(
            f"{candidate.source.describe()} failed to import: {one_line(exc)}"
        ) from exc


def build_plugin_manager(disable: Iterable[str] = ()) -> VitoptPluginManager:
    """Built-ins first, then entry points; ``disable`` (and $VITOPT_DISABLE_PLUGINS) names
    plugins to skip (a built-in by module, e.g. ``plugins.quantization``, or an entry-point
    name). Raises :class:`PluginError` at the first plugin that cannot be loaded."""
    skip = disabled_names(disable)
    manager = VitoptPluginManager()
    for candidate in candidates():
        if candidate.source.name in skip:
            continue
        manager.add(load_candidate(candidate), candidate.source, candidate.dist)
    return manager
