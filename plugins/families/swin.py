"""Swin (timm ``SwinTransformer``): heads of every ``WindowAttention`` with their column of the
relative position bias table, hidden widths of every ``Mlp``. Windows and shifts are untouched
(the stage widths never change), so window attention stays valid. Swin V2 (``swinv2_*``: a
continuous position bias MLP and per-head logit scales) is not covered."""

from __future__ import annotations

from torch import nn

from optimizer.plugin_api.family import ModelFamilyBase, Prunable

from ._blocks import fused_qkv_heads, hidden_widths, instances


class SwinFamily(ModelFamilyBase):
    name = "swin"
    model_names = ("swin_*",)

    def prunable(self, model: nn.Module) -> Prunable:
        from timm.layers import Mlp
        from timm.models.swin_transformer import WindowAttention

        heads = [
            fused_qkv_heads(attn, [(attn, "relative_position_bias_table", 1)])
            for attn in instances(model, WindowAttention)
        ]
        return Prunable(heads, hidden_widths(model, [Mlp], "fc1"), "it has no WindowAttention")


SWIN = SwinFamily()
