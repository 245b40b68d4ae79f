"""vitopt plugin 'lowrank': low-rank factorisation of a ViT's MLP layers (prune stage).

Each transformer block's MLP is two dense layers, ``fc1`` (d → 4d) and ``fc2`` (4d → d): about
two thirds of a ViT's weights and multiply-adds. A truncated SVD, ``W ≈ U_r · diag(s_r) · V_rᵀ``,
replaces one ``nn.Linear`` of ``d_in · d_out`` weights by two plain ``nn.Linear`` layers
(``d_in → r`` without bias, ``r → d_out`` with the original bias) holding ``r · (d_in + d_out)``:
fewer weights and multiply-adds whenever ``r < d_in · d_out / (d_in + d_out)``, which is 0.8 of
the full rank for a 1:4 MLP layer. The model stays a stack of ordinary layers, so it exports to
ONNX as two MatMuls per layer and every runtime runs it; for small ranks it is faster.

It runs in the prune stage, after the built-in structural pruning, so the candidate is measured
on the device before any fine-tuning, and the train stage (``train.epochs``, ``distill.*``)
can recover the accuracy the approximation costs.

Parameters: ``lowrank.enabled`` (default false: the model is left as it is, as the baseline
trial requires) and ``lowrank.rank_ratio``, the kept rank as a fraction of the full rank
``min(d_in, d_out)``, sampled only when enabled. Ranks are rounded down to a multiple of
``round_to`` (8), like the built-in pruning's widths, for the GPU's matrix units.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

from optimizer.plugin_api import ParamSpec, StageContext, hookimpl

ENABLED = "lowrank.enabled"
RANK_RATIO = "lowrank.rank_ratio"
LAYERS = ("fc1", "fc2")


def kept_rank(in_features: int, out_features: int, ratio: float, round_to: int = 8) -> int:
    """``ratio`` of the full rank ``min(in, out)``, rounded down to a multiple of ``round_to``
    (at least one multiple)."""
    step = max(1, round_to)
    full = min(in_features, out_features)
    return max(math.floor(ratio * full / step) * step, min(step, full))


def factorise(linear: Any, rank: int) -> Any:
    """The two-layer, rank-``rank`` approximation of ``linear`` (an ``nn.Linear``) by truncated
    SVD: ``nn.Sequential(Linear(in, rank, bias=False), Linear(rank, out))``. The singular
    values are split evenly (``√s`` on each side) so both factors have a similar scale."""
    import torch
    from torch import nn

    weight = linear.weight.detach()
    u, s, vh = torch.linalg.svd(weight.float(), full_matrices=False)
    root = s[:rank].sqrt()
    first = nn.Linear(linear.in_features, rank, bias=False)
    second = nn.Linear(rank, linear.out_features, bias=linear.bias is not None)
    with torch.no_grad():
        first.weight.copy_(root[:, None] * vh[:rank])
        second.weight.copy_(u[:, :rank] * root[None, :])
        if linear.bias is not None:
            second.bias.copy_(linear.bias.detach())
    return nn.Sequential(first, second).to(device=weight.device, dtype=weight.dtype)


def factorise_mlps(model: Any, ratio: float, round_to: int = 8) -> list[str]:
    """Replace, **in place**, every MLP's ``fc1``/``fc2`` ``nn.Linear`` (timm's ``Mlp``, as in
    ``blocks[i].mlp`` of a ViT/DeiT) by its low-rank factorisation where that saves weights.
    Returns the names of the layers replaced; ValueError when the model has no such MLP."""
    from torch import nn

    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"{RANK_RATIO} must be in (0, 1], got {ratio}")
    mlps = [
        (name, module)
        for name, module in model.named_modules()
        if all(isinstance(getattr(module, attr, None), nn.Linear) for attr in LAYERS)
    ]
    if not mlps:
        raise ValueError(
            f"{type(model).__name__} has no MLP with fc1/fc2 nn.Linear layers "
            "(lowrank factorises timm ViT blocks' mlp.fc1 and mlp.fc2)"
        )
    replaced = []
    for name, mlp in mlps:
        for attr in LAYERS:
            layer = getattr(mlp, attr)
            rank = kept_rank(layer.in_features, layer.out_features, ratio, round_to)
            if rank * (layer.in_features + layer.out_features) >= layer.weight.numel():
                continue  # no smaller than the dense layer: leave it
            setattr(mlp, attr, factorise(layer, rank))
            replaced.append(f"{name}.{attr}")
    return replaced


class LowRank:
    """Low-rank (truncated SVD) factorisation of a ViT's MLP layers."""

    name = "lowrank"
    stage = "prune"

    def __init__(self, round_to: int = 8) -> None:
        """``round_to``: kept ranks are multiples of it (GPU alignment; 1 disables)."""
        if round_to < 1:
            raise ValueError(f"round_to must be >= 1, got {round_to}")
        self.round_to = round_to

    def search_space(self) -> Sequence[ParamSpec]:
        """Whether to factorise, and the kept rank (only sampled when enabled)."""
        return [
            ParamSpec(
                ENABLED,
                "bool",
                default=False,  # the baseline: the MLPs stay dense
                help="factorise each MLP's fc1/fc2 into two low-rank layers (truncated SVD)",
            ),
            ParamSpec(
                RANK_RATIO,
                "float",
                default=0.5,
                low=0.1,
                high=0.75,
                when={ENABLED: [True]},
                help="kept rank as a fraction of min(in, out) (0.8 is break-even for fc1/fc2)",
            ),
        ]

    def apply(self, subject: Any, params: Mapping[str, Any], ctx: StageContext) -> Any:
        """A factorised copy of the model when enabled; the model itself otherwise."""
        if not params.get(ENABLED, False):
            return subject  # the default: leave the model as it is
        ratio = float(params.get(RANK_RATIO, 0.5))
        model = copy.deepcopy(subject)  # the caller's model stays as it was
        before = sum(p.numel() for p in model.parameters())
        replaced = factorise_mlps(model, ratio, self.round_to)
        after = sum(p.numel() for p in model.parameters())
        ctx.log.info(
            "lowrank rank_ratio=%.3f: %d layers factorised, params %d -> %d (%.1f%%)",
            ratio,
            len(replaced),
            before,
            after,
            100.0 * after / max(before, 1),
        )
        return model


@hookimpl
def vitopt_register_techniques() -> list[LowRank]:
    """Called by vitopt in every process that builds its plugin manager: keep it cheap."""
    return [LowRank()]
