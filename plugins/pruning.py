"""Structural pruning of timm ViTs with torch-pruning's dependency graph (DepGraph).

Weights are really removed, not masked: whole attention heads (rows of ``qkv``, columns of
``proj``) and/or hidden channels of the MLPs (rows of ``fc1``, columns of ``fc2``). Only the
widths *inside* a block change; the embedding dimension (the residual stream shared by every
block, the class token, the position embedding and the norms) is never touched, because pruning
it would couple every layer of the network into one group and costs far more accuracy per MAC
saved. Masking would leave latency unchanged on the device, which is what this search measures.

Kept MLP widths are multiples of ``round_to`` (8 by default): GEMMs whose inner dimension is not
a multiple of 8 miss the tensor-core paths of TensorRT/cuBLAS, so an unaligned width can be
*slower* than the wider aligned one. Head pruning keeps ``head_dim`` (64 in ViT/DeiT) and so is
aligned by construction.
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
from optimizer.plugin_api.model_stats import count_params, example_input, iter_batches, model_device

METHODS: tuple[str, ...] = ("none", "heads", "mlp", "heads+mlp")
IMPORTANCES: tuple[str, ...] = ("magnitude", "taylor")
RATIO_RANGE: tuple[float, float] = (0.1, 0.7)
_PRUNING_METHODS = ("heads", "mlp", "heads+mlp")
# The graph only gates attention groups with the width ratio (head dims are never pruned, see
# prune_head_dims=False below); any value > 0 lets the head pruning run.
_ATTENTION_GROUP_GATE_RATIO = 0.5


class PruningUnsupported(ValueError):
    """The model has no structure this technique knows how to prune (the message says which
    model class and why). A ``ValueError`` so callers that treat bad inputs alike still can."""


def _timm_blocks() -> tuple[type[nn.Module], type[nn.Module]]:
    """timm's ``Attention`` and ``Mlp`` classes (imported lazily: timm is slow to import and
    only needed when a model is actually pruned)."""
    from timm.layers import Attention, Mlp

    return Attention, Mlp


def heads_to_remove(num_heads: int, ratio: float) -> int:
    """Heads removed from a block with ``num_heads`` heads at ``ratio``: the nearest whole
    number, at least one (so that asking for head pruning always prunes, even on a 3-head
    ViT-Tiny at ratio 0.1) and never all (a block keeps at least one head)."""
    if num_heads <= 1:
        return 0
    return min(max(math.floor(ratio * num_heads + 0.5), 1), num_heads - 1)


def kept_mlp_width(hidden: int, ratio: float, round_to: int) -> int:
    """Hidden channels an MLP keeps at ``ratio``: ``hidden * (1 - ratio)`` rounded *down* to a
    multiple of ``round_to`` (never below one multiple), so the result is aligned and the
    ratio is a lower bound on what is removed."""
    step = max(1, round_to)
    kept = math.floor(hidden * (1.0 - ratio) / step) * step
    return max(kept, step)


def prune_vit(
    model: nn.Module,
    *,
    method: str,
    ratio: float,
    example: torch.Tensor,
    importance: str = "magnitude",
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
    round_to: int = 8,
) -> nn.Module:
    """Prune ``model`` **in place** and return it.

    ``method`` is one of :data:`METHODS`; ``ratio`` the fraction of heads per block
    (see :func:`heads_to_remove`) and/or of hidden channels per MLP
    (see :func:`kept_mlp_width`) to remove; ``example`` a batch-1 input used to trace the
    dependency graph. ``importance="taylor"`` ranks by ``|w · dL/dw|`` accumulated by a
    forward/backward cross-entropy pass on each ``(x, y)`` of ``batches`` (required then).

    Raises :class:`PruningUnsupported` when the model has no timm ``Attention`` (for head
    pruning) or ``Mlp`` (for MLP pruning) blocks that can be pruned.
    """
    if method not in METHODS:
        raise ValueError(f"prune.method must be one of {METHODS}, got {method!r}")
    if method == "none":
        return model
    if importance not in IMPORTANCES:
        raise ValueError(f"prune.importance must be one of {IMPORTANCES}, got {importance!r}")
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"prune.ratio must be in (0, 1), got {ratio}")
    import torch_pruning as tp

    Attention, Mlp = _timm_blocks()
    model_name = type(model).__name__
    attentions = [m for m in model.modules() if isinstance(m, Attention)]
    mlps = [m for m in model.modules() if isinstance(m, Mlp)]
    want_heads = method in ("heads", "heads+mlp")
    want_mlp = method in ("mlp", "heads+mlp")
    if want_heads and not attentions:
        raise PruningUnsupported(
            f"{model_name}: prune.method={method!r} removes attention heads, but the model has "
            "no timm Attention blocks (timm.layers.Attention, as in timm vit_*/deit_* models)"
        )
    if want_mlp and not mlps:
        raise PruningUnsupported(
            f"{model_name}: prune.method={method!r} removes MLP hidden channels, but the model "
            "has no timm Mlp blocks (timm.layers.Mlp, as in timm vit_*/deit_* models)"
        )

    # What may shrink: qkv rows per head, fc1 rows per channel.
    # Everything else that could root a pruning group is ignored, which is what keeps the
    # embedding dimension (patch_embed, proj/fc2 outputs, the head) intact.
    roots: list[nn.Module] = []
    pruned_blocks: list[nn.Module] = []
    num_heads: dict[nn.Module, int] = {}
    head_ratio: dict[nn.Module, float] = {}
    expected: dict[nn.Module, int] = {}  # block -> heads / hidden width it must end with
    width_ratio: dict[nn.Module, float] = {}
    if want_heads:
        for attn in attentions:
            remove = heads_to_remove(attn.num_heads, ratio)
            if remove == 0:
                continue
            if getattr(attn, "gate", None) is not None:
                # The dependency graph does not tie the gate's output to the heads (tried: the
                # heads silently stay), so refuse rather than pretend.
                raise PruningUnsupported(
                    f"{model_name}: gated timm Attention (gated=True) is not supported for head "
                    "pruning; use prune.method='mlp'"
                )
            num_heads[attn.qkv] = attn.num_heads
            expected[attn] = attn.num_heads - remove
            # torch-pruning removes ceil(r * heads); half a head below the target makes that
            # exactly `remove` whatever the float rounding.
            head_ratio[attn.qkv] = (remove - 0.5) / attn.num_heads
            roots.append(attn.qkv)
            pruned_blocks.append(attn)
        if not num_heads:
            raise PruningUnsupported(
                f"{model_name}: prune.method={method!r} but every Attention block has a single "
                "head, and a block must keep at least one"
            )
    if want_mlp:
        for mlp in mlps:
            hidden = _out_width(mlp.fc1)
            kept = kept_mlp_width(hidden, ratio, round_to)
            if kept >= hidden:
                continue
            # torch-pruning keeps int(hidden * (1 - r)); half a channel above the target makes
            # that exactly `kept` whatever the float rounding.
            width_ratio[mlp.fc1] = 1.0 - (kept + 0.5) / hidden
            expected[mlp] = kept
            roots.append(mlp.fc1)
            pruned_blocks.append(mlp)
        if not width_ratio and not num_heads:
            raise PruningUnsupported(
                f"{model_name}: prune.method={method!r} at ratio {ratio} leaves every MLP at "
                f"its width (hidden sizes too small for round_to={round_to})"
            )

    # A decode head (segmentation) exposing ``prunable_convs`` loses the same fraction of its
    # channels, aligned like the MLPs, whatever the method; its classifier conv is not listed
    # and so stays ignored with every other layer.
    for decoder in [m for m in model.modules() if _declares_prunable_convs(m)]:
        for conv in decoder.prunable_convs:
            width = _out_width(conv)
            kept = kept_mlp_width(width, ratio, round_to)
            if kept >= width:
                continue
            width_ratio[conv] = 1.0 - (kept + 0.5) / width
            expected[conv] = kept
            roots.append(conv)
        if decoder not in pruned_blocks:
            pruned_blocks.append(decoder)

    root_ids = {id(m) for m in roots}
    ignored = [
        m
        for m in model.modules()
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd, nn.LSTM)) and id(m) not in root_ids
    ]
    inside = {id(p) for block in pruned_blocks for p in block.parameters()}
    frozen_shapes = {
        name: tuple(p.shape) for name, p in model.named_parameters() if id(p) not in inside
    }

    was_training = model.training
    model.eval()  # trace and score without dropout / drop-path noise
    qk_norms: list[tuple[nn.Module, nn.Module, nn.Module]] = []
    # The graph is traced through autograd and Taylor needs .grad everywhere, so a partly
    # frozen model is unfrozen for the duration; flags are restored by name afterwards (the
    # pruned layers hold new Parameter objects).
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    for param in model.parameters():
        param.requires_grad_(True)
    try:
        if importance == "taylor":  # with the real forward, before any module is swapped
            _accumulate_gradients(model, batches, model_name)
        # q_norm/k_norm normalise over head_dim, which whole-head pruning never changes; the
        # graph would wrongly couple their head_dim-sized weights to the heads being removed,
        # so they are hidden from it while it is traced and put back afterwards.
        for attn in pruned_blocks:
            if isinstance(attn, Attention):
                qk_norms.append((attn, attn.q_norm, attn.k_norm))
                attn.q_norm, attn.k_norm = nn.Identity(), nn.Identity()
        with warnings.catch_warnings():
            # cls_token / pos_embed are plain parameters: torch-pruning warns it would prune
            # their last dim, which is the embedding dim we never prune (those groups are
            # ignored above).
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
            pruner = tp.pruner.BasePruner(
                model,
                example,
                importance=(
                    tp.importance.GroupTaylorImportance()
                    if importance == "taylor"
                    else tp.importance.GroupMagnitudeImportance(p=2)
                ),
                global_pruning=False,  # uniform per block: predictable, aligned widths
                pruning_ratio=_ATTENTION_GROUP_GATE_RATIO,
                pruning_ratio_dict=width_ratio,
                ignored_layers=ignored,
                num_heads=num_heads,
                prune_num_heads=True,
                prune_head_dims=False,  # whole heads only: head_dim stays 64, aligned
                head_pruning_ratio=0.0,
                head_pruning_ratio_dict=head_ratio,
                round_to=round_to if round_to > 1 else None,
            )
        pruner.step()
        for attn in attentions:
            if attn.qkv in num_heads:
                _update_attention(attn, pruner.num_heads[attn.qkv])
    finally:
        for attn, q_norm, k_norm in qk_norms:
            attn.q_norm, attn.k_norm = q_norm, k_norm
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
            f"{model_name}: pruning changed tensors outside the pruned heads/MLPs "
            f"(the embedding dim must stay): {changed}"
        )
    missed = [
        f"{name}: {_block_size(block)} instead of {expected[block]}"
        for name, block in model.named_modules()
        if block in expected and _block_size(block) != expected[block]
    ]
    if missed:
        raise PruningUnsupported(
            f"{model_name}: the dependency graph did not prune these blocks as planned "
            f"(heads or MLP widths): {', '.join(missed)}"
        )
    return model


def _block_size(block: nn.Module) -> int:
    """Heads of a timm Attention, hidden width of a timm Mlp, output channels of a conv."""
    if isinstance(block, nn.modules.conv._ConvNd):
        return _out_width(block)
    return int(block.num_heads) if hasattr(block, "num_heads") else _out_width(block.fc1)


def _declares_prunable_convs(module: nn.Module) -> bool:
    """A decode head that lists the convs a pruner may narrow (see plugins.segmentation)."""
    convs = getattr(type(module), "prunable_convs", None)
    return convs is not None


def _out_width(layer: nn.Module) -> int:
    return int(layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels)


def _update_attention(attn: nn.Module, heads: int) -> None:
    """Make a timm ``Attention`` consistent with its pruned ``qkv``: its forward reshapes by
    ``num_heads``/``head_dim`` and back to ``attn_dim``, and unfused attention scales by
    ``scale`` (unchanged in value since whole heads go, set for clarity)."""
    attn.num_heads = heads
    attn.head_dim = attn.qkv.out_features // (3 * heads)
    if hasattr(attn, "attn_dim"):
        attn.attn_dim = heads * attn.head_dim
    attn.scale = attn.head_dim**-0.5


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
    """Structural pruning of timm ViT/DeiT heads and MLP channels (torch-pruning DepGraph)."""

    name = "torch_pruning"
    stage = "prune"

    def __init__(self, round_to: int = 8, taylor_batches: int = 4) -> None:
        """``round_to``: kept MLP widths are multiples of it (GPU GEMM alignment; 1 disables).
        ``taylor_batches``: training batches whose gradients rank channels for Taylor
        importance (a few suffice: the ranking, not the values, matters)."""
        if round_to < 1:
            raise ValueError(f"round_to must be >= 1, got {round_to}")
        if taylor_batches < 1:
            raise ValueError(f"taylor_batches must be >= 1, got {taylor_batches}")
        self.round_to = round_to
        self.taylor_batches = taylor_batches

    def search_space(self) -> Sequence[ParamSpec]:
        """Method, ratio and importance; ratio and importance only matter when pruning."""
        when = {"prune.method": list(_PRUNING_METHODS)}
        return [
            ParamSpec(
                "prune.method",
                "categorical",
                default="none",  # the baseline: nothing removed
                choices=METHODS,
                help="what to remove: attention heads, MLP hidden channels, both, or nothing",
            ),
            ParamSpec(
                "prune.ratio",
                "float",
                default=0.3,
                low=RATIO_RANGE[0],
                high=RATIO_RANGE[1],
                when=when,
                help="fraction of heads per block / MLP hidden channels to remove",
            ),
            ParamSpec(
                "prune.importance",
                "categorical",
                default="magnitude",
                choices=IMPORTANCES,
                when=when,
                help="ranking: L2 weight magnitude, or first-order Taylor |w * dL/dw|",
            ),
        ]

    def apply(self, subject: Any, params: Mapping[str, Any], ctx: StageContext) -> nn.Module:
        """Return a pruned **copy** of ``subject`` (the caller's model is left intact, so a
        baseline or teacher held elsewhere is unaffected); ``prune.method="none"`` returns
        ``subject`` itself."""
        method = params["prune.method"]
        if method == "none":
            return subject
        ratio = float(params["prune.ratio"])
        importance = params["prune.importance"]
        if not isinstance(subject, nn.Module):
            raise PruningUnsupported(
                f"{type(subject).__name__}: the prune stage takes a torch nn.Module"
            )
        model = copy.deepcopy(subject)
        device = model_device(model)
        batches = (
            iter_batches(ctx.train_loader, self.taylor_batches, device)
            if importance == "taylor"
            else None
        )
        before = count_params(model)
        started = time.perf_counter()
        prune_vit(
            model,
            method=method,
            ratio=ratio,
            example=example_input(ctx.input_shape, device),
            importance=importance,
            batches=batches,
            round_to=self.round_to,
        )
        after = count_params(model)
        ctx.log.info(
            "torch_pruning %s ratio=%.3f importance=%s: params %d -> %d (%.1f%%) in %.2fs",
            method,
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
