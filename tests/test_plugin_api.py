"""The declared plugin API: the built-in plugins pass the conformance checks a third-party plugin
runs on itself (optimizer.plugin_testing), the registry refuses what breaks the contract, and
the guide's task and data source (docs/plugins.md, sections 10 and 11) install from the page
and run a campaign, and its model family (section 13) passes its check and prunes."""

from __future__ import annotations

import importlib
import json
import math
import re
import sys
from pathlib import Path

import optuna
import pytest
from campaign_helpers import write_campaign
from optuna.trial import TrialState
from pip_target import pip_install
from plugin_helpers import SHRINK, env_with, vitopt, write_plugin_package

from optimizer.campaign.driver import preflight
from optimizer.config import CampaignError, load_campaign
from optimizer.plugin_api import Splits, TaskBase
from optimizer.plugin_host.checks import check_task as registered_task
from optimizer.plugin_host.manager import PluginError
from optimizer.plugin_host.registry import plugin_registry
from optimizer.plugin_testing import (
    check_data_source,
    check_task,
    check_technique,
    stage_context,
    tiny_vit,
)

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "plugins.md"
EXAMPLE_MARK = "# example: vitopt_regression/plugin.py"
FAMILY_MARK = "# example: vitopt_convnext/plugin.py"
# Planted beside the guide's family: one whose rules find nothing in the models it claims.
EMPTY_FAMILY = """

class EmptyFamily(ModelFamilyBase):
    name = "empty"
    model_names = ("convnextv2_*",)

    def prunable(self, model):
        return Prunable()


@hookimpl(specname="vitopt_register_model_families")
def register_the_empty_family():
    return {"empty": EmptyFamily()}
"""


# --- the built-ins keep the contract they declare --------------------------------------------


@pytest.mark.parametrize(
    ("name", "settings"),
    [
        ("torch_pruning", [{"prune.method": "heads+mlp", "prune.ratio": 0.5}]),
        ("kd", [{"train.epochs": 1, "distill.enabled": True}]),
        (
            "int8",
            [
                {"quantize.precision": "fp16"},
                {"quantize.precision": "int8", "quantize.method": "dynamic"},
                {"quantize.precision": "int8", "quantize.method": "static"},
            ],
        ),
    ],
)
def test_the_built_in_techniques_pass_the_conformance_check(
    name: str, settings: list[dict], tmp_path: Path
) -> None:
    context = stage_context(tmp_path, teacher=tiny_vit(seed=1))
    check_technique(name, tmp_path, *settings, context=context)


@pytest.mark.parametrize(
    ("task", "source", "model", "image_size"),
    [
        ("classification", "digits", None, 16),
        (
            "segmentation",
            "uav_synthetic",
            {
                "name": "vit_tiny_patch16_224",
                "kwargs": {"patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 4},
            },
            32,
        ),
    ],
)
def test_the_built_in_tasks_pass_the_conformance_check(
    task: str, source: str, model: dict | None, image_size: int, tmp_path: Path
) -> None:
    score = check_task(task, source, tmp_path, model, image_size=image_size)
    assert 0.0 <= score <= 1.0


@pytest.mark.slow
def test_the_conformance_check_names_a_default_that_changes_the_model(
    tmp_path: Path, monkeypatch
) -> None:
    target = tmp_path / "target"
    pip_install(write_plugin_package(tmp_path / "src", "shrink", SHRINK), target)
    monkeypatch.delenv("VITOPT_DISABLE_PLUGINS", raising=False)
    monkeypatch.syspath_prepend(str(target))
    importlib.invalidate_caches()
    try:
        with pytest.raises(AssertionError) as caught:
            check_technique("shrink", tmp_path / "work")
    finally:
        for name in [m for m in sys.modules if m.startswith("vitopt_shrink")]:
            del sys.modules[name]
    assert str(caught.value).startswith(
        "technique 'shrink' (vitopt-shrink 0.1.0) changes the test model at its defaults "
        "(shrink.scale=0.5)"
    )


def test_a_data_source_checks_the_settings_it_needs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"needs data\.path: a folder with train/ and val/"):
        check_data_source("imagefolder", image_size=16)
    splits = check_data_source("digits", image_size=16)
    assert splits.input_shape == (3, 16, 16) and splits.num_classes == 10

    campaign = write_campaign(tmp_path, **{"data.source": "uav_folder"})
    with pytest.raises(CampaignError) as caught:
        preflight(load_campaign(campaign))
    assert str(caught.value) == (
        f"{campaign}: data.source: uav_folder needs data.path: a folder with IMG/ and GT/"
    )


def test_a_task_missing_members_is_refused_naming_them() -> None:
    class Scores:
        metric_name = "score"

        def loss(self, outputs, labels):
            return outputs.sum()

    with pytest.raises(PluginError) as caught:
        registered_task(Scores(), "plugin 'scores' from vitopt-scores 0.1.0", "scores")
    message = str(caught.value)
    assert message.startswith("plugin 'scores' from vitopt-scores 0.1.0: task 'scores' is a Scores")
    for member in ("check_model", "build_model", "torch_metric", "evaluate_onnx"):
        assert member in message
    assert "loss" not in message.split("lacks")[1]

    class Complete(TaskBase):
        def loss(self, outputs, labels):
            return outputs.sum()

        def evaluate_onnx(self, path, dataset, threads=1):
            return 1.0

    task = Complete()
    assert registered_task(task, "plugin 'x'", "x") is task


