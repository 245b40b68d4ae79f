"""What a candidate costs, recorded per trial: parameter count, MACs and ONNX file size.

Also two small helpers every torch-side technique (pruning, distillation, quantization
calibration) needs and should not each reinvent: a batch-1 example input for a context's
``input_shape``, and a bounded iterator over ``(x, y)`` batches of a loader on a given device.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import torch


def example_input(
    input_shape: Sequence[int], device: torch.device | str | None = None
) -> torch.Tensor:
    """A random batch-1 input. ``input_shape`` may be ``(C, H, W)`` or already batched as
    ``(1, C, H, W)`` (the trial pipeline's :class:`StageContext` carries the batched form), so
    callers need not care which one they hold."""
    shape = tuple(int(d) for d in input_shape)
    if len(shape) == 3:
        shape = (1, *shape)
    if len(shape) != 4 or shape[0] != 1:
        raise ValueError(f"expected (C, H, W) or (1, C, H, W), got {tuple(input_shape)}")
    return torch.randn(shape, device=device)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameterless model), where its
    inputs must live."""
    for param in model.parameters():
        return param.device
    return torch.device("cpu")


def iter_batches(
    loader: Iterable[Any], max_batches: int, device: torch.device | str = "cpu"
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """At most ``max_batches`` ``(x, y)`` pairs from ``loader``, moved to ``device``.

    Techniques that need a few real batches (Taylor importance, calibration, a quick
    statistic) use this so that a loader yielding lists, tuples or longer records behaves the
    same everywhere: the first two items are taken as inputs and targets.
    """
    for batch in islice(loader, max(0, max_batches)):
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise TypeError(
                f"expected (inputs, targets) batches, got {type(batch).__name__}"
                + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
            )
        x, y = batch[0], batch[1]
        yield x.to(device), y.to(device)


def count_params(model: torch.nn.Module) -> int:
    """Number of parameters (trainable or not; shared tensors counted once), the storage a
    structural pruning actually removes."""
    seen: set[int] = set()
    total = 0
    for param in model.parameters():
        if id(param) not in seen:
            seen.add(id(param))
            total += param.numel()
    return total


def count_macs(model: torch.nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulate operations of one forward pass at batch 1.

    Counted by torch's ``FlopCounterMode`` at the operator level (FLOPs / 2): every matmul and
    convolution the forward dispatches, whichever module issues it, so the attention matmuls of
    every family count (LeViT's and EfficientFormer's explicit ``q @ k``, Swin's windows, and
    fused ``scaled_dot_product_attention``, for which the CPU kernel's formula is added here)
    and pruned heads show up in the number. Elementwise ops and norms are not counted. It runs
    without gradients in eval mode, and the model's mode is restored.
    ``input_shape`` is ``(C, H, W)`` or ``(1, C, H, W)``.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_attention(query, key, value, *_args, out_shape=None, **_kwargs) -> int:
        return sdpa_flop_count(query, key, value)

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_attention}
    example = example_input(input_shape, model_device(model))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            model(example)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // 2


def onnx_size_bytes(path: Path | str) -> int:
    """Bytes on disk of an ONNX model: the file plus any external-data files it references.

    Only the graph's protobuf is parsed (external tensors are not loaded), so this is cheap
    even when the weights live beside the file.
    """
    import onnx

    path = Path(path)
    total = path.stat().st_size
    proto = onnx.load(str(path), load_external_data=False)
    locations: set[str] = set()
    for tensor in proto.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    locations.add(entry.value)
    for location in sorted(locations):
        data = path.parent / location
        if data.is_file():
            total += data.stat().st_size
    return total
