"""The uncompressed baseline model: built from timm, loaded from a local checkpoint or trained
once on the campaign's data and cached under ``runs/<name>/baseline/`` by a hash of everything
that shapes it, so re-running or resuming a campaign never retrains it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from optimizer.config import Campaign, ModelConfig
from optimizer.plugin_api.task import Task, build_task_model
from optimizer.plugin_api.training import Convergence, train_epochs, train_to_plateau
from optimizer.plugin_host.registry import plugin_registry


def campaign_task(campaign: Campaign) -> Task:
    """The task object (``task.name``) the campaign's plugins register."""
    return plugin_registry(campaign.plugins.disable).task(campaign.task.name)


# Data settings that do not change the trained baseline (they shape trials only).
_NOT_IN_BASELINE = {"calibration_size", "calibration_method", "batch_size"}


def baseline_key(campaign: Campaign) -> str:
    shape = {
        "model": campaign.model.model_dump(mode="json"),
        "data": campaign.data.model_dump(mode="json", exclude=_NOT_IN_BASELINE),
        "seed": campaign.search.seed,
    }
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


def baseline_path(campaign: Campaign) -> Path:
    if campaign.model.checkpoint is not None:
        return Path(campaign.model.checkpoint)
    return campaign.run_dir / "baseline" / f"{baseline_key(campaign)}.pt"


def build_model(campaign: Campaign, config: Any, num_classes: int) -> nn.Module:
    """The model of ``config`` (the campaign's ``model``, or its teacher's), built by the
    campaign's task with the family that covers its name."""
    registry = plugin_registry(campaign.plugins.disable)
    return build_task_model(
        registry.task(campaign.task.name),
        config,
        num_classes,
        campaign.data.image_size,
        registry.model_family(config.name),
    )


def load_model(campaign: Campaign, num_classes: int, checkpoint: Path) -> nn.Module:
    model = build_model(campaign, campaign.model, num_classes)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def load_teacher(campaign: Campaign, num_classes: int, checkpoint: Path) -> nn.Module:
    """The distillation teacher: the unpruned baseline (read again from its ``checkpoint``: the
    trial's own copy may be pruned in place by then) unless the campaign names another model
    (with its own checkpoint, trained for the same classes)."""
    teacher = campaign.teacher
    if teacher.name is None:
        return load_model(campaign, num_classes, checkpoint)
    config = ModelConfig(name=teacher.name, kwargs=teacher.kwargs)
    model = build_model(campaign, config, num_classes)
    model.load_state_dict(torch.load(teacher.checkpoint, map_location="cpu", weights_only=True))
    return model.eval()


def convergence_path(checkpoint: Path) -> Path:
    """Where a trained baseline's record of how it converged lies (beside its checkpoint)."""
    return checkpoint.with_suffix(".json")


def _save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def prepare_baseline(
    campaign: Campaign,
    splits: Any,
    on_epoch: Callable[[int, int, str], None] | None = None,
) -> tuple[Path, bool]:
    """Return (checkpoint path, whether it was trained now). Training saves its state after
    every epoch (``<key>.partial.pt``), so a driver killed mid-way goes on from its last epoch;
    ``on_epoch(epoch, max_epochs, summary)`` shows progress."""
    path = baseline_path(campaign)
    if path.exists():
        return path, False
    if campaign.model.checkpoint is not None:
        raise FileNotFoundError(f"model.checkpoint {path} does not exist")
    torch.manual_seed(campaign.search.seed)
    # As many threads as a trial gets: more oversubscribe a shared machine and crawl.
    torch.set_num_threads(campaign.execution.torch_threads)
    task = campaign_task(campaign)
    model = build_model(campaign, campaign.model, splits.num_classes)
    train = campaign.model.train
    loader = DataLoader(
        splits.train,
        batch_size=train.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(campaign.search.seed),
    )
    path.parent.mkdir(parents=True, exist_ok=True)

    def loss(logits: torch.Tensor, _inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return task.loss(logits, labels)

    def validate(candidate: nn.Module) -> float:
        return task.torch_metric(candidate, DataLoader(splits.val, batch_size=256))

    rates = {"lr": train.lr, "weight_decay": train.weight_decay}
    if train.patience is None:
        losses = train_epochs(
            model,
            loader,
            loss,
            epochs=train.epochs,
            **rates,
            on_epoch=(
                (lambda epoch, value: on_epoch(epoch, train.epochs, f"loss {value:.3f}"))
                if on_epoch
                else None
            ),
        )
        record = {
            "val_accuracy": validate(model),
            "epochs_run": len(losses),
            "stopped": f"fixed: {train.epochs} epochs (patience: null)",
        }
    else:
        partial = path.with_suffix(".partial.pt")

        def saved(epoch: int, value: float, done: Convergence, state: dict[str, Any]) -> None:
            _save(state, partial)
            if on_epoch is not None:
                on_epoch(
                    epoch,
                    train.epochs,
                    f"loss {value:.3f} · val {done.history[-1]['val']:.4f} · best "
                    f"{done.best_value:.4f} at epoch {done.best_epoch + 1}",
                )

        resume = torch.load(partial, weights_only=True) if partial.exists() else None
        done = train_to_plateau(
            model,
            loader,
            loss,
            validate,
            max_epochs=train.epochs,
            patience=train.patience,
            **rates,
            resume=resume,
            on_epoch=saved,
        )
        record = done.record()
    _save(model.state_dict(), path)
    convergence_path(path).write_text(json.dumps(record, indent=1))
    if train.patience is not None:
        partial.unlink()
    return path, True
