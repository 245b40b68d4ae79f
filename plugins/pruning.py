"""Structural pruning of whole blocks, attention heads and hidden widths, by the rules of each
model family.

Weights are really removed, not masked: whole residual blocks (``depth``: replaced by an
identity), whole attention heads (the rows of the fused ``qkv`` projection a head owns, its
columns of the output projection, its row or column of any bias table) and/or hidden channels
of MLPs and conv blocks (an ``fc1``'s rows and everything torch-pruning's dependency graph
couples to them: norms, a depthwise conv, the next layer's inputs). What to cut comes from the
model's family (:mod:`optimizer.plugin_api.family`;
ViT/DeiT, Swin, MobileViT, EfficientFormer and LeViT are in :mod:`plugins.families`). The widths
*between* blocks (a ViT's embedding dimension, a hierarchical model's stage widths) never change:
pruning them would couple every layer of the network into one group and costs far more accuracy
per MAC saved. Masking would leave latency unchanged on the device, which is what this search
measures.

Blocks are dropped before any width is cut, the least influential first: a block's influence
is ``1 - cos(input, output)`` per token, averaged over a few training batches (the "block
influence" of Men et al., ShortGPT, 2024): a block that barely turns its input contributes
least. A dropped block's share of the fixed per-node time goes with it, so depth cuts escape
the per-MAC ceiling that caps deep width cuts on onnxruntime's CPU kernels
(``docs/families.md``).

Kept hidden widths are multiples of ``round_to`` (8 by default): GEMMs whose inner dimension is
not a multiple of 8 miss the tensor-core paths of TensorRT/cuBLAS, so an unaligned width can be
*slower* than the wider aligned one. Head pruning keeps each head's width and so is aligned by
construction. On onnxruntime's CPU kernels a coarser ``round_to`` showed no gain:
on the reference geometry (``bench/cut_efficiency.py``) MLP widths 320 (a multiple of 64), 304
and 256 all fall on the one speedup-for-MACs curve that every other cut follows.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from optimizer.plugin_api import ParamSpec, StageContext, hookimpl
from optimizer.plugin_api.family import ChannelGroup, HeadSlices, ModelFamily, PruningUnsupported
from optimizer.plugin_api.model_stats import count_params, example_input, iter_batches, model_device

#: What a method removes: its name's ``+``-joined parts (``depth+heads+mlp`` all three).
METHODS: tuple[str, ...] = (
    "none",
    "heads",
    "mlp",
    "heads+mlp",
    "depth",
    "depth+mlp",
    "depth+heads+mlp",
)
IMPORTANCES: tuple[str, ...] = ("magnitude", "taylor")
RATIO_RANGE: tuple[float, float] = (0.1, 0.7)
DEPTH_RANGE: tuple[float, float] = (0.1, 0.5)


def removes(method: str) -> frozenset[str]:
    """What ``method`` removes: the parts of its name (``depth``, ``heads``, ``mlp``)."""
    return frozenset(method.split("+")) - {"none"}


_WIDTH_METHODS = tuple(m for m in METHODS if removes(m) & {"heads", "mlp"})
_DEPTH_METHODS = tuple(m for m in METHODS if "depth" in removes(m))


def units_to_remove(count: int, ratio: float) -> int:
    """Heads removed from a block with ``count`` heads (or blocks from a stack of ``count``) at
    ``ratio``: the nearest whole number, at least one (so that asking for head pruning always
    prunes, even on a 3-head ViT-Tiny at ratio 0.1) and never all (a block keeps at least one
    head, a stack one block)."""
    if count <= 1:
        return 0
    return min(max(math.floor(ratio * count + 0.5), 1), count - 1)


def kept_mlp_width(hidden: int, ratio: float, round_to: int) -> int:
    """Hidden channels an MLP keeps at ``ratio``: ``hidden * (1 - ratio)`` rounded *down* to a
    multiple of ``round_to`` (never below one multiple), so the result is aligned and the
    ratio is a lower bound on what is removed."""
    step = max(1, round_to)
    kept = math.floor(hidden * (1.0 - ratio) / step) * step
    return max(kept, step)


def prune_model(
    model: nn.Module,
    family: ModelFamily,
    *,
    method: str,
    ratio: float = 0.0,
    depth: float = 0.0,
    example: torch.Tensor,
    importance: str = "magnitude",
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
    round_to: int = 8,
    label: str | None = None,
) -> nn.Module:
    """Prune ``model`` **in place** by the rules of its ``family`` and return it (``label``
    names the model in errors: its timm name; its class by default).

    ``method`` is one of :data:`METHODS`; ``depth`` the fraction of each block stack's blocks
    to drop (see :func:`units_to_remove`), ranked by their influence on ``batches`` (required
    then); ``ratio`` the fraction of heads per attention block (see :func:`units_to_remove`)
    and/or of each hidden width (see :func:`kept_mlp_width`) to remove; ``example`` a batch-1
    input used to trace the dependency graph. ``importance="taylor"`` ranks heads and widths by
    ``|w · dL/dw|`` accumulated by a forward/backward cross-entropy pass on each ``(x, y)`` of
    ``batches`` (required then).

    Heads are cut as the family's :class:`~optimizer.plugin_api.family.HeadSlices` say (the
    fused projection's rows, the output projection's columns, bias tables); hidden widths by
    torch-pruning's dependency graph from each :class:`~optimizer.plugin_api.family.ChannelGroup`
    root. Raises :class:`PruningUnsupported` when the family finds nothing ``method`` removes.
    """
    if method not in METHODS:
        raise ValueError(f"prune.method must be one of {METHODS}, got {method!r}")
    if method == "none":
        return model
    parts = removes(method)
    if importance not in IMPORTANCES:
        raise ValueError(f"prune.importance must be one of {IMPORTANCES}, got {importance!r}")
    if parts - {"depth"} and not 0.0 < ratio < 1.0:
        raise ValueError(f"prune.ratio must be in (0, 1), got {ratio}")
    if "depth" in parts and not 0.0 < depth < 1.0:
        raise ValueError(f"prune.depth must be in (0, 1), got {depth}")
    model_name = label or type(model).__name__
    batches = list(batches or ())  # read by the block ranking and by Taylor importance
    if "depth" in parts:
        _drop_blocks(model, family, method, depth, batches, model_name)
        if parts == {"depth"}:
            return model
    found = family.prunable(model)
    want_heads = "heads" in parts
    want_mlp = "mlp" in parts
    if want_heads and not found.heads:
        raise PruningUnsupported(
            f"{model_name}: prune.method={method!r} removes attention heads, but this "
            f"{family.name} model has none to remove: {found.no_heads}"
        )
    if want_mlp and not found.channels:
        raise PruningUnsupported(
            f"{model_name}: prune.method={method!r} removes hidden channels, but this "
            f"{family.name} model has no MLP or conv block whose width it may narrow"
        )
    heads = [h for h in found.heads if units_to_remove(h.num_heads, ratio)] if want_heads else []
    if want_heads and not heads:
        raise PruningUnsupported(
            f"{model_name}: prune.method={method!r} but every attention block has a single "
            "head, and a block must keep at least one"
        )
    groups = (list(found.channels) if want_mlp else []) + _decoder_groups(model)
    widths: dict[nn.Module, int] = {}  # channel root -> the width it must end with
    for group in groups:
        kept = kept_mlp_width(_out_width(group.root), ratio, round_to)
        if kept < _out_width(group.root):
            widths[group.root] = kept
    if want_mlp and not widths and not heads:
        raise PruningUnsupported(
            f"{model_name}: prune.method={method!r} at ratio {ratio} leaves every hidden width "
            f"as it is (too small for round_to={round_to})"
        )
    planned = {h.block: _planned_width(h, ratio) for h in heads}
    blocks = list(planned) + [g.block for g in groups if g.root in widths]
    inside = {id(p) for block in blocks for p in block.parameters()}
    frozen_shapes = {
        name: tuple(p.shape) for name, p in model.named_parameters() if id(p) not in inside
    }

    was_training = model.training
    model.eval()  # trace and score without dropout / drop-path noise
    # Taylor needs .grad everywhere, so a partly frozen model is unfrozen for the duration;
    # flags are restored by name afterwards (the pruned layers hold new Parameter objects).
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    for param in model.parameters():
        param.requires_grad_(True)
    try:
        if importance == "taylor":  # with the real forward, before anything is cut
            _accumulate_gradients(model, batches, model_name)
        for slices in heads:
            _cut_heads(slices, units_to_remove(slices.num_heads, ratio), importance)
        if widths:
            _narrow(model, example, widths, importance)
    finally:
        model.zero_grad(set_to_none=True)
        for name, param in model.named_parameters():
            param.requires_grad_(requires_grad.get(name, True))
        model.train(was_training)

    changed = {
        name: (frozen_shapes[name], tuple(p.shape))
        for name, p in model.named_parameters()
        if name in frozen_shapes and tuple(p.shape) != frozen_shapes[name]
    }
    if changed:
        raise RuntimeError(
            f"{model_name}: pruning changed tensors outside the pruned blocks (the widths "
            f"between blocks must stay): {changed}"
        )
    names = {module: name for name, module in model.named_modules()}
    ends = {**{h.producers[0]: planned[h.block] for h in heads}, **widths}
    missed = [
        f"{names.get(layer, '?')}: {_out_width(layer)} channels instead of {kept}"
        for layer, kept in ends.items()
        if _out_width(layer) != kept
    ]
    if missed:
        raise PruningUnsupported(
            f"{model_name}: the dependency graph did not prune these blocks as planned: "
            f"{', '.join(missed)}"
        )
    return model


def _drop_blocks(
    model: nn.Module,
    family: ModelFamily,
    method: str,
    depth: float,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    model_name: str,
) -> None:
    """Replace the ``depth`` share of each block stack's blocks, the least influential
    (:func:`_block_influence` on ``batches``), by an ``nn.Identity``."""
    stacks = list(family.prunable(model).blocks)
    if not stacks:
        raise PruningUnsupported(
            f"{model_name}: prune.method={method!r} drops whole blocks, but this "
            f"{family.name} model has no block stack its family lets a pruner drop"
        )
    live = [_live_blocks(stack) for stack in stacks]
    if not any(units_to_remove(len(kept), depth) for kept in live):
        raise PruningUnsupported(
            f"{model_name}: prune.method={method!r} but every block stack has a single block "
            "left, and a stack must keep one"
        )
    influence = _block_influence(
        model,
        [stack[i] for stack, kept in zip(stacks, live, strict=True) for i in kept],
        batches,
        model_name,
    )
    for stack, kept in zip(stacks, live, strict=True):
        ranked = sorted(kept, key=lambda i: influence[stack[i]])
        for index in ranked[: units_to_remove(len(kept), depth)]:
            stack[index] = nn.Identity()


def _live_blocks(stack: nn.Sequential) -> list[int]:
    """The indices of the blocks of ``stack`` a depth cut has not dropped yet."""
    return [i for i, block in enumerate(stack) if not isinstance(block, nn.Identity)]


def _block_influence(
    model: nn.Module,
    blocks: Sequence[nn.Module],
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    model_name: str,
) -> dict[nn.Module, float]:
    """Each of ``blocks``' mean ``1 - cos(input, output)`` over the tokens of ``batches``, each
    batch weighing the same (the model run in eval mode, without gradients): how far it turns
    what it is given."""
    totals = dict.fromkeys(blocks, 0.0)
    seen = 0

    def measure(block: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        totals[block] += float((1.0 - F.cosine_similarity(args[0], output, dim=-1)).mean())

    handles = [block.register_forward_hook(measure) for block in blocks]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x, _y in batches:
                model(x)
                seen += 1
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if seen == 0:
        raise ValueError(
            f"{model_name}: a depth cut ranks blocks by their influence on training batches, "
            "but the training loader yielded none"
        )
    return {block: total / seen for block, total in totals.items()}


def _planned_width(slices: HeadSlices, ratio: float) -> int:
    """The output channels an attention block's fused projection ends with at ``ratio``."""
    kept = slices.num_heads - units_to_remove(slices.num_heads, ratio)
    return kept * len(slices.output_rows(0))


