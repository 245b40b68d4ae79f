"""What an int8 recipe is given and must do, and the calibration helpers the recipes share.

A recipe turns the exported fp32 ONNX file into the int8 file the device runs. It is offered
only for the runtimes that run it faster than fp32 (:meth:`Recipe.offered`); the technique in
``plugins/quantization.py`` checks and records what it wrote.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from optimizer.plugin_api import CalibrationMethod

from .int8_target import Int8Target


def iter_single_samples(loader: Iterable[Any], limit: int) -> Iterator[torch.Tensor]:
    """Up to ``limit`` single inputs, each with a batch dimension of 1, from a loader of
    ``(inputs, labels)`` batches (or of bare input batches).

    Why: calibration and activation statistics must feed the exported graph, whose batch size is
    a static 1, while training loaders batch by the campaign's batch size. Stops drawing batches
    as soon as ``limit`` samples are out, so a large loader costs only what is used.
    """
    if limit <= 0:
        return
    produced = 0
    for batch in loader:
        inputs = batch[0] if isinstance(batch, list | tuple) else batch
        for sample in inputs:
            yield sample.detach().unsqueeze(0).cpu()
            produced += 1
            if produced >= limit:
                return


def onnx_op_counts(model: Any) -> dict[str, int]:
    """``{op_type: count}`` over the main graph of an ``onnx.ModelProto`` (what a test or a log
    line needs to see that a graph really was quantized)."""
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def graph_input(model: Any) -> tuple[str, int]:
    """The model's (only) data input and its static batch size (1 where the batch is dynamic:
    one sample at a time fits every batch a dynamic graph accepts)."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    if len(inputs) != 1:
        names = ", ".join(value.name for value in inputs)
        raise ValueError(f"int8 calibration needs a single-input graph, this one has: {names}")
    dims = inputs[0].type.tensor_type.shape.dim
    batch = dims[0].dim_value if dims and dims[0].HasField("dim_value") else 1
    return inputs[0].name, max(int(batch), 1)


def calibration_items(loader: Iterable[Any], count: int, batch: int) -> list[np.ndarray]:
    """``count`` samples from ``loader`` as float32 arrays shaped for the graph's batch size;
    ValueError when the loader gives none."""
    samples = [s.numpy().astype(np.float32) for s in iter_single_samples(loader, count)]
    if not samples:
        raise ValueError("int8 calibration: the training loader gave no samples")
    if batch == 1:
        return samples
    whole = len(samples) // batch * batch
    return [np.concatenate(samples[i : i + batch]) for i in range(0, whole, batch)]


@dataclass(frozen=True)
class Int8Job:
    """One quantization: the device's runtime, the graph's input, and the calibration samples
    (drawn only when a recipe calls :attr:`calibration`: dynamic quantization needs none)."""

    target: Int8Target
    input_name: str
    calibration: Callable[[], list[np.ndarray]]
    calibration_method: CalibrationMethod


class Recipe(Protocol):
    """An int8 recipe: ``name`` is its value of ``quantize.method``, ``help`` one line for the
    parameter's help."""

    name: str
    help: str

    def offered(self, target: Int8Target) -> bool:
        """Whether the search offers this recipe on a device of ``target``'s runtime."""
        ...

    def quantize(self, source: Path, out: Path, job: Int8Job) -> str:
        """Write the int8 graph of ``source`` to ``out``; return what was done, for the log."""
        ...
