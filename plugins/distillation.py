"""Fine-tuning with knowledge distillation from the teacher (the unpruned baseline by default):
a pruned model recovers accuracy faster when it matches the teacher's soft labels (logit KD)
and, with ``distill.features``, the teacher's block outputs too (feature KD)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from optimizer.plugin_api import ModelFamily, ParamSpec, StageContext, hookimpl
from optimizer.plugin_api.model_stats import example_input
from optimizer.plugin_api.training import train_epochs

_ENABLED = {"distill.enabled": [True]}
#: The feature term's weight beside the logit term (each layer's error is relative to the
#: teacher's output power, so the term starts near 1 whatever the model's scale).
FEATURE_WEIGHT = 1.0


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


def feature_blocks(family: ModelFamily, model: nn.Module) -> list[nn.Module]:
    """The blocks whose outputs feature KD matches, in model order: every attention block and
    every block owning a hidden width the family prunes."""
    found = family.prunable(model)
    return [*(heads.block for heads in found.heads), *(group.block for group in found.channels)]


def matched_blocks(
    family: ModelFamily, student: nn.Module, teacher: nn.Module
) -> tuple[list[nn.Module], list[nn.Module]]:
    """``student``'s :func:`feature_blocks` and the teacher's blocks of the same names. Pruning
    narrows what is inside them, never what they output, and a depth cut drops a block without
    renaming the others, so each pairs with the teacher's block of its name (a block the
    student dropped has no partner to match)."""
    mine = feature_blocks(family, student)
    names = {module: name for name, module in student.named_modules()}
    theirs = dict(teacher.named_modules())
    missing = [names[block] for block in mine if names[block] not in theirs]
    if missing:
        raise ValueError(
            f"feature distillation: the teacher has no block named {', '.join(missing[:3])}"
        )
    return mine, [theirs[names[block]] for block in mine]


@contextlib.contextmanager
def block_outputs(
    blocks: Sequence[nn.Module], training_only: bool = False
) -> Iterator[list[torch.Tensor]]:
    """Collects each of ``blocks``' outputs, in call order, while the context is open (the
    caller empties the list between forward passes); with ``training_only``, not those of
    passes in eval mode (validation between epochs)."""
    seen: list[torch.Tensor] = []

    def collect(module: nn.Module, _args: Any, output: torch.Tensor) -> None:
        if module.training or not training_only:
            seen.append(output)

    handles = [block.register_forward_hook(collect) for block in blocks]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def feature_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over the matched blocks of ‖student − teacher‖² / ‖teacher‖² (relative MSE)."""
    if len(student) != len(teacher) or not student:
        raise ValueError(
            f"feature distillation matched {len(student)} student block outputs with "
            f"{len(teacher)} of the teacher's: they must pair one to one"
        )
    terms = []
    for mine, theirs in zip(student, teacher, strict=True):
        if mine.shape != theirs.shape:
            raise ValueError(
                f"feature distillation: a student block outputs {tuple(mine.shape)}, its "
                f"teacher's {tuple(theirs.shape)}"
            )
        terms.append(F.mse_loss(mine, theirs) / theirs.pow(2).mean().clamp_min(1e-12))
    return torch.stack(terms).mean()


def _feature_family(ctx: StageContext) -> ModelFamily:
    """The family whose rules pair the student's blocks with the teacher's."""
    if ctx.model_family is None:
        raise ValueError(
            f"{ctx.model_name}: distill.features matches blocks by a model family's rules, and "
            "no family covers this model"
        )
    return ctx.model_family


def _task_loss(ctx: StageContext):
    def loss(logits: torch.Tensor, _inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return ctx.task.loss(logits, labels)

    return loss


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
                help="fine-tuning epochs after pruning (0: none; none either when the prune "
                "stage removed nothing)",
            ),
            ParamSpec("train.lr", "float", 5e-4, low=1e-4, high=3e-3, log=True),
            ParamSpec("distill.enabled", "bool", False, help="distil from the teacher"),
            ParamSpec("distill.temperature", "float", 4.0, low=1.0, high=8.0, when=_ENABLED),
            ParamSpec("distill.alpha", "float", 0.5, low=0.1, high=0.9, when=_ENABLED),
            ParamSpec(
                "distill.features",
                "bool",
                False,
                when=_ENABLED,
                help="also match the teacher's attention and MLP block outputs (feature KD)",
            ),
        ]

    def preflight(
        self, model: nn.Module, values: Mapping[str, Sequence[Any]], ctx: StageContext
    ) -> None:
        """Refuses a campaign whose trials can run feature KD from a teacher whose blocks do
        not pair with the baseline's (another architecture named by ``teacher.name``): every
        such trial would fail on its first batch. Pruning leaves what each block outputs as it
        is, so the unpruned baseline pairs as its pruned candidates do."""
        if not (
            True in values["distill.enabled"]
            and True in values["distill.features"]
            and max(values["train.epochs"]) > 0
        ):
            return
        family = _feature_family(ctx)
        teacher = ctx.teacher
        was_training = model.training
        model.eval()
        example = example_input(ctx.input_shape)
        try:  # the unpruned baseline: its blocks and the teacher's must pair one to one
            with (
                torch.no_grad(),
                block_outputs(feature_blocks(family, model)) as mine,
                block_outputs(feature_blocks(family, teacher)) as theirs,
            ):
                model(example)
                teacher(example)
                feature_loss(mine, theirs)
        except ValueError as exc:
            raise ValueError(
                f"distill.features: {exc}; the teacher must have the student's blocks (the "
                "baseline, by default): drop teacher.name or fix distill.features to false"
            ) from exc
        finally:
            model.train(was_training)

    def apply(self, model: nn.Module, params: Mapping[str, Any], ctx: StageContext) -> nn.Module:
        epochs = int(params["train.epochs"])
        if epochs == 0:
            return model
        if ctx.macs_kept >= 1.0:
            # Nothing was removed, so there is nothing to recover: fine-tuning the converged
            # baseline only moves it off its optimum (and costs the trial its longest step).
            ctx.log.info("kd: the prune stage removed nothing, so no fine-tuning")
            return model
        teacher = ctx.teacher if params["distill.enabled"] else None
        with contextlib.ExitStack() as stack:
            loss_fn = _task_loss(ctx)
            if teacher is not None:
                teacher.eval()
                loss_fn = self._distilling(model, teacher, params, ctx, stack)

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

    @staticmethod
    def _distilling(
        model: nn.Module,
        teacher: nn.Module,
        params: Mapping[str, Any],
        ctx: StageContext,
        stack: contextlib.ExitStack,
    ):
        """The distillation loss ``(logits, inputs, labels)``; with features, hooks on both
        models that ``stack`` removes when training ends (the exported model has none)."""
        temperature, alpha = float(params["distill.temperature"]), float(params["distill.alpha"])
        features = bool(params["distill.features"])
        if features:
            students, teachers = matched_blocks(_feature_family(ctx), model, teacher)
            mine = stack.enter_context(block_outputs(students, training_only=True))
            theirs = stack.enter_context(block_outputs(teachers))

        def loss(logits: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor):
            with torch.no_grad():
                teacher_logits = teacher(inputs)
            total = kd_loss(logits, teacher_logits, labels, temperature, alpha)
            if features:
                total = total + FEATURE_WEIGHT * feature_loss(mine, theirs)
                mine.clear()  # this batch's outputs, paired; the next batch brings its own
                theirs.clear()
            return total

        return loss


@hookimpl
def vitopt_register_techniques() -> list[Any]:
    return [KnowledgeDistillation()]
