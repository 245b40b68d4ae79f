"""The shipped campaign of each model family (``search_spaces/families/``), shortened, run as a
user runs it: ``vitopt run`` on the offline digits, every candidate measured by the real agent
(embedded, on 127.0.0.1) paired with the baseline."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from campaign_helpers import TRIALS, run_to_the_end, shortened
from optuna.trial import TrialState

REPO = Path(__file__).resolve().parent.parent
FAMILY_CAMPAIGNS = sorted((REPO / "search_spaces" / "families").glob("*.yaml"))


def test_every_family_has_a_campaign() -> None:
    from optimizer.plugin_host.registry import plugin_registry

    families = plugin_registry().names("vitopt_register_model_families")
    assert sorted(p.stem for p in FAMILY_CAMPAIGNS) == sorted(families)
    for path in FAMILY_CAMPAIGNS:
        name = yaml.safe_load(path.read_text())["model"]["name"]
        assert plugin_registry().model_family(name).name == path.stem


@pytest.mark.slow
@pytest.mark.parametrize("path", FAMILY_CAMPAIGNS, ids=lambda p: p.stem)
def test_a_short_campaign_per_family(path: Path, tmp_path: Path) -> None:
    campaign = shortened(path, tmp_path)
    summary = run_to_the_end(campaign, tmp_path)
    assert summary["trials"]["complete"] == TRIALS, summary

    name = yaml.safe_load(campaign.read_text())["name"]
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/runs/{name}/study.db")
    baseline, *candidates = study.trials
    assert baseline.state == TrialState.COMPLETE
    for trial in candidates:
        assert trial.state == TrialState.COMPLETE, trial.user_attrs.get("fail_reason")
        attrs = trial.user_attrs
        assert attrs["params_count"] < baseline.user_attrs["params_count"]
        assert attrs["macs"] < baseline.user_attrs["macs"]
        assert attrs["speedup"] > 0 and 0.0 <= attrs["accuracy"] <= 1.0
