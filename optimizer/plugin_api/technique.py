"""What a compression technique is, to the search: the public plugin contract.

A technique is an object with a ``name``, the ``stage`` of the trial pipeline it runs in, the
search parameters it declares and an ``apply``. The pipeline calls the stages in a fixed order:

1. **prune** (``torch.nn.Module`` → ``torch.nn.Module``): change the architecture. The result is
   exported to ONNX and measured on the device *before* any fine-tuning (latency first).
2. **train** (``torch.nn.Module`` → ``torch.nn.Module``): recover accuracy (fine-tuning,
   distillation). Skipped in effect when it returns the weights unchanged.
3. **quantize** (:class:`OnnxArtifact` → :class:`OnnxArtifact`): rewrite the exported ONNX graph
   or choose the builder precision the device agent runs it at.

Within a stage, techniques run in plugin registration order: the built-ins first, then installed
plugins. Stages receive a :class:`StageContext` with everything a technique may need, so a
technique never reaches back into the campaign, the study or the executor.

Stability: :class:`ParamSpec` and :class:`StageContext` gain fields, always with defaults, and
never lose one; :class:`Technique` gains no required member.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = [
    "PARAM_KINDS",
    "STAGES",
    "CalibrationMethod",
    "OnnxArtifact",
    "ParamSpec",
    "Precision",
    "Stage",
    "StageContext",
    "Technique",
    "TrialPruned",
]

Stage = Literal["prune", "train", "quantize"]
STAGES: tuple[Stage, ...] = ("prune", "train", "quantize")
Precision = Literal["fp32", "fp16", "int8"]
# How a post-training quantizer estimates activation ranges from its calibration samples
# (``data.calibration_method``): ``auto`` is each quantizer's own default, ``minmax`` the
# extremes seen, ``percentile`` a high percentile that ignores rare outliers.
CalibrationMethod = Literal["auto", "minmax", "percentile"]
PARAM_KINDS = ("float", "int", "categorical", "bool")


@dataclass(frozen=True)
class ParamSpec:
    """One search parameter a technique declares.

    ``name``
        Fully qualified, ``<prefix>.<parameter>`` (``prune.ratio``, ``lowrank.rank_ratio``),
        unique across every installed plugin: a name two plugins declare stops the campaign
        before it starts. Campaign files narrow or fix it under ``search.space.<name>``.
    ``kind``
        ``float`` or ``int`` (sampled in ``[low, high]``, optionally ``log`` scaled or on a
        ``step`` grid), ``categorical`` (one of ``choices``, JSON-serialisable values) or
        ``bool``.
    ``default``
        The value that leaves the model **as it is** (no pruning, no fine-tuning, fp32): the
        campaign's baseline trial (trial 0) runs every technique at its defaults, and so does a
        campaign where the parameter is inactive. A technique whose default changes the model
        makes every speedup relative to the wrong baseline.
    ``when``
        Makes the parameter conditional: it is sampled only when every named parameter has one
        of the listed values (``{"prune.method": ["heads", "mlp"]}``); otherwise the technique
        sees ``default``. The named parameters must be declared *before* this one (by this
        technique or by a plugin registered earlier): parameters are sampled in order.
    ``help``
        One line for ``vitopt plugins`` and the docs.
    """

    name: str
    kind: Literal["float", "int", "categorical", "bool"]
    default: Any
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] | None = None
    when: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    help: str = ""

    def validate(self) -> None:
        """Raise ValueError when the declaration cannot be sampled."""
        if not isinstance(self.name, str) or "." not in self.name.strip(".") or " " in self.name:
            raise ValueError(f"parameter {self.name!r} must be qualified, like 'prune.ratio'")
        if self.kind in ("float", "int"):
            if self.low is None or self.high is None or self.low > self.high:
                raise ValueError(f"parameter {self.name}: needs low <= high")
            if self.log and self.low <= 0:
                raise ValueError(f"parameter {self.name}: a log range needs low > 0")
            if isinstance(self.default, bool) or not isinstance(self.default, numbers.Real):
                raise ValueError(f"parameter {self.name}: default {self.default!r} is not a number")
            if not self.low <= self.default <= self.high:
                raise ValueError(f"parameter {self.name}: default {self.default} outside range")
        elif self.kind == "categorical":
            if not self.choices:
                raise ValueError(f"parameter {self.name}: a categorical needs choices")
            if self.default not in self.choices:
                raise ValueError(f"parameter {self.name}: default {self.default!r} not a choice")
        elif self.kind == "bool":
            if not isinstance(self.default, bool):
                raise ValueError(f"parameter {self.name}: a bool default must be true or false")
        else:
            raise ValueError(
                f"parameter {self.name}: unknown kind {self.kind!r} "
                f"(expected one of {', '.join(PARAM_KINDS)})"
            )
        if not isinstance(self.when, Mapping):
            raise ValueError(f"parameter {self.name}: when must map parameter names to values")
        for dependency, allowed in self.when.items():
            if isinstance(allowed, str) or not isinstance(allowed, Sequence):
                raise ValueError(
                    f"parameter {self.name}: when[{dependency!r}] must be a list of values"
                )


@dataclass
class OnnxArtifact:
    """The deployable model at the end of the pipeline: an ONNX file and the builder precision
    the device agent is asked to run it at (``int8`` for a QDQ graph).

    A quantize technique that rewrites the graph writes a new file under
    :attr:`StageContext.work_dir` and returns a new artifact; one that only picks a builder
    precision returns ``OnnxArtifact(subject.path, "fp16")``."""

    path: Path
    precision: Precision = "fp32"


class TrialPruned(Exception):
    """Raised by :meth:`StageContext.report` when the search decides to stop this trial.

    Let it propagate out of ``apply`` (do not catch it): the trial is then recorded as PRUNED,
    not failed."""


def _no_teacher() -> None:
    return None


def _no_report(step: int, value: float) -> None:
    """Outside a campaign (tests, ``vitopt export``) nobody listens."""


@dataclass
class StageContext:
    """Everything a stage may use. Built by the trial pipeline for each trial, in the process
    that runs it (a Ray worker, or the driver with ``execution.workers: 0``); read-only for
    techniques.

    ``input_shape``
        The model's input with its batch dimension, ``(1, C, H, W)``: the exported graph has a
        static batch of 1 (:func:`optimizer.plugin_api.model_stats.example_input` makes a tensor
        of it).
    ``num_classes``
        Outputs of the classification head.
    ``train_loader`` / ``val_loader``
        Iterables of ``(inputs, labels)`` batches of the campaign's data (training split,
        shuffled with the trial's seed; validation split). Use the validation split for
        :attr:`report`, never the held-out test split, which scores the final ONNX file.
    ``task``
        The campaign's :class:`~optimizer.plugin_api.Task` (``classification``):
        ``task.loss(outputs, labels)`` is the training loss, ``task.torch_metric(model,
        loader)`` the validation metric, ``task.evaluate_onnx(path, dataset)`` the score of an
        ONNX file.
    ``teacher``
        The teacher model: the unpruned baseline unless the campaign names another
        (``teacher.name``). Loaded when first read (a technique that does not distil never pays
        for it), then shared; ``None`` where there is none (a context built for a test). Do
        not modify it.
    ``device_info``
        The device agent's ``GET /v1/info`` for the target device, decided before the search:
        ``device`` and ``device_type``, ``backend`` (``{"name": "tensorrt", "version":
        "8.2.1"}``), ``precisions`` it can run, versions, power mode, clocks. Use it to adapt a
        technique to the hardware (alignment, supported ops, int8 support).
    ``work_dir``
        This trial's own folder (``runs/NAME/trials/NNNNN/``): write files there. It is not
        shared with other trials; on a Ray cluster it is on the worker's node.
    ``seed``
        The trial's seed (campaign seed + trial number); seed any randomness with it so that
        ``vitopt export`` rebuilds the same candidate.
    ``report``
        ``report(step, value)`` records an intermediate validation accuracy with the study
        (``step`` = epoch; the dashboard's learning curve). It raises :class:`TrialPruned`
        when the study's pruner stops the trial (the campaign's study has none; the contract
        stands for one): let that propagate.
    ``log``
        A logger for progress lines (``ctx.log.info(...)``).
    ``calibration_size``
        How many training samples a post-training quantizer calibrates on
        (``data.calibration_size``).
    ``calibration_method``
        How it estimates activation ranges from them (``data.calibration_method``:
        :data:`CalibrationMethod`).
    ``trial_number``
        The Optuna trial number (0 is the baseline; ``vitopt export`` passes the exported
        trial's number).
    ``model_name`` / ``model_family``
        The campaign's ``model.name`` and the :class:`~optimizer.plugin_api.ModelFamily` that
        covers it (``None`` where none does): what a structural pruner may remove, and how.
    ``macs_kept``
        The fraction of the baseline's MACs the model keeps after the prune stage, set by the
        pipeline before the train stage (1.0: the prune stage removed nothing): how much a
        fine-tuner has to recover.
    """

    input_shape: tuple[int, ...]
    num_classes: int
    train_loader: Iterable[Any]
    val_loader: Iterable[Any]
    task: Any
    device_info: Mapping[str, Any]
    work_dir: Path
    seed: int
    report: Callable[[int, float], None] = _no_report
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("vitopt.stage"))
    calibration_size: int = 128
    calibration_method: CalibrationMethod = "auto"
    trial_number: int = 0
    #: What :attr:`teacher` reads: a cached loader (the pipeline's), or ``lambda: model``.
    load_teacher: Callable[[], Any] = _no_teacher
    model_name: str = ""
    model_family: Any | None = None
    macs_kept: float = 1.0

    @property
    def teacher(self) -> Any | None:
        return self.load_teacher()


@runtime_checkable
class Technique(Protocol):
    """A compression technique. Return instances from ``vitopt_register_techniques``.

    ``name``
        Unique across installed plugins (``torch_pruning``, ``kd``, ``int8``,
        ``lowrank``): it names the technique in ``vitopt plugins`` and in failure reasons.
    ``stage``
        ``prune``, ``train`` or ``quantize`` (see the module's docstring for what each takes and
        returns).

    Optional (looked up with ``getattr``, so not part of this protocol):
    ``device_choices(device_info) -> {parameter: [choices]}``, called once in the driver with
    the target agent's ``GET /v1/info``: the choices of this technique's categorical parameters
    that the device offers (the built-in quantizer: the precisions it runs, the int8 recipes
    its runtime accelerates). The search space keeps only those.
    ``model_choices(model, ctx) -> {parameter: [choices]}``, called once in the driver on the
    campaign's model (untrained) and ``ctx`` as a trial gets it: the choices that this model
    can take (the built-in pruner: the methods its family finds something to remove for). The
    search space keeps only those, with a note, so that no trial is spent on one that fails.
    ``preflight(model, values, ctx)``, called once in the driver before the baseline is
    trained, on the campaign's model (untrained: check its architecture, not its weights),
    with ``values`` ``{parameter: possible values}`` for this technique's parameters in this
    campaign (a fixed value alone; a number's ``(low, high)``; a bool's or a categorical's
    choices) and ``ctx`` as a trial gets it (``ctx.teacher``: the teacher the campaign names,
    else this model). Raise ``ValueError`` to refuse a campaign all of whose trials would
    fail: the campaign stops before any trial with one line naming the technique and the
    message (the built-in ``kd``: feature KD from a teacher whose blocks do not pair).
    ``needs_model_family = True``: the technique works by the rules of the model's
    :class:`~optimizer.plugin_api.ModelFamily` (the built-in pruner), so a campaign whose
    ``model.name`` no family covers is refused before any trial.
    """

    name: str
    stage: Stage

    def search_space(self) -> Sequence[ParamSpec]:
        """The parameters this technique searches over, with their "do nothing" defaults.

        Called in the driver (to build the search space, and by ``vitopt plugins``) and in every
        trial's process; it must be cheap and return the same declarations each time."""
        ...

    def apply(self, subject: Any, params: Mapping[str, Any], ctx: StageContext) -> Any:
        """Run the technique on one candidate, in the trial's process (a Ray worker, or the
        driver with ``execution.workers: 0``).

        ``subject``: prune/train get a ``torch.nn.Module`` and must return one (the same object
        modified in place, or a new one); quantize gets an :class:`OnnxArtifact` and must return
        one. ``params`` holds every parameter of the trial by qualified name, fixed and inactive
        ones included (at their defaults), so at the defaults ``apply`` must return the subject
        unchanged. Heavy imports belong here, not at module level.

        Raising fails this trial only: it is recorded as FAIL with a ``fail_reason`` naming the
        technique and its plugin, plus the traceback, and the campaign goes on. So does
        returning the wrong type."""
        ...
