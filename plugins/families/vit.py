"""ViT and DeiT (timm ``VisionTransformer``): heads of every ``Attention``, hidden widths of every
``Mlp``, whole blocks of its ``blocks`` stack; a decode head takes the token maps of evenly
spaced blocks."""

from __future__ import annotations

import torch
from torch import nn

from optimizer.plugin_api.family import MAX_DECODE_LEVELS, ModelFamilyBase, Prunable

from ._blocks import fused_qkv_heads, hidden_widths, instances


def level_indices(depth: int, levels: int = MAX_DECODE_LEVELS) -> list[int]:
    """Blocks whose outputs feed the decoder: ``levels`` evenly spaced ones, the last included
    (depth 12 → 2, 5, 8, 11)."""
    levels = max(1, min(levels, depth))
    return sorted({round((k + 1) * depth / levels) - 1 for k in range(levels)})


def attention_heads(model: nn.Module) -> tuple[list, str]:
    """The heads of timm ``Attention`` blocks (ViT's, MobileViT's transformers) and, where there
    are none to prune, why."""
    from timm.layers import Attention

    blocks = list(instances(model, Attention))
    plain = [a for a in blocks if a.gate is None and isinstance(a.norm, nn.Identity)]
    if blocks and not plain:
        return [], (
            "gated timm Attention (gated=True) or scale_norm is not supported for head pruning; "
            "use prune.method='mlp'"
        )
    return [fused_qkv_heads(a) for a in plain], "it has no timm Attention blocks"


class VisionTransformerFamily(ModelFamilyBase):
    name = "vit"
    model_names = ("vit_*", "deit_*")

    def prunable(self, model: nn.Module) -> Prunable:
        from timm.layers import Mlp
        from timm.models.vision_transformer import VisionTransformer

        heads, no_heads = attention_heads(model)
        stacks = [vit.blocks for vit in instances(model, VisionTransformer)]
        return Prunable(heads, hidden_widths(model, [Mlp], "fc1"), no_heads, stacks)

    def features(self, backbone: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        """The token maps (prefix tokens dropped) of :func:`level_indices`' blocks, the last
        one after the final norm."""
        bb = backbone
        x = bb.norm_pre(bb.patch_drop(bb._pos_embed(bb.patch_embed(x))))
        h, w = bb.patch_embed.grid_size
        indices = level_indices(len(bb.blocks))
        out = []
        for index, block in enumerate(bb.blocks[: indices[-1] + 1]):
            x = block(x)
            if index in indices:
                tokens = (bb.norm(x) if index == indices[-1] else x)[:, bb.num_prefix_tokens :]
                out.append(tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w))
        return out


VIT = VisionTransformerFamily()
