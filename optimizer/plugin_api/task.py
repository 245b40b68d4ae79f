"""What a task is, to the campaign: the contract of ``vitopt_register_tasks``.

A task says what the model learns and how it is scored: its training loss, its metric on a torch
model (fine-tuning feedback), its metric on the deployable ONNX file (the campaign's accuracy,
higher is better), and optionally its own architecture. The campaign's ``task.name`` picks one;
``data.source`` picks the data (:mod:`optimizer.plugin_api.data_source`) it is trained and scored
on. The built-ins are ``classification`` (top-1) and ``segmentation`` (mIoU).

Subclass :class:`TaskBase`: it gives the optional members their defaults, so a task writes only
:meth:`~Task.loss` and either :meth:`TaskBase.score_rows` (its score from the model's output and
the label of each example: then it is scored alike on the host's onnxruntime and on the outputs
the device's engine returns, ``objective.evaluate_on: device``) or :meth:`~Task.evaluate_onnx`
(the host only). A registered object that lacks a member of :class:`Task` stops the campaign
before any trial, naming the plugin and the member.

Stability: :class:`Task` gains no required member; :class:`TaskBase` gives every new one a
default.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping, Sequence
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

    def build_model(
        self, config: Any, num_classes: int, image_size: int, family: Any = None
    ) -> nn.Module:
        """The untrained model for the campaign's ``model`` section (or the teacher's), with
        ``num_classes`` outputs for ``image_size`` square inputs. ``family`` is the
        :class:`~optimizer.plugin_api.ModelFamily` that covers ``config.name`` (``None`` where
        none does; the segmentation task takes its decoder's features from it). A task whose
        ``build_model`` has no ``family`` parameter is called without it."""
        ...

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training loss of a batch (the baseline's training and fine-tuning use it)."""
        ...

    def torch_metric(
        self, model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]]
    ) -> float:
        """The metric of a torch model on ``loader`` (the validation split): the baseline's and
        fine-tuning's feedback, and the learning curve the study records."""
        ...

    def evaluate_onnx(self, path: Path, dataset: Any, threads: int = 1) -> float:
        """The score of the ONNX file at ``path`` on ``dataset`` (the held-out test split), run
        by onnxruntime on the host: the campaign's accuracy unless it evaluates on the device.
        The graph has a static batch of 1."""
        ...

    def evaluate_onnx_metrics(
        self, path: Path, dataset: Any, threads: int = 1
    ) -> Mapping[str, Any]:
        """The score under ``"score"`` plus any figures recorded beside it in the trial's
        attributes (segmentation: per-class IoU, pixel accuracy)."""
        ...

    def evaluate_outputs(self, outputs: Sequence[Any], dataset: Any) -> Mapping[str, Any]:
        """What :meth:`evaluate_onnx_metrics` gives, from the model's ``outputs`` on
        ``dataset`` as the device returned them (numpy arrays, one row per example, in the
        dataset's order): how a campaign with ``objective.evaluate_on: device`` scores the
        engine that ships. ``NotImplementedError`` for a task that scores ONNX files only."""
        ...


