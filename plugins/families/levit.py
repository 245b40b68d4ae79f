"""LeViT (timm ``Levit``, linear and conv variants): the heads of every stage attention with
their attention-bias rows (the downsampling attentions between stages change the resolution and
stay whole), and the hidden width of every MLP. timm's LeViT uses ``nn.Hardswish``, which
exports as ``HardSwish`` (opset 14), an op TensorRT 8.2 lacks: the export uses
``x * hardsigmoid(x)``, the same function as a ``HardSigmoid`` and a ``Mul``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from optimizer.plugin_api.family import ModelFamilyBase, Prunable

from ._blocks import hidden_widths, instances, split_qkv_heads


class HardSigmoidSwish(nn.Module):
    """``x * hardsigmoid(x)``: hard swish, exported as ops TensorRT 8.2 parses."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * F.hardsigmoid(x)


class LevitFamily(ModelFamilyBase):
    name = "levit"
    model_names = ("levit_*",)

    def prunable(self, model: nn.Module) -> Prunable:
        from timm.models.levit import Attention, LevitMlp

        heads = [
            split_qkv_heads(a, [a.qkv.linear, a.qkv.bn], a.proj.ln.linear)
            for a in instances(model, Attention)
        ]
        return Prunable(heads, hidden_widths(model, [LevitMlp], "ln1"), "it has no attention")

    def prepare_export(self, model: nn.Module) -> None:
        for parent in list(model.modules()):
            for name, child in parent.named_children():
                if isinstance(child, nn.Hardswish):
                    setattr(parent, name, HardSigmoidSwish())


LEVIT = LevitFamily()
