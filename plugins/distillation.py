"""Fine-tuning with logit knowledge distillation from the teacher (the unpruned baseline by
default): a pruned model recovers accuracy faster when it matches the teacher's soft labels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from optimizer.plugin_api import ParamSpec, StageContext, hookimpl
from optimizer.plugin_api.training import train_epochs

_ENABLED = {"distill.enabled": [True]}


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
    ignore_index: int = 255,
) -> torch.Tensor:
    """Hinton et al.: alpha · T² · KL(teacher_T ‖ student_T) + (1 - alpha) · CE(labels).
    The T² keeps the soft term's gradient scale independent of the temperature.

    Dense logits ``(N, C, H, W)`` with ``(N, H, W)`` labels (segmentation) are distilled pixel
    by pixel: flattened to ``(N·H·W, C)``, pixels labelled ``ignore_index`` dropped, the KL
    averaged over the remaining pixels."""
    if student_logits.dim() == 4:
        keep = labels.reshape(-1) != ignore_index
        channels = student_logits.shape[1]
        student_logits = student_logits.permute(0, 2, 3, 1).reshape(-1, channels)[keep]
        teacher_logits = teacher_logits.permute(0, 2, 3, 1).reshape(-1, channels)[keep]
        labels = labels.reshape(-1)[keep]
        if labels.numel() == 0:  # every pixel ignored: nothing to learn from
            return student_logits.sum() * 0.0
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * temperature**2 * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)


class KnowledgeDistillation:
    name = "kd"
    stage = "train"

    def __init__(self, max_epochs: int = 4):
        self.max_epochs = max_epochs

    def search_space(self) -> Sequence[ParamSpec]:
        return [
            ParamSpec(
                "train.epochs",
                "int",
                0,
                low=0,
                high=self.max_epochs,
                help="fine-tuning epochs after pruning (0: none)",
            ),
            ParamSpec("train.lr", "float", 5e-4, low=1e-4, high=3e-3, log=True),
            ParamSpec("distill.enabled", "bool", False, help="distil from the teacher"),
            ParamSpec("distill.temperature", "float", 4.0, low=1.0, high=8.0, when=_ENABLED),
            ParamSpec("distill.alpha", "float", 0.5, low=0.1, high=0.9, when=_ENABLED),
        ]

    def apply(self, model: nn.Module, params: Mapping[str, Any], ctx: StageContext) -> nn.Module:
        epochs = int(params["train.epochs"])
        if epochs == 0:
            return model
        teacher = ctx.teacher if params["distill.enabled"] else None
        if teacher is not None:
            teacher.eval()
            temperature, alpha = (
                float(params["distill.temperature"]),
                float(params["distill.alpha"]),
            )

        def loss_fn(logits: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor):
            if teacher is None:
                return ctx.task.loss(logits, labels)
            with torch.no_grad():
                teacher_logits = teacher(inputs)
            return kd_loss(logits, teacher_logits, labels, temperature, alpha)

        def report(epoch: int, _loss: float) -> None:
            ctx.report(epoch, ctx.task.torch_metric(model, ctx.val_loader))

        train_epochs(
            model,
            ctx.train_loader,
            loss_fn,
            epochs=epochs,
            lr=float(params["train.lr"]),
            on_epoch=report,
        )
        return model


@hookimpl
def vitopt_register_techniques() -> list[Any]:
    return [KnowledgeDistillation()]