class TaskBase:
    """Defaults for :class:`Task`'s optional members: a timm model named by ``model.name``, and
    every metric (on torch models, ONNX files and the device's outputs) from :meth:`score_rows`
    (top-1 on torch models for a task without it). A subclass writes :meth:`loss` and
    :meth:`score_rows`, or :meth:`evaluate_onnx` to be scored on the host only."""

    metric_name: str = DEFAULT_METRIC

    def check_model(self, config: Any) -> None:
        import timm

        if not timm.is_model(config.name):
            close = difflib.get_close_matches(config.name, timm.list_models(), n=3)
            raise ValueError(
                f"timm has no model {config.name!r}"
                + (f" (close: {', '.join(close)})" if close else " (timm.list_models() lists them)")
            )

    def build_model(
        self, config: Any, num_classes: int, image_size: int, family: Any = None
    ) -> nn.Module:
        return create_timm_model(
            config.name,
            config.pretrained,
            image_size,
            **{"num_classes": num_classes, **config.kwargs},
        )

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define loss(outputs, labels)")

    def torch_metric(
        self, model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]]
    ) -> float:
        if scores_outputs(self):  # the same score as the deployable file's, on the torch model
            return float(self.score_rows(torch_rows(model, loader))[SCORE])
        from .training import torch_accuracy

        return torch_accuracy(model, loader)

    def score_rows(self, rows: Iterable[tuple[Any, Any]]) -> Mapping[str, Any]:
        """The score (under ``"score"``) and any figures beside it, from ``(output, label)``
        pairs: each example's row of the model's first output (a numpy array) and its label.
        Write this, and the task is scored on the host and on the device alike."""
        raise NotImplementedError(
            f"{type(self).__name__} must define score_rows(rows) or evaluate_onnx(path, dataset)"
        )

    def evaluate_onnx(self, path: Path, dataset: Any, threads: int = 1) -> float:
        if not scores_outputs(self):
            raise NotImplementedError(
                f"{type(self).__name__} must define score_rows(rows) or evaluate_onnx(path, "
                "dataset, threads)"
            )
        return float(self.score_rows(onnx_rows(path, dataset, threads))[SCORE])

    def evaluate_onnx_metrics(
        self, path: Path, dataset: Any, threads: int = 1
    ) -> Mapping[str, Any]:
        if scores_outputs(self):
            return self.score_rows(onnx_rows(path, dataset, threads))
        return {SCORE: self.evaluate_onnx(path, dataset, threads)}

    def evaluate_outputs(self, outputs: Sequence[Any], dataset: Any) -> Mapping[str, Any]:
        if not scores_outputs(self):
            raise NotImplementedError(
                f"{type(self).__name__} scores ONNX files only (it has no score_rows): it cannot "
                "score the device's outputs; set objective.evaluate_on: host"
            )
        labels = (dataset[index][1] for index in range(len(dataset)))
        return self.score_rows(zip(outputs[0], labels, strict=True))


def create_timm_model(name: str, pretrained: bool, image_size: int, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, ...)`` for ``image_size`` inputs (``img_size`` unless
    ``kwargs`` set it; a model without that argument, a CNN, takes any size)."""
    import timm

    kwargs.setdefault("img_size", image_size)
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError:
        kwargs.pop("img_size")
        return timm.create_model(name, pretrained=pretrained, **kwargs)


def build_task_model(
    task: Task, config: Any, num_classes: int, image_size: int, family: Any
) -> nn.Module:
    """``task.build_model`` of ``config``, given ``family`` when it takes one."""
    import inspect

    takes_family = "family" in inspect.signature(task.build_model).parameters
    extra = {"family": family} if takes_family else {}
    return task.build_model(config, num_classes, image_size, **extra)


def scores_outputs(task: object) -> bool:
    """Whether ``task`` scores model outputs (:meth:`TaskBase.score_rows`), hence the outputs
    the device returns, not only ONNX files it runs on the host itself."""
    own = getattr(type(task), "score_rows", None)
    return own is not None and own is not TaskBase.score_rows


def torch_rows(model: nn.Module, loader: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
    """``(output, label)`` for each example of ``loader``'s batches, the output being its row of
    the torch ``model``'s output (numpy, computed without gradients in eval mode)."""
    import torch

    model.eval()
    for inputs, labels in loader:
        with torch.no_grad():
            outputs = model(inputs).cpu().numpy()
        yield from zip(outputs, labels.numpy(), strict=True)


def onnx_rows(path: Path, dataset: Any, threads: int = 1) -> Iterator[tuple[Any, Any]]:
    """``(output, label)`` for each example of ``dataset``, the output being its row of the
    first output of the ONNX model at ``path``, run by onnxruntime on the host's CPU one example
    at a time (the exported graph has a static batch of 1, as deployed)."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for index in range(len(dataset)):
        example, label = dataset[index]
        feed = np.asarray(example, dtype=np.float32)[None]
        yield session.run(None, {name: feed})[0][0], label


def missing_members(obj: object, protocol: type = Task) -> list[str]:
    """The members of ``protocol`` (:class:`Task`, or another of the API's protocols) that
    ``obj`` lacks (empty for a conforming one)."""
    members = (
        *protocol.__annotations__,
        *(n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")),
    )
    return [name for name in members if not hasattr(obj, name)]