def _decoder_groups(model: nn.Module) -> list[ChannelGroup]:
    """A decode head (segmentation) exposing ``prunable_convs`` loses the same fraction of its
    channels, aligned like the MLPs, whatever the method; its classifier conv is not listed."""
    return [
        ChannelGroup(decoder, conv)
        for decoder in model.modules()
        if getattr(type(decoder), "prunable_convs", None) is not None
        for conv in decoder.prunable_convs
    ]


def _head_score(tensors: list[tuple[torch.Tensor, int, list[int]]], importance: str) -> float:
    """A head's importance: the squared L2 norm of its slices, or their ``sum |w · dL/dw|``."""
    total = 0.0
    for tensor, dim, index in tensors:
        at = torch.tensor(index, device=tensor.device)
        picked = tensor.detach().index_select(dim, at)
        if importance == "taylor":
            grad = tensor.grad
            total += (
                0.0 if grad is None else float((picked * grad.index_select(dim, at)).abs().sum())
            )
        else:
            total += float(picked.pow(2).sum())
    return total


def _cut_heads(slices: HeadSlices, remove: int, importance: str) -> None:
    """Remove the ``remove`` least important heads of one attention block."""

    def head_tensors(head: int) -> list[tuple[torch.Tensor, int, list[int]]]:
        rows, columns = list(slices.output_rows(head)), list(slices.input_columns(head))
        out = [(t, 0, rows) for layer in slices.producers for t in _channel_tensors(layer)]
        out += [(layer.weight, 1, columns) for layer in slices.consumers]
        return out + [(getattr(m, attr), dim, [head]) for m, attr, dim in slices.per_head]

    ranked = sorted(range(slices.num_heads), key=lambda h: _head_score(head_tensors(h), importance))
    kept = sorted(ranked[remove:])
    rows = [r for h in kept for r in slices.output_rows(h)]
    columns = [c for h in kept for c in slices.input_columns(h)]
    for layer in slices.producers:
        for name in _CHANNEL_TENSORS:
            _select(layer, name, 0, rows)
        _set_width(layer, "out", len(rows))
    for layer in slices.consumers:
        _select(layer, "weight", 1, columns)
        _set_width(layer, "in", len(columns))
    for module, attr, dim in slices.per_head:
        _select(module, attr, dim, kept)
    slices.update(kept)


