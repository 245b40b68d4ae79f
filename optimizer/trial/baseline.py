"""The uncompressed baseline model: built from timm, loaded from a local checkpoint or trained
once on the campaign's data and cached under ``runs/<name>/baseline/`` by a hash of everything
that shapes it, so re-running or resuming a campaign never retrains it."""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn
from torch.utils.data import DataLoader

from optimizer.config import Campaign, CampaignError, ModelConfig
from optimizer.plugin_api.training import train_epochs, validation_metric


def campaign_task(campaign: Campaign) -> Any:
    """The task object (``task.name``) the campaign's plugins register."""
    from optimizer.plugin_host.manager import build_plugin_manager, registered

    manager = build_plugin_manager(campaign.plugins.disable)
    return registered(manager, "vitopt_register_tasks", campaign.task.name, "task.name")


def check_timm_model(name: str, key: str = "model.name") -> None:
    """CampaignError unless timm has a model ``name`` (naming the closest it has)."""
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        raise CampaignError(
            f"{key}: timm has no model {name!r}"
            + (f" (close: {', '.join(close)})" if close else " (timm.list_models() lists them)")
        )


def build_model(
    config: ModelConfig, num_classes: int, image_size: int, task: Any = None
) -> nn.Module:
    """The untrained model: ``task.build_model(config, num_classes, image_size)`` when the task
    defines its own architecture (segmentation: backbone + decode head), else a timm model with
    a ``num_classes`` head."""
    if getattr(task, "build_model", None) is not None:
        return task.build_model(config, num_classes, image_size)
    check_timm_model(config.name)
    kwargs: dict[str, Any] = {"num_classes": num_classes, **config.kwargs}
    kwargs.setdefault("img_size", image_size)
    try:
        return timm.create_model(config.name, pretrained=config.pretrained, **kwargs)
    except TypeError:  # a model family without img_size (CNNs) takes any input size
        kwargs.pop("img_size")
        return timm.create_model(config.name, pretrained=config.pretrained, **kwargs)


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


def load_model(campaign: Campaign, num_classes: int, checkpoint: Path) -> nn.Module:
    model = build_model(
        campaign.model, num_classes, campaign.data.image_size, campaign_task(campaign)
    )
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def load_teacher(campaign: Campaign, num_classes: int, baseline: nn.Module) -> nn.Module:
    """The distillation teacher: the unpruned baseline unless the campaign names another
    model (with its own checkpoint, trained for the same classes)."""
    teacher = campaign.teacher
    if teacher.name is None:
        return copy.deepcopy(baseline).eval()
    config = ModelConfig(name=teacher.name, kwargs=teacher.kwargs)
    model = build_model(config, num_classes, campaign.data.image_size, campaign_task(campaign))
    model.load_state_dict(torch.load(teacher.checkpoint, map_location="cpu", weights_only=True))
    return model.eval()


def prepare_baseline(
    campaign: Campaign,
    splits: Any,
    on_epoch: Callable[[int, int, float], None] | None = None,
) -> tuple[Path, bool]:
    """Return (checkpoint path, whether it was trained now)."""
    path = baseline_path(campaign)
    if path.exists():
        return path, False
    if campaign.model.checkpoint is not None:
        raise FileNotFoundError(f"model.checkpoint {path} does not exist")
    torch.manual_seed(campaign.search.seed)
    # As many threads as a trial gets: more oversubscribe a shared machine and crawl.
    torch.set_num_threads(campaign.execution.torch_threads)
    task = campaign_task(campaign)
    model = build_model(campaign.model, splits.num_classes, campaign.data.image_size, task)
    train = campaign.model.train
    loader = DataLoader(
        splits.train,
        batch_size=train.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(campaign.search.seed),
    )
    train_epochs(
        model,
        loader,
        lambda logits, _inputs, labels: task.loss(logits, labels),
        epochs=train.epochs,
        lr=train.lr,
        weight_decay=train.weight_decay,
        on_epoch=(lambda epoch, loss: on_epoch(epoch, train.epochs, loss)) if on_epoch else None,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)
    accuracy = validation_metric(task, model, DataLoader(splits.val, batch_size=256))
    path.with_suffix(".json").write_text(json.dumps({"val_accuracy": accuracy}))
    return path, True
