"""The search space: what installed techniques declare, narrowed by the campaign file and by what
the target device offers (each technique's optional ``device_choices``).

Parameters are sampled define-by-run on an Optuna trial, in declaration order, so conditional
parameters (``when``) see the values they depend on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import optuna

from optimizer.config import CampaignError, ParamOverride
from optimizer.plugin_api.technique import ParamSpec, Technique


@dataclass(frozen=True)
class SearchSpace:
    params: tuple[ParamSpec, ...]
    fixed: Mapping[str, Any]
    baseline: Mapping[str, Any]  # every technique at its declared default: "do nothing"
    notes: tuple[str, ...] = ()

    def sample(self, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
        values: dict[str, Any] = dict(self.fixed)
        for spec in self.params:
            if spec.name in self.fixed:
                continue
            active = all(values.get(dep) in allowed for dep, allowed in spec.when.items())
            values[spec.name] = _suggest(trial, spec) if active else spec.default
        return values

    def possible(self, name: str) -> tuple[Any, ...]:
        """The values a trial can give parameter ``name``: the fixed one, a number's range
        ``(low, high)`` or a bool's or a categorical's choices (a conditional parameter's
        default, which an inactive trial runs, lies among them)."""
        if name in self.fixed:
            return (self.fixed[name],)
        spec = next(spec for spec in self.params if spec.name == name)
        if spec.kind in ("float", "int"):
            return (spec.low, spec.high)
        return (False, True) if spec.kind == "bool" else tuple(spec.choices or ())


def _suggest(trial: optuna.trial.BaseTrial, spec: ParamSpec) -> Any:
    if spec.kind == "float":
        return trial.suggest_float(spec.name, spec.low, spec.high, log=spec.log, step=spec.step)
    if spec.kind == "int":
        step = int(spec.step or 1)
        return trial.suggest_int(spec.name, int(spec.low), int(spec.high), log=spec.log, step=step)
    if spec.kind == "bool":
        return trial.suggest_categorical(spec.name, [False, True])
    return trial.suggest_categorical(spec.name, list(spec.choices or ()))


def _override(spec: ParamSpec, override: ParamOverride, where: str) -> ParamSpec:
    changes: dict[str, Any] = {}
    if override.choices is not None:
        if spec.kind != "categorical":
            raise CampaignError(f"{where}: choices given, but {spec.name} is a {spec.kind}")
        unknown = [c for c in override.choices if c not in (spec.choices or ())]
        if unknown:
            raise CampaignError(
                f"{where}: {unknown} not among the choices {list(spec.choices or ())}"
            )
        changes["choices"] = tuple(override.choices)
        if spec.default not in override.choices:
            changes["default"] = override.choices[0]
    for key in ("low", "high", "log"):
        value = getattr(override, key)
        if value is not None:
            if spec.kind not in ("float", "int"):
                raise CampaignError(f"{where}: {key} given, but {spec.name} is a {spec.kind}")
            changes[key] = value
    if "low" in changes or "high" in changes:
        low, high = changes.get("low", spec.low), changes.get("high", spec.high)
        changes["default"] = min(max(spec.default, low), high)
    narrowed = replace(spec, **changes)
    try:
        narrowed.validate()
    except ValueError as exc:
        raise CampaignError(f"{where}: {exc}") from exc
    return narrowed


def offered_choices(
    techniques: Iterable[Technique], device_info: Mapping[str, Any]
) -> dict[str, tuple[Any, ...]]:
    """``{parameter: choices}`` the target device offers, from each technique's optional
    ``device_choices(device_info)`` (precisions it runs, recipes its runtime accelerates)."""
    offered: dict[str, tuple[Any, ...]] = {}
    for technique in techniques:
        method = getattr(technique, "device_choices", None)
        if method is None:
            continue
        try:
            choices = method(device_info)
        except Exception as exc:
            why = f"technique {technique.name}: device_choices failed: {exc}"
            raise CampaignError(why) from exc
        offered.update({name: tuple(values) for name, values in choices.items()})
    return offered


def build_search_space(
    declared: Sequence[ParamSpec],
    overrides: Mapping[str, ParamOverride],
    offered: Mapping[str, Sequence[Any]] | None = None,
    source: str = "campaign",
    allowed: Mapping[str, Sequence[Any]] | None = None,
) -> SearchSpace:
    """Apply the campaign's overrides, then drop the choices the device does not offer
    (``offered``: :func:`offered_choices`) and those the model cannot take (``allowed``:
    each technique's optional ``model_choices``)."""
    by_name = {spec.name: spec for spec in declared}
    unknown = sorted(set(overrides) - set(by_name))
    if unknown:
        raise CampaignError(
            f"{source}: search.space.{unknown[0]}: no installed technique declares this "
            f"parameter; known: {', '.join(sorted(by_name))}"
        )
    fixed: dict[str, Any] = {}
    params: list[ParamSpec] = []
    notes: list[str] = []
    for spec in declared:
        override = overrides.get(spec.name)
        where = f"{source}: search.space.{spec.name}"
        if override is not None and override.fixed is not None:
            fixed[spec.name] = override.fixed
        if override is not None:
            spec = _override(spec, override, where)
        if offered and spec.name in offered:
            spec = _fit(spec, fixed, offered[spec.name], notes, where, _DEVICE)
        if allowed and spec.name in allowed:
            spec = _fit(spec, fixed, allowed[spec.name], notes, where, _MODEL)
        params.append(spec)
    baseline = {spec.name: spec.default for spec in declared}
    return SearchSpace(tuple(params), fixed, baseline, tuple(notes))


@dataclass(frozen=True)
class _Limit:
    """Who limits a parameter's choices, as the messages say it."""

    cannot: str  # "which {cannot} (...)"
    none: str  # "none of the choices {none} (...)"
    takes: str  # "({takes} ...)"


_DEVICE = _Limit("the device cannot run", "can run on the device", "the device runs")
_MODEL = _Limit("the model cannot take", "suits the model", "the model takes")


def _fit(
    spec: ParamSpec,
    fixed: Mapping[str, Any],
    possible: Sequence[Any],
    notes: list[str],
    where: str,
    limit: _Limit,
) -> ParamSpec:
    runs = ", ".join(map(str, possible)) or "none of them"
    takes = f"{limit.takes} {runs}"
    if spec.name in fixed and fixed[spec.name] not in possible:
        raise CampaignError(f"{where}: fixed to {fixed[spec.name]}, which {limit.cannot} ({takes})")
    kept = tuple(c for c in spec.choices or () if c in possible)
    dropped = [str(c) for c in spec.choices or () if c not in possible]
    if not kept:
        raise CampaignError(f"{where}: none of the choices {limit.none} ({takes})")
    if dropped:
        notes.append(f"{spec.name}: removed {', '.join(dropped)} ({takes})")
    default = spec.default if spec.default in kept else kept[0]
    return replace(spec, choices=kept, default=default)
