"""The third-party example plugin, examples/vitopt-lowrank, installed with pip as a user would
(into a throwaway --target folder): listed by `vitopt plugins`, part of a real campaign's
search space, and gone when disabled."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from campaign_helpers import write_campaign
from optuna.trial import TrialState
from pip_target import pip_install
from plugin_helpers import EXAMPLE, env_with, vitopt

from optimizer.campaign.search_space import build_search_space
from optimizer.campaign.study import RESOLVED_PARAMS_ATTR
from optimizer.config import load_campaign
from optimizer.plugin_host.checks import collect_techniques
from optimizer.plugin_host.manager import build_plugin_manager

LOWRANK_SPACE = {
    "lowrank.enabled": {"fixed": True},
    "prune.method": {"fixed": "none"},  # fewer parameters can only come from lowrank
    "train.epochs": {"low": 1, "high": 1},
    "quantize.precision": {"fixed": "fp32"},
}


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lowrank") / "target"
    pip_install(EXAMPLE, folder)
    assert (folder / "vitopt_lowrank-0.1.0.dist-info").is_dir()
    return folder


@pytest.fixture()
def installed(target: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The example visible to this process for the test's duration."""
    monkeypatch.delenv("VITOPT_DISABLE_PLUGINS", raising=False)
    monkeypatch.syspath_prepend(str(target))
    importlib.invalidate_caches()
    yield target
    for name in [m for m in sys.modules if m.startswith("vitopt_lowrank")]:
        del sys.modules[name]
    importlib.invalidate_caches()


@pytest.mark.slow
def test_vitopt_plugins_lists_lowrank_with_its_source_and_parameters(
    target: Path, tmp_path: Path
) -> None:
    listed = vitopt("plugins", "--json", env=env_with(target), cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    by_name = {p["name"]: p for p in json.loads(listed.stdout)["plugins"]}
    lowrank = by_name["lowrank"]
    assert lowrank["source"] == "vitopt-lowrank 0.1.0"
    assert (lowrank["distribution"], lowrank["version"]) == ("vitopt-lowrank", "0.1.0")
    assert lowrank["module"] == "vitopt_lowrank.plugin"
    assert lowrank["disabled"] is False and lowrank["error"] is None
    (technique,) = lowrank["techniques"]
    assert (technique["name"], technique["stage"]) == ("lowrank", "prune")
    enabled, ratio = technique["params"]
    assert (enabled["name"], enabled["kind"], enabled["default"]) == (
        "lowrank.enabled",
        "bool",
        False,
    )
    assert (ratio["name"], ratio["kind"], ratio["low"], ratio["high"]) == (
        "lowrank.rank_ratio",
        "float",
        0.1,
        0.75,
    )
    assert ratio["when"] == {"lowrank.enabled": [True]}

    table = vitopt("plugins", env=env_with(target, COLUMNS="200"), cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    text = " ".join(table.stdout.split())
    assert "lowrank vitopt-lowrank 0.1.0 enabled (module vitopt_lowrank.plugin)" in text
    assert "technique lowrank, stage prune" in text
    assert "lowrank.rank_ratio float [0.1, 0.75] 0.5" in text
    assert "if lowrank.enabled=true" in text


def test_disabled_by_the_campaign_or_the_environment_it_is_gone(
    installed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def techniques(disable: list[str]) -> list[str]:
        return [r.technique.name for r in collect_techniques(build_plugin_manager(disable))]

    assert techniques([])[-1] == "lowrank"  # after the built-ins
    assert "lowrank" not in techniques(["lowrank"])
    monkeypatch.setenv("VITOPT_DISABLE_PLUGINS", "plugins.quantization, lowrank")
    assert techniques([]) == ["torch_pruning", "kd"]


def test_its_parameters_join_the_search_space_after_the_built_ins(
    installed: Path, tmp_path: Path
) -> None:
    declared = [
        spec
        for r in collect_techniques(build_plugin_manager())
        for spec in r.technique.search_space()
    ]
    campaign = load_campaign(
        write_campaign(tmp_path, **{"search.space": {"lowrank.enabled": {"fixed": True}}})
    )
    space = build_search_space(declared, campaign.search.space)
    assert [s.name for s in space.params][-2:] == ["lowrank.enabled", "lowrank.rank_ratio"]
    assert space.fixed["lowrank.enabled"] is True
    assert space.baseline["lowrank.enabled"] is False  # the baseline stays dense
    sampled = space.sample(optuna.create_study().ask())
    assert sampled["lowrank.enabled"] is True and 0.1 <= sampled["lowrank.rank_ratio"] <= 0.75


@pytest.mark.slow
def test_the_examples_own_tests_pass_against_the_installed_package(
    target: Path, tmp_path: Path
) -> None:
    tests = EXAMPLE / "tests"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)]
    result = subprocess.run(
        command, capture_output=True, text=True, env=env_with(target), cwd=tmp_path, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "9 passed" in result.stdout


@pytest.mark.slow
def test_a_disabled_plugin_is_gone_from_a_real_run(target: Path, tmp_path: Path) -> None:
    """The campaign still names lowrank.enabled, and the run says no installed technique
    declares it, before any trial: disabled means not loaded at all."""
    space = {"search.space": LOWRANK_SPACE, "execution.workers": 0}
    disabled_in_file = tmp_path / "in-file"
    disabled_in_env = tmp_path / "in-env"
    runs = [
        (disabled_in_file, {"plugins.disable": ["lowrank"]}, env_with(target)),
        (disabled_in_env, {}, env_with(target, VITOPT_DISABLE_PLUGINS="lowrank")),
    ]
    for folder, changes, env in runs:
        folder.mkdir()
        campaign = write_campaign(folder, **space, **changes)
        result = vitopt("run", str(campaign), env=env, cwd=folder)
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        message = " ".join(result.stderr.split())
        assert "search.space.lowrank.enabled: no installed technique declares this" in message


@pytest.mark.slow
def test_a_campaign_searches_lowrank_and_finds_smaller_models(target: Path, tmp_path: Path) -> None:
    campaign = write_campaign(
        tmp_path,
        **{
            "search.trials": 3,
            "execution.workers": 0,
            "objective.latency_first_cut": False,
            "search.space": LOWRANK_SPACE,
        },
    )
    result = vitopt("run", str(campaign), "--json", env=env_with(target), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["trials"]["complete"] == 3, summary

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/runs/tiny/study.db")
    baseline, *candidates = study.trials
    assert baseline.user_attrs["baseline"] is True
    assert baseline.user_attrs[RESOLVED_PARAMS_ATTR]["lowrank.enabled"] is False
    for trial in candidates:
        assert trial.state == TrialState.COMPLETE, trial.user_attrs.get("fail_reason")
        assert 0.1 <= trial.params["lowrank.rank_ratio"] <= 0.75  # sampled by Optuna
        assert trial.user_attrs[RESOLVED_PARAMS_ATTR]["lowrank.enabled"] is True
        assert trial.user_attrs["params_count"] < baseline.user_attrs["params_count"]
        assert trial.user_attrs["macs"] < baseline.user_attrs["macs"]
