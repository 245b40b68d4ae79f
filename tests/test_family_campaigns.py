"""The shipped campaign of each model family (``search_spaces/families/``), shortened, run as a
user runs it: ``vitopt run`` on the offline digits, every candidate measured by the real agent
(embedded, on 127.0.0.1) paired with the baseline."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from campaign_helpers import run_to_the_end
from optuna.trial import TrialState

REPO = Path(__file__).resolve().parent.parent
FAMILY_CAMPAIGNS = sorted((REPO / "search_spaces" / "families").glob("*.yaml"))
TRIALS = 2


def shortened(path: Path, folder: Path) -> Path:
    """The campaign with a short baseline training, two in-process trials (the baseline and a
    candidate that prunes: ``prune.method`` without ``none``) run to the end, one fine-tuning
    epoch, and short paired jobs."""
    data = yaml.safe_load(path.read_text())
    data["model"]["train"]["epochs"] = 2
    data["data"]["calibration_size"] = 16
    # Feasibility and the latency-first cut are not what this checks: every candidate runs.
    data["objective"].update(max_accuracy_drop=1.0, latency_first_cut=False)
    space = data["search"]["space"]
    methods = space.get("prune.method", {}).get("choices", ["heads", "mlp", "heads+mlp"])
    space["prune.method"] = {"choices": [m for m in methods if m != "none"]}
    space["train.epochs"] = {"low": 1, "high": 1}
    data["search"]["trials"] = TRIALS
    data["execution"] = {"workers": 0}
    data["agents"]["measure"] = {
        "warmup": 5,
        "repeats": 6,
        "min_repeat_ms": 5,
        "ratio_ci": 0.05,
        "max_time_s": 3,
    }
    out = folder / path.name
    out.write_text(yaml.safe_dump(data))
    return out


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
