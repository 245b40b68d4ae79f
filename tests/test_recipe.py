"""A candidate's recipe is what shaped it: when the prune stage removed nothing, distillation
has nothing to fine-tune, and the train stage's parameters are recorded as unused and left out
of every view of the trial (run's summary, status, note, report)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
from campaign_helpers import write_campaign
from plugin_helpers import vitopt
from rich.console import Console

from optimizer.campaign.study import recipe
from optimizer.cli.study_views import trials_table
from optimizer.trial.outcome import UNUSED_PARAMS_ATTR

TRAIN_STAGE = {"train.epochs", "train.lr", "distill.enabled"}


def test_a_candidate_left_whole_is_not_said_to_be_fine_tuned(tmp_path: Path) -> None:
    campaign = write_campaign(
        tmp_path,
        **{
            "search.trials": 4,
            "search.sampler": "random",
            "search.seed": 1,
            "execution.workers": 0,
            "objective.latency_first_cut": False,
            "search.space": {
                "prune.method": {"choices": ["none", "mlp"]},
                "prune.ratio": {"low": 0.5, "high": 0.5},
                "train.epochs": {"low": 1, "high": 1},
                "train.lr": {"low": 0.001, "high": 0.002},
                "quantize.precision": {"fixed": "fp32"},
            },
        },
    )
    env = dict(os.environ)
    result = vitopt("run", str(campaign), "--json", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/runs/tiny/study.db")
    candidates = [t for t in study.trials if t.params]
    kinds = {t.params["prune.method"] for t in candidates}
    assert kinds == {"none", "mlp"}, kinds  # both sides of the rule ran
    for trial in candidates:
        unused = set(trial.user_attrs.get(UNUSED_PARAMS_ATTR) or ())
        if trial.params["prune.method"] == "none":
            assert TRAIN_STAGE & set(trial.params) <= unused
            assert "prune.method" not in unused
            assert not TRAIN_STAGE & set(recipe(trial))
        else:  # fine-tuned: every parameter shaped it
            assert not unused and recipe(trial) == trial.params
    whole = next(t for t in candidates if t.params["prune.method"] == "none")
    console = Console(width=400, record=True)  # status's table, unwrapped
    console.print(trials_table("the whole one", [whole]))
    row = console.export_text()
    assert "prune.method=none" in row and "train.lr" not in row
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    best = summary["best"]
    assert set(best["unused_params"]).isdisjoint(best["params"])
