"""EfficientFormer V1 and V2: the hidden widths of the Meta4D (conv) blocks' MLPs and of the
Meta3D (token) blocks' MLPs; the heads of V1's Meta3D attention with their attention-bias rows.
V2's ``Attention2d`` mixes its heads with talking-head convs, so removing one is not a
slice: V2 has no heads to remove. V1's attention biases are fixed at a 7x7 last stage, so V1
takes 224-pixel inputs only."""

from __future__ import annotations

from torch import nn

from optimizer.plugin_api.family import ModelFamilyBase, Prunable

from ._blocks import hidden_widths, instances, split_qkv_heads


class EfficientFormerFamily(ModelFamilyBase):
    name = "efficientformer"
    model_names = ("efficientformer_*", "efficientformerv2_*")

    def prunable(self, model: nn.Module) -> Prunable:
        from timm.layers import Mlp
        from timm.models import efficientformer as v1
        from timm.models import efficientformer_v2 as v2

        heads = [split_qkv_heads(a, [a.qkv], a.proj) for a in instances(model, v1.Attention)]
        no_heads = "it has no Meta3D attention"
        if any(isinstance(m, v2.Attention2d) for m in model.modules()):
            no_heads = "EfficientFormerV2's Attention2d mixes its heads (talking-head convs)"
        mlps = [v1.ConvMlpWithNorm, v2.ConvMlpWithNorm, Mlp]
        return Prunable(heads, hidden_widths(model, mlps, "fc1"), no_heads)


EFFICIENTFORMER = EfficientFormerFamily()
