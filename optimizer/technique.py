"""What a compression technique is, to the search: the public plugin contract.

A technique is an object with a ``name``, the ``stage`` of the trial pipeline it runs in, the
search parameters it declares and an ``apply``. The pipeline calls the stages in a fixed order:
prune (torch model → torch model), train (torch model → torch model), quantize (ONNX artifact →
ONNX artifact). Stages receive a :class:`StageContext` with everything a technique may need, so
a technique never reaches back into the campaign, the study or the executor.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

Stage = Literal["prune", "train", "quantize"]
STAGES: tuple[Stage, ...] = ("prune", "train", "quantize")
Precision = Literal["fp32", "fp16", "int8"]


@dataclass(frozen=True)
class ParamSpec:
    """One search parameter. ``name`` is fully qualified, e.g. ``prune.ratio``.

    ``default`` must be the value that leaves the model as it is (no pruning, no fine-tuning,
    fp32): the campaign's baseline trial is every technique at its defaults.

    ``when`` makes the parameter conditional: it is sampled only when every named earlier
    parameter has one of the listed values (``{"prune.method": ["heads", "mlp"]}``); otherwise
    the technique sees ``default``.
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
        if "." not in self.name:
            raise ValueError(f"parameter {self.name!r} must be qualified, like 'prune.ratio'")
        if self.kind in ("float", "int"):
            if self.low is None or self.high is None or self.low > self.high:
                raise ValueError(f"parameter {self.name}: needs low <= high")
            if self.log and self.low <= 0:
                raise ValueError(f"parameter {self.name}: a log range needs low > 0")
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
            raise ValueError(f"parameter {self.name}: unknown kind {self.kind!r}")


@dataclass
class OnnxArtifact:
    """The deployable model at the end of the pipeline: an ONNX file and the builder precision
    the device agent is asked to run it at (``int8`` for a QDQ graph)."""

    path: Path
    precision: Precision = "fp32"


class TrialPruned(Exception):
    """Raised by :meth:`StageContext.report` when the search decides to stop this trial."""


@dataclass
class StageContext:
    """Everything a stage may use. Built by the trial pipeline; read-only for techniques."""

    input_shape: tuple[int, ...]
    num_classes: int
    train_loader: Iterable[Any]
    val_loader: Iterable[Any]
    task: Any
    teacher: Any | None
    device_info: Mapping[str, Any]
    work_dir: Path
    seed: int
    report: Callable[[int, float], None] = lambda step, value: None
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("vitopt.stage"))
    calibration_size: int = 128


@runtime_checkable
class Technique(Protocol):
    """A compression technique. Return instances from ``vitopt_register_techniques``."""

    name: str
    stage: Stage

    def search_space(self) -> Sequence[ParamSpec]:
        """The parameters this technique searches over, with their defaults."""
        ...

    def apply(self, subject: Any, params: Mapping[str, Any], ctx: StageContext) -> Any:
        """prune/train: take and return a torch model; quantize: take and return an
        :class:`OnnxArtifact`. ``params`` holds every sampled parameter of the trial, by
        qualified name. Raise to fail the trial (the campaign goes on)."""
        ...
