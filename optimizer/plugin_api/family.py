"""Model families: one small interface per family of architectures (ViT/DeiT, Swin, MobileViT,
EfficientFormer, LeViT are built in) that says three things about its models:

- **what a structural pruner may remove** (:meth:`ModelFamily.prunable`): each attention
  block's heads, as the slices of its tensors each head owns (:class:`HeadSlices`), the
  hidden widths of its MLPs and convs (:class:`ChannelGroup`), which torch-pruning's dependency
  graph narrows with every layer coupled to them, and the stacks of residual blocks any of
  which may be dropped whole (:attr:`Prunable.blocks`). The widths *between* blocks (a ViT's
  embedding dimension, a hierarchical model's stage widths) are never listed: pruning them
  couples every block into one group and costs far more accuracy per MAC;
- **which features feed a decode head** (:meth:`ModelFamily.features`): NCHW maps, finest first;
- **what an export for TensorRT 8.2 needs** (:meth:`ModelFamily.prepare_export`): modules
  swapped for ones that export as ops the Nano's parser has.

A family covers timm model names (:attr:`ModelFamily.model_names`, ``fnmatch`` patterns): the
campaign's ``model.name`` (and a teacher's ``teacher.name``) picks it. Register one with
``vitopt_register_model_families``; subclass :class:`ModelFamilyBase` for the defaults. This
module imports no torch: the types it names are torch's.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch
    from torch import nn

#: Feature maps a decode head takes at most (the last ones of a hierarchical model).
MAX_DECODE_LEVELS = 4


@dataclass(frozen=True)
class HeadSlices:
    """One attention block's heads: the slices of its tensors each head owns.

    ``producers`` are the layers whose output channels are split by head (the ``qkv``
    projection, and a norm on its output if it has one), ``output_rows(h)`` the channels head
    ``h`` owns there; ``consumers`` the layers whose input channels are split by head (the
    output projection), ``input_columns(h)`` head ``h``'s there. ``per_head`` lists other
    tensors indexed by head as ``(module, attribute, dim)`` (relative position bias tables,
    attention biases). After the slices are cut, ``update(kept)`` makes the block consistent
    with the heads it kept (their old indices, ascending): its head count and derived widths.
    """

    block: nn.Module
    num_heads: int
    producers: Sequence[nn.Module]
    consumers: Sequence[nn.Module]
    output_rows: Callable[[int], Sequence[int]]
    input_columns: Callable[[int], Sequence[int]]
    update: Callable[[Sequence[int]], None]
    per_head: Sequence[tuple[nn.Module, str, int]] = ()


@dataclass(frozen=True)
class ChannelGroup:
    """A hidden width a pruner may narrow: the output channels of ``root`` (an MLP's first
    layer, an inverted-residual block's expansion conv) and everything torch-pruning's
    dependency graph couples to them (norms, a depthwise conv, the next layer's inputs).
    ``block`` is the module that owns the width: a prune may change tensors inside the blocks
    it narrows, and the pruner refuses a result that changed any tensor outside them."""

    block: nn.Module
    root: nn.Module


@dataclass(frozen=True)
class Prunable:
    """What :meth:`ModelFamily.prunable` finds in one model. ``no_heads`` says why there are no
    heads to remove when ``heads`` is empty (one line, shown to the user).

    ``blocks`` lists stacks of residual blocks (``nn.Sequential``; a ViT's ``blocks``) whose
    every block maps its input, a ``(batch, tokens, channels)`` sequence, to one of the same
    shape, so that any of them can be dropped whole: a depth cut replaces it by an
    ``nn.Identity`` in place (the kept blocks keep their names, by which feature KD pairs
    them with the teacher's). The heads and widths listed are those of blocks still there."""

    heads: Sequence[HeadSlices] = ()
    channels: Sequence[ChannelGroup] = ()
    no_heads: str = "it has no attention block this family prunes"
    blocks: Sequence[nn.Sequential] = ()


@runtime_checkable
class ModelFamily(Protocol):
    """A family of timm architectures (see the module's docstring)."""

    #: What the family is called in messages and in ``vitopt plugins``.
    name: str
    #: ``fnmatch`` patterns of the timm model names it covers (``("vit_*", "deit_*")``).
    model_names: Sequence[str]

    def prunable(self, model: nn.Module) -> Prunable:
        """The heads and hidden widths of ``model`` (it may be wrapped: a segmentation model
        holds the backbone) that a structural pruner may remove."""
        ...

    def features(self, backbone: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        """The NCHW feature maps of ``backbone`` (built with ``num_classes=0``) on ``x`` that a
        decode head takes, finest first; at most :data:`MAX_DECODE_LEVELS`."""
        ...

    def prepare_export(self, model: nn.Module) -> None:
        """Make ``model`` export (opset 16) as ops TensorRT 8.2 parses, in place and without
        changing what it computes."""
        ...


class ModelFamilyBase:
    """Defaults: the feature maps of timm's ``forward_intermediates`` (the last
    :data:`MAX_DECODE_LEVELS` stages of a hierarchical model), and an export that needs
    nothing."""

    name: str = ""
    model_names: Sequence[str] = ()

    def prunable(self, model: nn.Module) -> Prunable:
        raise NotImplementedError(f"{type(self).__name__} must define prunable(model)")

    def features(self, backbone: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        stages = len(getattr(backbone, "feature_info", ())) or MAX_DECODE_LEVELS
        return list(
            backbone.forward_intermediates(
                x, indices=min(stages, MAX_DECODE_LEVELS), intermediates_only=True
            )
        )

    def prepare_export(self, model: nn.Module) -> None:
        return None


def covers(family: ModelFamily, model_name: str) -> bool:
    """Whether ``family`` covers the timm model ``model_name``."""
    return any(fnmatch.fnmatchcase(model_name, pattern) for pattern in family.model_names)


def qkv_major(num_heads: int, head_dim: int, parts: int = 3) -> tuple[Callable, Callable]:
    """``(output_rows, input_columns)`` for a fused projection laid out ``[part][head][dim]``
    (timm's ``Attention`` and Swin's ``WindowAttention``: q, k, v each ``num_heads * head_dim``
    wide) and an output projection taking ``[head][dim]``."""
    width = num_heads * head_dim

    def rows(head: int) -> list[int]:
        return [p * width + head * head_dim + d for p in range(parts) for d in range(head_dim)]

    def columns(head: int) -> list[int]:
        return list(range(head * head_dim, (head + 1) * head_dim))

    return rows, columns


def head_major(per_head: int, value_dim: int) -> tuple[Callable, Callable]:
    """``(output_rows, input_columns)`` for a fused projection laid out ``[head][q|k|v]``
    (LeViT's and EfficientFormer's attention: ``per_head`` channels a head, ``value_dim`` of
    them its values) and an output projection taking ``[head][value]``."""

    def rows(head: int) -> list[int]:
        return list(range(head * per_head, (head + 1) * per_head))

    def columns(head: int) -> list[int]:
        return list(range(head * value_dim, (head + 1) * value_dim))

    return rows, columns


class PruningUnsupported(ValueError):
    """The model has no structure its family lets a pruner remove (the message says which model
    and why). A ``ValueError`` so callers that treat bad inputs alike still can."""
