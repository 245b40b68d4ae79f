"""The baseline trains until validation stops improving, keeps its best epoch, records how it
converged, and goes on from its last epoch when the driver dies mid-way."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from campaign_helpers import write_campaign
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from optimizer.campaign.progress import convergence_summary
from optimizer.config import load_campaign
from optimizer.plugin_api.training import train_to_plateau
from optimizer.trial.baseline import baseline_path, convergence_path, prepare_baseline
from optimizer.trial.pipeline import load_splits


def _problem(seed: int = 0) -> tuple[nn.Module, DataLoader]:
    """The same data each time; ``seed`` sets the model's weights and the shuffling."""
    inputs = torch.randn(96, 8, generator=torch.Generator().manual_seed(0))
    labels = (inputs[:, 0] > 0).long()
    loader = DataLoader(
        TensorDataset(inputs, labels),
        batch_size=16,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    torch.manual_seed(seed)
    return nn.Linear(8, 2), loader


def _loss(logits: torch.Tensor, _inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits, labels)


def test_stops_on_a_plateau_with_the_best_epochs_weights() -> None:
    model, loader = _problem()
    scores = iter([0.5, 0.8, 0.7, 0.8, 0.6, 0.9, 0.9])  # best at epoch 1, then no gain
    weights: list[dict[str, torch.Tensor]] = []

    def validate(candidate: nn.Module) -> float:
        weights.append({k: v.clone() for k, v in candidate.state_dict().items()})
        return next(scores)

    done = train_to_plateau(
        model, loader, _loss, validate, max_epochs=50, patience=3, lr=0.01, weight_decay=0.0
    )
    assert [row["val"] for row in done.history] == [0.5, 0.8, 0.7, 0.8, 0.6]
    assert (done.best_epoch, done.best_value) == (1, 0.8)
    assert done.stopped.startswith("plateau")
    for name, value in model.state_dict().items():  # epoch 1's weights, not the last epoch's
        assert torch.equal(value, weights[1][name])
    assert not torch.equal(model.weight, weights[-1]["weight"])
    # The rate was cut when validation stalled for half the patience.
    assert done.history[-1]["lr"] < max(row["lr"] for row in done.history)


def test_runs_to_max_epochs_while_it_still_improves() -> None:
    model, loader = _problem()
    scores = iter(range(100))
    done = train_to_plateau(
        model, loader, _loss, lambda _m: next(scores), max_epochs=4, patience=2, lr=0.01
    )
    assert len(done.history) == 4 and done.best_epoch == 3
    assert done.stopped == "max_epochs: 4 epochs ran"


def _accuracy(loader: DataLoader):
    inputs, labels = loader.dataset.tensors

    @torch.no_grad()
    def validate(model: nn.Module) -> float:
        return float((model(inputs).argmax(1) == labels).float().mean())

    return validate


class _Killed(Exception):
    pass


def test_resumed_training_ends_where_an_uninterrupted_one_does() -> None:
    model, loader = _problem()
    whole = train_to_plateau(
        model, loader, _loss, _accuracy(loader), max_epochs=8, patience=8, lr=0.05
    )

    saved: dict = {}

    def killed_after_epoch_2(epoch, _loss_value, _done, state) -> None:
        saved.update(torch.load(_roundtrip(state), weights_only=True))
        if epoch == 2:
            raise _Killed

    first, loader = _problem()
    with pytest.raises(_Killed):
        train_to_plateau(
            first,
            loader,
            _loss,
            _accuracy(loader),
            max_epochs=8,
            patience=8,
            lr=0.05,
            on_epoch=killed_after_epoch_2,
        )
    second, loader = _problem(seed=1)  # other weights and shuffling: the state replaces both
    again = train_to_plateau(
        second, loader, _loss, _accuracy(loader), max_epochs=8, patience=8, lr=0.05, resume=saved
    )
    assert [row["val"] for row in again.history] == [row["val"] for row in whole.history]
    for name, value in model.state_dict().items():
        assert torch.allclose(second.state_dict()[name], value)


def _roundtrip(state: dict):
    """The state as the baseline saves it (``torch.save``, read back with weights_only)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


@pytest.mark.slow
def test_baseline_resumes_from_its_last_epoch_and_then_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    campaign = load_campaign(
        write_campaign(tmp_path, **{"model.train.epochs": 4, "model.train.patience": 3})
    )
    splits = load_splits(campaign)
    seen: list[int] = []

    def killed_after_epoch_1(epoch: int, total: int, summary: str) -> None:
        seen.append(epoch)
        assert total == 4 and summary.startswith("loss ")
        if epoch == 1:
            raise _Killed

    with pytest.raises(_Killed):
        prepare_baseline(campaign, splits, killed_after_epoch_1)
    path = baseline_path(campaign)
    assert not path.exists() and path.with_suffix(".partial.pt").exists()

    path_again, trained = prepare_baseline(campaign, splits, lambda e, _t, _s: seen.append(e))
    assert (path_again, trained) == (path, True)
    assert seen[:2] == [0, 1] and seen[2] == 2  # went on from epoch 2, not from the start
    record = json.loads(convergence_path(path).read_text())
    assert record["epochs_run"] == len(record["history"]) == seen[-1] + 1
    assert record["val_accuracy"] == max(row["val"] for row in record["history"])
    assert "stopped by" in convergence_summary(record)
    assert not path.with_suffix(".partial.pt").exists()

    assert prepare_baseline(campaign, splits, lambda *_: pytest.fail("retrained")) == (path, False)