_CHANNEL_TENSORS = ("weight", "bias", "running_mean", "running_var")


def _channel_tensors(layer: nn.Module) -> list[torch.Tensor]:
    """The tensors of ``layer`` indexed by its output channel on their first dimension."""
    tensors = (getattr(layer, name, None) for name in _CHANNEL_TENSORS)
    return [t for t in tensors if isinstance(t, torch.Tensor)]


def _select(module: nn.Module, name: str, dim: int, index: list[int]) -> None:
    """Keep ``index`` along ``dim`` of ``module.name`` (a parameter keeps its gradient's slice
    and its flag; a buffer stays a buffer)."""
    tensor = getattr(module, name, None)
    if not isinstance(tensor, torch.Tensor):
        return
    at = torch.tensor(index, device=tensor.device)
    picked = tensor.detach().index_select(dim, at).clone()
    if isinstance(tensor, nn.Parameter):
        new = nn.Parameter(picked, requires_grad=tensor.requires_grad)
        if tensor.grad is not None:
            new.grad = tensor.grad.index_select(dim, at)
        setattr(module, name, new)
    else:
        setattr(module, name, picked)


def _set_width(layer: nn.Module, side: str, width: int) -> None:
    """Record a cut layer's new width where its class keeps one."""
    names = {
        "out": ("out_features", "out_channels", "num_features"),
        "in": ("in_features", "in_channels"),
    }[side]
    for name in names:
        if hasattr(layer, name):
            setattr(layer, name, width)


