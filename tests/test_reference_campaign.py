"""The reference workload (``search_spaces/reference_vit_tiny.yaml``): it validates as shipped,
has the geometry and budget it promises, and its first two trials run end to end with tiny
settings, as ``vitopt run`` runs them."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from campaign_helpers import TRIALS, run_to_the_end, shortened
from optuna.trial import TrialState

from optimizer.config import load_campaign
from optimizer.plugin_host.registry import plugin_registry
from optimizer.trial.baseline import build_model

REFERENCE = Path(__file__).resolve().parent.parent / "search_spaces" / "reference_vit_tiny.yaml"


def test_the_reference_campaign_is_a_vit_tiny_searched_within_one_point() -> None:
    campaign = load_campaign(REFERENCE)
    assert campaign.objective.max_accuracy_drop == 0.01
    assert campaign.search.trials == 40 and campaign.model.train.patience is not None
    model = build_model(campaign, campaign.model, 10)
    assert len(model.blocks) == 12 and model.embed_dim == 192
    assert {block.attn.num_heads for block in model.blocks} == {3}
    assert model.patch_embed.num_patches == 64  # 32 px in 4 px patches
    # Every technique is searched: pruning always cuts, fine-tuning distils, int8 is offered.
    space = campaign.search.space
    assert "none" not in space["prune.method"].choices and space["train.epochs"].low >= 1
    assert space["distill.enabled"].fixed is True
    assert "quantize.precision" not in space
    stages = {entry.technique.stage for entry in plugin_registry().techniques}
    assert stages == {"prune", "train", "quantize"}


@pytest.mark.slow
def test_its_first_two_trials_run_end_to_end_with_tiny_settings(tmp_path: Path) -> None:
    path = shortened(REFERENCE, tmp_path)
    data = yaml.safe_load(path.read_text())
    data["model"]["kwargs"].update(depth=2, embed_dim=48)  # the same 3 heads, 16 wide
    data["data"]["image_size"] = 16
    path.write_text(yaml.safe_dump(data))
    summary = run_to_the_end(path, tmp_path)
    assert summary["trials"]["complete"] == TRIALS, summary

    study = optuna.load_study(
        study_name=data["name"], storage=f"sqlite:///{tmp_path}/runs/{data['name']}/study.db"
    )
    assert study.user_attrs["baseline_training"]["epochs_run"] == 2
    baseline, candidate = study.trials
    assert baseline.state == candidate.state == TrialState.COMPLETE
    assert candidate.user_attrs["macs"] < baseline.user_attrs["macs"]
    assert candidate.user_attrs["speedup"] > 0
    # It was pruned, so it was fine-tuned: its epoch reached Optuna (the pipeline told the
    # train stage how much the prune stage removed).
    assert list(candidate.intermediate_values) == [0]
