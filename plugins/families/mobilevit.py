"""MobileViT v1 and v2 (timm ``ByobNet`` with MobileViT blocks): the hidden width of every
inverted-residual (MobileNet) block's expansion conv and of every transformer MLP; the heads of
v1's transformer blocks (timm ``Attention``). v2's separable self-attention has one head: it has
none to remove."""

from __future__ import annotations

from torch import nn

from optimizer.plugin_api.family import ModelFamilyBase, Prunable

from ._blocks import hidden_widths
from .vit import attention_heads


class MobileVitFamily(ModelFamilyBase):
    name = "mobilevit"
    model_names = ("mobilevit_*", "mobilevitv2_*")

    def prunable(self, model: nn.Module) -> Prunable:
        from timm.layers import ConvMlp, Mlp
        from timm.models.byobnet import BottleneckBlock
        from timm.models.mobilevit import LinearSelfAttention

        heads, no_heads = attention_heads(model)
        if any(isinstance(m, LinearSelfAttention) for m in model.modules()):
            no_heads = "MobileViT v2's separable self-attention (LinearSelfAttention) has one head"
        channels = hidden_widths(model, [BottleneckBlock], "conv1_1x1") + hidden_widths(
            model, [Mlp, ConvMlp], "fc1"
        )
        return Prunable(heads, channels, no_heads)


MOBILEVIT = MobileVitFamily()
