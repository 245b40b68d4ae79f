"""Running a technique on a candidate, checked: the right type back, failures named after the
technique and its plugin, and the default rule (at its declared defaults a technique leaves the
model as it is), which the campaign checks on its baseline before the first trial and
:mod:`optimizer.plugin_testing` checks on a plugin's own tests; and each technique's optional
``model_choices``, the choices the campaign's model can take, and ``preflight``, where it
refuses a campaign its trials would all fail on."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from optimizer.device.client import MeasurementFailed
from optimizer.plugin_api.model_stats import example_input
from optimizer.plugin_api.technique import OnnxArtifact, StageContext, TrialPruned
from optimizer.plugin_host.checks import RegisteredTechnique
from optimizer.trial.export import export_onnx


class TechniqueFailed(Exception):
    """A technique raised in ``apply`` or returned the wrong type: the trial fails with this
    message (it names the technique and its plugin), the campaign goes on."""


def apply_technique(
    registered: RegisteredTechnique, subject: Any, params: dict[str, Any], ctx: StageContext
) -> Any:
    """``technique.apply``, checked: what a stage returns must be what the next one takes
    (prune/train: a ``torch.nn.Module``; quantize: an :class:`OnnxArtifact`)."""
    technique = registered.technique
    expected = OnnxArtifact if technique.stage == "quantize" else torch.nn.Module
    who = describe(registered)
    try:
        result = technique.apply(subject, params, ctx)
    except (TrialPruned, MeasurementFailed):
        raise
    except Exception as exc:
        raise TechniqueFailed(f"{who} failed in apply: {type(exc).__name__}: {exc}") from exc
    if not isinstance(result, expected):
        wanted = "an OnnxArtifact" if expected is OnnxArtifact else "a torch.nn.Module"
        raise TechniqueFailed(
            f"{who} returned {type(result).__name__} from apply, expected {wanted}"
        )
    return result


def describe(registered: RegisteredTechnique) -> str:
    source = registered.source
    origin = f"built-in {source.name}" if source.builtin else source.origin
    return f"technique {registered.technique.name!r} ({origin})"


def fingerprint(model: torch.nn.Module) -> str:
    """The weights and the architecture (parameter names and shapes) of ``model``."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


class TechniqueRefuses(Exception):
    """A technique's ``preflight`` refused the campaign before its first trial: a setting its
    trials would all fail on (the message names the technique and the reason)."""


def model_choices(
    entries: Iterable[RegisteredTechnique], model: torch.nn.Module, ctx: StageContext
) -> dict[str, tuple[Any, ...]]:
    """``{parameter: choices}`` the campaign's ``model`` can take, from each technique's
    optional ``model_choices(model, ctx)`` (a bug in one is :class:`TechniqueFailed`)."""
    allowed: dict[str, tuple[Any, ...]] = {}
    for entry in entries:
        method = getattr(entry.technique, "model_choices", None)
        if method is None:
            continue
        try:
            choices = method(model, ctx)
        except Exception as exc:
            raise TechniqueFailed(
                f"{describe(entry)} failed in model_choices: {type(exc).__name__}: {exc}"
            ) from exc
        allowed.update({name: tuple(values) for name, values in choices.items()})
    return allowed


def preflight_techniques(
    entries: Iterable[RegisteredTechnique],
    model: torch.nn.Module,
    possible: Callable[[str], tuple[Any, ...]],
    ctx: StageContext,
) -> None:
    """Each technique's optional ``preflight(model, values, ctx)`` on the campaign's model,
    with ``values``: its parameters' possible values in this campaign (``possible(name)``).
    A ``ValueError`` is the technique refusing the campaign (:class:`TechniqueRefuses`); any
    other exception is a bug in it (:class:`TechniqueFailed`)."""
    for entry in entries:
        check = getattr(entry.technique, "preflight", None)
        if check is None:
            continue
        values = {spec.name: possible(spec.name) for spec in entry.technique.search_space()}
        try:
            check(model, values, ctx)
        except ValueError as exc:
            raise TechniqueRefuses(f"{describe(entry)} refuses this campaign: {exc}") from exc
        except Exception as exc:
            raise TechniqueFailed(
                f"{describe(entry)} failed in preflight: {type(exc).__name__}: {exc}"
            ) from exc


class DefaultsChangeTheModel(Exception):
    """A technique changed the baseline at its declared defaults: every speedup and accuracy
    drop of the campaign would be measured against a model that is not the user's."""


def check_leaves_unchanged(
    entries: Iterable[RegisteredTechnique],
    model: torch.nn.Module,
    params: Mapping[str, Any],
    ctx: StageContext,
    work: Path,
    model_label: str = "the baseline model",
) -> None:
    """Apply ``entries`` in pipeline order (prune, train, then quantize on ``model`` exported to
    ``work``) at ``params``, and raise :class:`DefaultsChangeTheModel` (or
    :class:`TechniqueFailed`) at the first that changes the model's weights or architecture, or
    rewrites or re-labels its ONNX file (``model_label`` names the model in the message)."""
    entries = list(entries)
    params = dict(params)
    for stage in ("prune", "train"):
        for entry in (e for e in entries if e.technique.stage == stage):
            before = fingerprint(model)
            model = apply_technique(entry, model, params, ctx)
            if fingerprint(model) != before:
                raise DefaultsChangeTheModel(_changed(entry, params, model_label))
    artifact = OnnxArtifact(
        export_onnx(
            model, example_input(ctx.input_shape), work / "defaults.onnx", family=ctx.model_family
        )
    )
    digest = hashlib.sha256(artifact.path.read_bytes()).hexdigest()
    for entry in (e for e in entries if e.technique.stage == "quantize"):
        result = apply_technique(entry, artifact, params, ctx)
        unchanged = hashlib.sha256(result.path.read_bytes()).hexdigest() == digest
        if result.precision != artifact.precision or not unchanged:
            raise DefaultsChangeTheModel(
                _changed(entry, params, f"the ONNX graph of {model_label}")
            )
        artifact = result


def _changed(entry: RegisteredTechnique, params: Mapping[str, Any], what: str) -> str:
    own = [spec.name for spec in entry.technique.search_space()]
    values = ", ".join(f"{name}={params.get(name)!r}" for name in own) or "no parameters"
    return (
        f"{describe(entry)} changes {what} at its defaults ({values}): a parameter's default must "
        "mean 'leave the model as it is', since the baseline runs every technique at its "
        "defaults (docs/plugins.md, ParamSpec rules)"
    )