def test_one_registry_per_process_until_the_plugins_change(monkeypatch) -> None:
    monkeypatch.delenv("VITOPT_DISABLE_PLUGINS", raising=False)
    registry = plugin_registry()
    assert plugin_registry() is registry
    assert [e.technique.name for e in registry.stage("prune")] == ["torch_pruning"]
    assert registry.names("vitopt_register_tasks") == ["classification", "segmentation"]
    without = plugin_registry(["plugins.segmentation"])
    assert without is not registry
    assert without.names("vitopt_register_datasets") == ["digits", "imagefolder"]
    monkeypatch.setenv("VITOPT_DISABLE_PLUGINS", "plugins.segmentation")
    assert plugin_registry() is without
    with pytest.raises(CampaignError, match=r"task.name: 'segmentation' is not registered"):
        plugin_registry().task("segmentation")


# --- a third-party task and data source, from the guide ------------------------------------


def guide_example(mark: str = EXAMPLE_MARK, parts: int = 2) -> str:
    """The guide's example module: its code blocks marked ``mark``, in page order."""
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
    marked = [block for block in blocks if block.startswith(mark)]
    assert len(marked) == parts, f"the guide shows {len(marked)} parts marked {mark!r}"
    return "\n\n".join(marked)


@pytest.fixture(scope="module")
def regression(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("regression")
    target = root / "target"
    pip_install(write_plugin_package(root / "src", "regression", guide_example()), target)
    return target


@pytest.mark.slow
def test_the_guides_task_and_source_pass_the_conformance_checks(
    regression: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.delenv("VITOPT_DISABLE_PLUGINS", raising=False)
    monkeypatch.syspath_prepend(str(regression))
    importlib.invalidate_caches()
    try:
        splits = check_data_source("digit_values", image_size=16)
        assert isinstance(splits, Splits) and splits.num_classes == 1
        score = check_task("regression", "digit_values", tmp_path, image_size=16)
        assert math.isfinite(score)
        assert plugin_registry().task("regression").metric_name == "R²"
    finally:
        for name in [m for m in sys.modules if m.startswith("vitopt_regression")]:
            del sys.modules[name]


@pytest.mark.slow
def test_a_third_party_task_runs_a_campaign(regression: Path, tmp_path: Path) -> None:
    env = env_with(regression)
    listed = vitopt("plugins", "--json", env=env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    by_name = {p["name"]: p for p in json.loads(listed.stdout)["plugins"]}
    assert by_name["regression"]["tasks"] == ["regression"]
    assert by_name["regression"]["data_sources"] == ["digit_values"]

    bad = write_campaign(tmp_path, **{"task.name": "regression", "data.source": "digit_values"})
    bad.write_text(bad.read_text().replace("image_size: 16", "image_size: 12"))
    refused = vitopt("run", str(bad), env=env, cwd=tmp_path)
    assert refused.returncode != 0
    assert "Traceback" not in refused.stderr
    assert "data.source: digit_values needs data.image_size a multiple of 8, not 12" in (
        refused.stderr
    )

    campaign = write_campaign(
        tmp_path,
        **{
            "task.name": "regression",
            "data.source": "digit_values",
            "objective.max_accuracy_drop": 0.5,
            "search.trials": 3,
            "execution.workers": 0,
            "search.space": {"train.epochs": {"low": 1, "high": 1}},
        },
    )
    result = vitopt("run", str(campaign), env=env, cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/runs/tiny/study.db")
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert complete, [t.user_attrs.get("fail_reason") for t in study.trials]
    for trial in complete:
        assert trial.user_attrs["accuracy_metric"] == "R²"
        assert math.isfinite(trial.user_attrs["accuracy"])
    status = vitopt("status", str(campaign), env=env, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "R²" in status.stdout


# --- a third-party model family, from the guide ---------------------------------------------


@pytest.mark.slow
def test_the_guides_model_family_passes_the_conformance_check_and_prunes(
    tmp_path: Path, monkeypatch
) -> None:
    import torch

    from optimizer.plugin_api.model_stats import count_params
    from optimizer.plugin_api.task import create_timm_model
    from optimizer.plugin_testing import check_family
    from plugins.pruning import prune_model

    target = tmp_path / "target"
    module = guide_example(FAMILY_MARK, parts=1) + EMPTY_FAMILY
    pip_install(write_plugin_package(tmp_path / "src", "convnext", module), target)
    listed = vitopt("plugins", "--json", env=env_with(target), cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    by_name = {p["name"]: p for p in json.loads(listed.stdout)["plugins"]}
    assert sorted(by_name["convnext"]["model_families"]) == ["convnext", "empty"]

    monkeypatch.delenv("VITOPT_DISABLE_PLUGINS", raising=False)
    monkeypatch.syspath_prepend(str(target))
    importlib.invalidate_caches()
    try:
        found = check_family("convnext", "convnext_atto", tmp_path)
        assert not found.heads and found.channels
        model = create_timm_model("convnext_atto", False, 64, num_classes=10).eval()
        before = count_params(model)
        family = plugin_registry().model_family("convnext_atto")
        prune_model(model, family, method="mlp", ratio=0.5, example=torch.randn(1, 3, 64, 64))
        assert count_params(model) < 0.7 * before
        with pytest.raises(AssertionError, match="empty: nothing to prune in convnextv2_atto"):
            check_family("empty", "convnextv2_atto", tmp_path)
    finally:
        for name in [m for m in sys.modules if m.startswith("vitopt_convnext")]:
            del sys.modules[name]
