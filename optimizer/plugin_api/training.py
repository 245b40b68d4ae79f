"""The training loops shared by baseline training and the fine-tuning techniques, so every model
in a campaign is trained the same way: AdamW, and

- ``train_epochs``: a fixed number of epochs on a one-cycle schedule (20% warm-up), which ViTs
  trained from little data need (measured on the demo baseline, 12 epochs: 85.5% validation
  top-1 against 76.6% with a plain cosine decay): fine-tuning, whose length the search picks;
- ``train_to_plateau``: until validation stops improving (a short linear warm-up, the rate cut
  when validation stalls, stopped after ``patience`` epochs without a gain, the best epoch's
  weights kept): the baseline, which must converge before anything is compared with it."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Loader = Iterable[tuple[torch.Tensor, torch.Tensor]]

#: ``train_to_plateau``'s warm-up, capped at a fifth of its epochs.
WARMUP_EPOCHS = 3
#: How far ``train_to_plateau`` cuts the learning rate each time validation has stalled for
#: half its patience (so a cut is tried before it stops).
PLATEAU_FACTOR = 0.2


def _epoch(
    model: nn.Module,
    loader: Loader,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    after_step: Callable[[], None],
) -> float:
    """One pass over ``loader``; the mean training loss."""
    model.train()
    total, count = 0.0, 0
    for inputs, labels in loader:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(inputs), inputs, labels)
        loss.backward()
        optimizer.step()
        after_step()
        total += float(loss.detach()) * len(labels)
        count += len(labels)
    model.eval()
    return total / max(count, 1)


def train_epochs(
    model: nn.Module,
    loader: Loader,
    loss_fn: LossFn,
    *,
    epochs: int,
    lr: float,
    weight_decay: float = 0.05,
    on_epoch: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train in place; ``loss_fn(logits, inputs, labels)`` (inputs let a distillation loss run
    its teacher). Returns the mean training loss per epoch; ``on_epoch(epoch, mean_loss)`` runs
    after each epoch (validation and pruning decisions live there)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    # OneCycleLR divides by its warm-up length (0.2 * total - 1): under 6 steps that is zero
    # and it raises, so a tiny loader gets a schedule 6 steps long (never fully stepped).
    steps = max(6, epochs * len(loader))  # type: ignore[arg-type]
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=steps, pct_start=0.2
    )
    losses = []
    for epoch in range(epochs):
        losses.append(_epoch(model, loader, loss_fn, optimizer, schedule.step))
        if on_epoch is not None:
            on_epoch(epoch, losses[-1])
    return losses


@dataclass
class Convergence:
    """How ``train_to_plateau`` went: one row per epoch (``epoch``, ``loss``, ``val``, ``lr``),
    the best epoch (whose weights the model holds at the end) and why it stopped. Epochs are
    counted from 0 in the rows and ``best_epoch``, from 1 in the messages."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_value: float = float("-inf")
    stopped: str = ""

    def record(self) -> dict[str, Any]:
        return {
            "val_accuracy": self.best_value,
            "best_epoch": self.best_epoch,
            "epochs_run": len(self.history),
            "stopped": self.stopped,
            "history": self.history,
        }


def train_to_plateau(
    model: nn.Module,
    loader: Loader,
    loss_fn: LossFn,
    validate: Callable[[nn.Module], float],
    *,
    max_epochs: int,
    patience: int,
    lr: float,
    weight_decay: float = 0.05,
    resume: dict[str, Any] | None = None,
    on_epoch: Callable[[int, float, Convergence, dict[str, Any]], None] | None = None,
) -> Convergence:
    """Train in place until ``validate(model)`` (higher is better) has not improved for
    ``patience`` epochs, or ``max_epochs`` ran; the model ends with its best
    epoch's weights. ``on_epoch(epoch, loss, convergence, state)`` runs after each epoch with
    everything needed to go on from there: pass that ``state`` back as ``resume`` and training
    continues as if it had not stopped (the caller saves it; a loader that shuffles with a
    ``torch.Generator`` has the generator's state saved too)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    warmup_steps = min(WARMUP_EPOCHS, max_epochs // 5) * len(loader)  # type: ignore[arg-type]
    warmup = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    )
    cut_every = max(1, patience // 2)
    generator = getattr(getattr(loader, "sampler", None), "generator", None)
    done = Convergence()
    best_state = copy.deepcopy(model.state_dict())
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        warmup.load_state_dict(resume["warmup"])
        best_state = resume["best_model"]
        done = Convergence(**resume["convergence"])
        if generator is not None:
            generator.set_state(resume["generator"])

    def after_step() -> None:
        if warmup.last_epoch < warmup_steps:
            warmup.step()

    for epoch in range(len(done.history), max_epochs):
        loss = _epoch(model, loader, loss_fn, optimizer, after_step)
        value = float(validate(model))
        done.history.append(
            {"epoch": epoch, "loss": loss, "val": value, "lr": optimizer.param_groups[0]["lr"]}
        )
        if value > done.best_value:
            done.best_epoch, done.best_value = epoch, value
            best_state = copy.deepcopy(model.state_dict())
        stalled = epoch - done.best_epoch
        if stalled and stalled % cut_every == 0 and warmup.last_epoch >= warmup_steps:
            for group in optimizer.param_groups:
                group["lr"] *= PLATEAU_FACTOR
        if epoch - done.best_epoch >= patience:
            done.stopped = (
                f"plateau: no validation gain over {done.best_value:.4f} (epoch "
                f"{done.best_epoch + 1}) in {patience} epochs"
            )
        elif epoch + 1 == max_epochs:
            done.stopped = f"max_epochs: {max_epochs} epochs ran"
        if on_epoch is not None:
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "warmup": warmup.state_dict(),
                "best_model": best_state,
                "convergence": vars(done),
                "generator": generator.get_state() if generator is not None else None,
            }
            on_epoch(epoch, loss, done, state)
        if done.stopped:
            break
    model.load_state_dict(best_state)
    model.eval()
    return done


@torch.no_grad()
def torch_accuracy(model: nn.Module, loader: Loader) -> float:
    model.eval()
    correct = total = 0
    for inputs, labels in loader:
        correct += int((model(inputs).argmax(dim=1) == labels).sum())
        total += len(labels)
    return correct / max(total, 1)