def _narrow(
    model: nn.Module, example: torch.Tensor, widths: dict[nn.Module, int], importance: str
) -> None:
    """Narrow each root's output channels to its width with torch-pruning's dependency graph
    (one traced graph; coupled roots, such as a decoder's summed laterals, are narrowed once)."""
    import torch_pruning as tp

    with warnings.catch_warnings():
        # Class tokens, position embeddings and bias tables are plain parameters of widths that
        # are never narrowed here; torch-pruning warns about each.
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    score = (
        tp.importance.GroupTaylorImportance()
        if importance == "taylor"
        else tp.importance.GroupMagnitudeImportance(p=2)
    )
    for root, kept in widths.items():
        width = _out_width(root)
        if width <= kept:  # narrowed already with a root it is coupled to
            continue
        prune = (
            tp.prune_linear_out_channels
            if isinstance(root, nn.Linear)
            else tp.prune_conv_out_channels
        )
        ranking = score(graph.get_pruning_group(root, prune, idxs=list(range(width))))
        drop = sorted(int(i) for i in torch.argsort(ranking)[: width - kept])
        graph.get_pruning_group(root, prune, idxs=drop).prune()


def _out_width(layer: nn.Module) -> int:
    return int(layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels)


def _accumulate_gradients(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None,
    model_name: str,
) -> None:
    """Sum cross-entropy gradients over ``batches`` into ``.grad`` for Taylor importance
    (the caller has made every parameter require grad)."""
    seen = 0
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        for x, y in batches or ():
            # A round trip through training mode drops what a module cached in eval mode from a
            # graph already backpropagated (timm's attention-bias caches: LeViT, EfficientFormer).
            model.train()
            model.eval()
            out = model(x)
            if isinstance(out, (tuple, list)):  # e.g. a distilled DeiT's (cls, dist) pair
                out = out[0]
            # Dense (segmentation) logits: per-pixel loss, 255 marks ignored pixels.
            ignore = 255 if out.dim() == 4 else -100
            F.cross_entropy(out, y, ignore_index=ignore).backward()
            seen += 1
    if seen == 0:
        raise ValueError(
            f"{model_name}: prune.importance='taylor' needs gradients, but the training loader "
            "yielded no batches"
        )


