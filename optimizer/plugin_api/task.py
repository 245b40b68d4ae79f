"""What a task is, to the campaign: the contract of ``vitopt_register_tasks``.

A task says what the model learns and how it is scored: its training loss, its metric on a torch
model (fine-tuning feedback), its metric on the deployable ONNX file (the campaign's accuracy,
higher is better), and optionally its own architecture. The campaign's ``task.name`` picks one;
``data.source`` picks the data (:mod:`optimizer.plugin_api.data_source`) it is trained and scored
on. The built-ins are ``classification`` (top-1) and ``segmentation`` (mIoU).

Subclass :class:`TaskBase`: it gives the optional members their defaults, so a task writes only
:meth:`~Task.loss` and :meth:`~Task.evaluate_onnx`. A registered object that lacks a member of
:class:`Task` stops the campaign before any trial, naming the plugin and the member.

Stability: :class:`Task` gains no required member; :class:`TaskBase` gives every new one a
default.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch
    from torch import nn

#: What "accuracy" means when a task does not name its metric.
DEFAULT_METRIC = "top-1"
#: The key of the score among :meth:`Task.evaluate_onnx_metrics`' values.
SCORE = "score"


@runtime_checkable
class Task(Protocol):
    """A task. Return instances from ``vitopt_register_tasks`` as ``{name: task}``.

    ``metric_name``
        What the score is called in every view (``top-1``, ``mIoU``, ``R²``); the campaign's
        ``objective.max_accuracy_drop`` is the largest drop of it allowed, in its own units.
    """

    metric_name: str

    def check_model(self, config: Any) -> None:
        """Raise ``ValueError`` (one line) when the campaign's ``model`` section (its ``name``,
        ``kwargs``) is not a model :meth:`build_model` can build. Called in the driver before
        anything is trained; the campaign stops with the message."""
        ...

    def build_model(self, config: Any, num_classes: int, image_size: int) -> nn.Module:
        """The untrained model for the campaign's ``model`` section, with ``num_classes``
        outputs for ``image_size`` square inputs."""
        ...

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training loss of a batch (the baseline's training and fine-tuning use it)."""
        ...

    def torch_metric(
        self, model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]]
    ) -> float:
        """The metric of a torch model on ``loader`` (the validation split): the baseline's and
        fine-tuning's feedback, and what Optuna's pruner sees."""
        ...

    def evaluate_onnx(self, path: Path, dataset: Any, threads: int = 1) -> float:
        """The score of the ONNX file at ``path`` on ``dataset`` (the held-out test split), run
        by onnxruntime: the accuracy the campaign records. The graph has a static batch of 1."""
        ...

    def evaluate_onnx_metrics(
        self, path: Path, dataset: Any, threads: int = 1
    ) -> Mapping[str, Any]:
        """The score under ``"score"`` plus any figures recorded beside it in the trial's
        attributes (segmentation: per-class IoU, pixel accuracy)."""
        ...


class TaskBase:
    """Defaults for :class:`Task`'s optional members: a timm model named by ``model.name``,
    top-1 on torch models, no figures beyond the score. A subclass writes :meth:`loss` and
    :meth:`evaluate_onnx`."""

    metric_name: str = DEFAULT_METRIC

    def check_model(self, config: Any) -> None:
        import timm

        if not timm.is_model(config.name):
            close = difflib.get_close_matches(config.name, timm.list_models(), n=3)
            raise ValueError(
                f"timm has no model {config.name!r}"
                + (f" (close: {', '.join(close)})" if close else " (timm.list_models() lists them)")
            )

    def build_model(self, config: Any, num_classes: int, image_size: int) -> nn.Module:
        import timm

        kwargs: dict[str, Any] = {"num_classes": num_classes, **config.kwargs}
        kwargs.setdefault("img_size", image_size)
        try:
            return timm.create_model(config.name, pretrained=config.pretrained, **kwargs)
        except TypeError:  # a model family without img_size (CNNs) takes any input size
            kwargs.pop("img_size")
            return timm.create_model(config.name, pretrained=config.pretrained, **kwargs)

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define loss(outputs, labels)")

    def torch_metric(
        self, model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]]
    ) -> float:
        from .training import torch_accuracy

        return torch_accuracy(model, loader)

    def evaluate_onnx(self, path: Path, dataset: Any, threads: int = 1) -> float:
        raise NotImplementedError(
            f"{type(self).__name__} must define evaluate_onnx(path, dataset, threads)"
        )

    def evaluate_onnx_metrics(
        self, path: Path, dataset: Any, threads: int = 1
    ) -> Mapping[str, Any]:
        return {SCORE: self.evaluate_onnx(path, dataset, threads)}


def missing_members(task: object) -> list[str]:
    """The members of :class:`Task` that ``task`` lacks (empty for a conforming task)."""
    return [name for name in _MEMBERS if not hasattr(task, name)]


_MEMBERS = (
    *Task.__annotations__,
    *(name for name, value in vars(Task).items() if callable(value) and not name.startswith("_")),
)
