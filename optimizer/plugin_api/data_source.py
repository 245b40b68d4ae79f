"""What a data source is, to the campaign: the contract of ``vitopt_register_datasets``.

A data source turns the campaign's ``data`` section (``path``, ``image_size``, ``seed``,
``val_fraction``, ``test_fraction``, …) into :class:`Splits`: the training split (baseline and
fine-tuning), the validation split (their feedback and learning curves) and the held-out test
split (the accuracy of the deployable ONNX file, never seen in training). The campaign's
``data.source`` picks one. The built-ins are ``digits`` and ``imagefolder`` (classification),
``uav_synthetic`` and ``uav_folder`` (segmentation).

Subclass :class:`DataSourceBase` and write :meth:`~DataSource.load`; :meth:`~DataSource.check`
rejects settings the source cannot use before anything runs. A plain function ``data -> Splits``
is accepted as well, with no checks of its own.

Stability: :class:`Splits` gains fields with defaults, never loses one; :class:`DataSource`
gains no required member.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable


@dataclass(frozen=True)
class Splits:
    """``train``, ``val`` and ``test`` are torch datasets of ``(input, label)``; ``input_shape``
    is one input's ``(C, H, W)``; ``num_classes`` the model's outputs (classes, or the
    regression targets' count)."""

    train: Any
    val: Any
    test: Any
    num_classes: int
    input_shape: tuple[int, int, int]


@runtime_checkable
class DataSource(Protocol):
    """A data source. Return instances from ``vitopt_register_datasets`` as
    ``{name: source}``."""

    def check(self, data: Any) -> None:
        """Raise ``ValueError`` (one line) when the ``data`` section is one this source cannot
        load (a missing ``path``): called in the driver before the baseline is trained, and
        the campaign stops naming ``data.source`` and the message."""
        ...

    def load(self, data: Any) -> Splits:
        """The splits of the ``data`` section. Called in the driver and once per trial
        process (the splits are cached per process); it must give the same splits each time
        for the same section."""
        ...


class DataSourceBase:
    """:meth:`check` is satisfied unless :attr:`path_holds` says the source reads
    ``data.path``: then a campaign without one stops, saying what the folder must hold."""

    #: What the folder at ``data.path`` holds, for a source that reads one
    #: (``"a folder with train/ and val/"``); ``None`` when the source needs no path.
    path_holds: ClassVar[str | None] = None

    def check(self, data: Any) -> None:
        if self.path_holds is not None and data.path is None:
            raise ValueError(f"needs data.path: {self.path_holds}")

    def load(self, data: Any) -> Splits:
        raise NotImplementedError(f"{type(self).__name__} must define load(data)")


class FunctionSource(DataSourceBase):
    """A plain ``data -> Splits`` function registered as a source."""

    def __init__(self, load: Callable[[Any], Splits]) -> None:
        self._load = load

    def load(self, data: Any) -> Splits:
        return self._load(data)


def as_data_source(value: object) -> DataSource:
    """``value`` as a :class:`DataSource` (a plain function wrapped); ``TypeError`` for
    anything else."""
    if isinstance(value, DataSource):
        return value
    if callable(value):
        return FunctionSource(value)
    raise TypeError(
        f"a data source must have load(data) and check(data), or be a function data -> Splits; "
        f"got {type(value).__name__}"
    )