class TorchPruning:
    """Structural pruning of whole blocks, attention heads and hidden widths by the rules of
    the model's family (:mod:`optimizer.plugin_api.family`; torch-pruning's DepGraph for the
    widths)."""

    name = "torch_pruning"
    stage = "prune"
    #: Preflight refuses a campaign whose model no family covers, before any trial.
    needs_model_family = True

    def __init__(self, round_to: int = 8, score_batches: int = 4) -> None:
        """``round_to``: kept MLP widths are multiples of it (GPU GEMM alignment; 1 disables).
        ``score_batches``: training batches whose activations rank blocks for a depth cut and
        whose gradients rank heads and channels for Taylor importance (a few suffice: the
        ranking, not the values, matters)."""
        if round_to < 1:
            raise ValueError(f"round_to must be >= 1, got {round_to}")
        if score_batches < 1:
            raise ValueError(f"score_batches must be >= 1, got {score_batches}")
        self.round_to = round_to
        self.score_batches = score_batches

    def search_space(self) -> Sequence[ParamSpec]:
        """Method, depth, ratio and importance; depth only matters when a method drops blocks,
        ratio and importance only when it cuts heads or widths."""
        widths = {"prune.method": list(_WIDTH_METHODS)}
        return [
            ParamSpec(
                "prune.method",
                "categorical",
                default="none",  # the baseline: nothing removed
                choices=METHODS,
                help="what to remove: whole blocks (depth), attention heads, hidden channels, "
                "a combination, or nothing",
            ),
            ParamSpec(
                "prune.depth",
                "float",
                default=0.25,
                low=DEPTH_RANGE[0],
                high=DEPTH_RANGE[1],
                when={"prune.method": list(_DEPTH_METHODS)},
                help="fraction of the blocks to drop whole, the least influential first",
            ),
            ParamSpec(
                "prune.ratio",
                "float",
                default=0.3,
                low=RATIO_RANGE[0],
                high=RATIO_RANGE[1],
                when=widths,
                help="fraction of heads per block / of each hidden width to remove",
            ),
            ParamSpec(
                "prune.importance",
                "categorical",
                default="magnitude",
                choices=IMPORTANCES,
                when=widths,
                help="ranking: L2 weight magnitude, or first-order Taylor |w * dL/dw|",
            ),
        ]

    def model_choices(self, model: Any, ctx: StageContext) -> dict[str, list[str]]:
        """The methods the model's family finds something to remove for: blocks to drop (a
        stack of two or more), heads to cut (a block with two or more), widths to narrow."""
        family = ctx.model_family
        if family is None or not isinstance(model, nn.Module):
            return {}
        found = family.prunable(model)
        can = {
            "depth": any(len(_live_blocks(stack)) > 1 for stack in found.blocks),
            "heads": any(slices.num_heads > 1 for slices in found.heads),
            "mlp": bool(found.channels),
        }
        return {"prune.method": [m for m in METHODS if all(can[part] for part in removes(m))]}

    def apply(self, subject: Any, params: Mapping[str, Any], ctx: StageContext) -> nn.Module:
        """Return a pruned **copy** of ``subject`` (the caller's model is left intact, so a
        baseline or teacher held elsewhere is unaffected); ``prune.method="none"`` returns
        ``subject`` itself."""
        method = params["prune.method"]
        if method == "none":
            return subject
        ratio = float(params["prune.ratio"])
        depth = float(params["prune.depth"])
        importance = params["prune.importance"]
        if not isinstance(subject, nn.Module):
            raise PruningUnsupported(
                f"{type(subject).__name__}: the prune stage takes a torch nn.Module"
            )
        family = ctx.model_family
        if family is None:
            raise PruningUnsupported(
                f"{ctx.model_name or type(subject).__name__}: no model family covers it, so "
                "torch_pruning has no rule for what to remove (vitopt plugins lists the "
                "families and the model names they cover)"
            )
        model = copy.deepcopy(subject)
        device = model_device(model)
        scored = importance == "taylor" or method in _DEPTH_METHODS
        batches = iter_batches(ctx.train_loader, self.score_batches, device) if scored else None
        before = count_params(model)
        started = time.perf_counter()
        prune_model(
            model,
            family,
            method=method,
            ratio=ratio,
            depth=depth,
            example=example_input(ctx.input_shape, device),
            importance=importance,
            batches=batches,
            round_to=self.round_to,
            label=ctx.model_name or None,
        )
        after = count_params(model)
        ctx.log.info(
            "torch_pruning %s depth=%.3f ratio=%.3f importance=%s: params %d -> %d (%.1f%%) "
            "in %.2fs",
            method,
            depth,
            ratio,
            importance,
            before,
            after,
            100.0 * after / max(before, 1),
            time.perf_counter() - started,
        )
        return model


@hookimpl
def vitopt_register_techniques() -> list[TorchPruning]:
    """The built-in structural pruning technique."""
    return [TorchPruning()]
