"""Plugin authoring: the plugin manager's checks and messages, `vitopt plugins`, `vitopt plugin
new`, and a technique that fails inside a trial. Broken plugins are real distributions, built
and installed with pip into a throwaway folder (see plugin_helpers.py)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from campaign_helpers import write_campaign
from click.testing import CliRunner
from optuna.trial import TrialState
from pip_target import pip_install
from plugin_helpers import SHRINK, env_with, vitopt, write_plugin_package

from optimizer.cli import main
from optimizer.config import load_campaign
from optimizer.plugin_api import OnnxArtifact, ParamSpec, StageContext, hookimpl
from optimizer.plugin_host.checks import RegisteredTechnique, collect_techniques
from optimizer.plugin_host.manager import (
    PluginError,
    PluginSource,
    VitoptPluginManager,
    build_plugin_manager,
)
from optimizer.plugin_host.survey import survey
from optimizer.plugin_testing import default_params, stage_context, tiny_vit
from optimizer.trial.outcome import TrialRequest
from optimizer.trial.pipeline import run_trial
from optimizer.trial.stages import TechniqueFailed, apply_technique

# --- throwaway plugins -----------------------------------------------------------------------

IMPORT_FAILS = """
import nonexistent_module_for_vitopt_tests  # noqa: F401
"""

BAD_SPEC = """
from optimizer.plugin_api import hookimpl
from optimizer.plugin_api import ParamSpec

class BadSpec:
    name = "badspec"
    stage = "prune"
    def search_space(self):
        return [ParamSpec("badspec.amount", "float", default=2.0, low=0.0, high=1.0)]
    def apply(self, subject, params, ctx):
        return subject

@hookimpl
def vitopt_register_techniques():
    return [BadSpec()]
"""

DUPLICATE = """
from optimizer.plugin_api import hookimpl
from optimizer.plugin_api import ParamSpec

class Impostor:
    name = "torch_pruning"  # the built-in structural pruning's name
    stage = "prune"
    def search_space(self):
        return [ParamSpec("dup.enabled", "bool", False)]
    def apply(self, subject, params, ctx):
        return subject

@hookimpl
def vitopt_register_techniques():
    return [Impostor()]
"""

# Trial 1 raises, trial 2 returns None; the baseline (defaults) does nothing.
FAULTY = """
from optimizer.plugin_api import hookimpl
from optimizer.plugin_api import ParamSpec

class Faulty:
    name = "faulty"
    stage = "prune"
    def search_space(self):
        return [ParamSpec("faulty.enabled", "bool", False)]
    def apply(self, subject, params, ctx):
        if not params["faulty.enabled"]:
            return subject
        ctx.log.info("faulty: about to misbehave in trial %d", ctx.trial_number)
        if ctx.trial_number % 2:
            raise RuntimeError(f"boom in trial {ctx.trial_number}")
        return None

@hookimpl
def vitopt_register_techniques():
    return [Faulty()]
"""

# Techniques whose declared defaults change the baseline: what the campaign must refuse.
MEDDLING = {
    "shrink": (
        SHRINK,
        "technique 'shrink' (vitopt-shrink 0.1.0) changes the baseline model at its defaults "
        "(shrink.scale=0.5)",
    ),
    "relabel": (
        """
from optimizer.plugin_api import hookimpl
from optimizer.plugin_api import OnnxArtifact, ParamSpec

class Relabel:
    name = "relabel"
    stage = "quantize"
    def search_space(self):
        return [ParamSpec("relabel.half", "bool", True)]
    def apply(self, subject, params, ctx):
        return OnnxArtifact(subject.path, "fp16") if params["relabel.half"] else subject

@hookimpl
def vitopt_register_techniques():
    return [Relabel()]
""",
        "technique 'relabel' (vitopt-relabel 0.1.0) changes the ONNX graph of the baseline model "
        "at its defaults (relabel.half=True)",
    ),
}

TASK_CLASH = """
from optimizer.plugin_api import TaskBase, hookimpl

class Other(TaskBase):
    def loss(self, outputs, labels):
        return outputs.sum()

    def evaluate_onnx(self, path, dataset, threads=1):
        return 1.0

@hookimpl
def vitopt_register_tasks():
    return {"classification": Other()}
"""
TASK_CLASH_MESSAGE = (
    "task name 'classification' is claimed by both built-in plugin 'plugins.classification' "
    "and plugin 'taskclash' from vitopt-taskclash 0.1.0"
)

BROKEN = {
    "importfails": (
        IMPORT_FAILS,
        "plugin 'importfails' from vitopt-importfails 0.3.0 failed to import: "
        "ModuleNotFoundError: No module named 'nonexistent_module_for_vitopt_tests'",
    ),
    "badspec": (
        BAD_SPEC,
        "plugin 'badspec' from vitopt-badspec 0.3.0: technique 'badspec': invalid parameter "
        "badspec.amount: default 2.0 outside range",
    ),
    "dup": (
        DUPLICATE,
        "technique name 'torch_pruning' is claimed by both built-in plugin 'plugins.pruning' "
        "and plugin 'dup' from vitopt-dup 0.3.0",
    ),
}


@pytest.fixture(scope="module")
def broken_targets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each broken plugin installed alone in its own target folder, and all of them together
    in ``all``."""
    root = tmp_path_factory.mktemp("broken")
    targets: dict[str, Path] = {}
    for name, (code, _) in BROKEN.items():
        package = write_plugin_package(root / "src", name, code, version="0.3.0")
        targets[name] = root / f"target-{name}"
        pip_install(package, targets[name])
        pip_install(package, root / "target-all")
    targets["all"] = root / "target-all"
    return targets


@pytest.fixture()
def on_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``on_path(target)``: make an installed target folder visible to this process; sys.path
    and the plugin modules it imported are restored afterwards."""
    before = set(sys.modules)
    monkeypatch.delenv("VITOPT_DISABLE_PLUGINS", raising=False)

    def add(target: Path) -> None:
        monkeypatch.syspath_prepend(str(target))
        importlib.invalidate_caches()

    yield add
    for name in set(sys.modules) - before:
        if name.startswith("vitopt_"):
            del sys.modules[name]
    importlib.invalidate_caches()


# --- the plugin manager, in-process ----------------------------------------------------------


def test_techniques_come_in_registration_order_built_ins_first() -> None:
    names = [r.technique.name for r in collect_techniques(build_plugin_manager())]
    assert names[:3] == ["torch_pruning", "kd", "int8"]
    labels = [r.plugin for r in collect_techniques(build_plugin_manager())][:3]
    assert labels == [
        "built-in plugin 'plugins.pruning'",
        "built-in plugin 'plugins.distillation'",
        "built-in plugin 'plugins.quantization'",
    ]


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_broken_plugin_stops_the_manager_with_one_line_naming_it(
    name: str, broken_targets: dict[str, Path], on_path: Any
) -> None:
    on_path(broken_targets[name])
    with pytest.raises(PluginError) as caught:
        collect_techniques(build_plugin_manager())
    message = str(caught.value)
    assert message.startswith(BROKEN[name][1]), message
    assert "\n" not in message
    # Disabled, it is not even imported, and everything else works.
    names = {r.technique.name for r in collect_techniques(build_plugin_manager([name]))}
    assert {"torch_pruning", "kd", "int8"} <= names


def test_the_survey_reports_every_broken_plugin_and_goes_on(
    broken_targets: dict[str, Path], on_path: Any
) -> None:
    on_path(broken_targets["all"])
    result = survey(["badspec"])
    by_name = {p.source.name: p for p in result.plugins}
    assert by_name["importfails"].error.startswith(BROKEN["importfails"][1])
    assert by_name["dup"].error.startswith(BROKEN["dup"][1])
    assert by_name["dup"].source.origin == "vitopt-dup 0.3.0"
    assert by_name["badspec"].disabled and by_name["badspec"].error  # broken, but disabled
    assert len(result.errors) == 2  # only enabled plugins stop a campaign
    pruning = by_name["plugins.pruning"]
    assert pruning.error is None and [t.name for t in pruning.techniques] == ["torch_pruning"]


class _Plugin:
    """An in-process plugin object with the given techniques."""

    def __init__(self, *techniques: Any) -> None:
        self.techniques = list(techniques)

    @hookimpl
    def vitopt_register_techniques(self) -> list[Any]:
        return self.techniques


class _Technique:
    stage = "prune"

    def __init__(self, name: str, *specs: ParamSpec) -> None:
        self.name = name
        self.specs = list(specs)

    def search_space(self) -> list[ParamSpec]:
        return self.specs

    def apply(self, subject: Any, params: Any, ctx: StageContext) -> Any:
        return subject


def _manager(*plugins: tuple[str, Any]) -> VitoptPluginManager:
    manager = VitoptPluginManager()
    for name, plugin in plugins:
        manager.add(plugin, PluginSource(name, f"{name}.plugin", f"vitopt-{name}", "1.2"))
    return manager


def test_two_plugins_declaring_one_parameter_are_refused() -> None:
    first = _Technique("one", ParamSpec("shared.x", "bool", False))
    second = _Technique("two", ParamSpec("shared.x", "bool", False))
    manager = _manager(("a", _Plugin(first)), ("b", _Plugin(second)))
    with pytest.raises(PluginError, match=r"search parameter 'shared\.x' is declared by both") as e:
        collect_techniques(manager)
    assert "plugin 'a' from vitopt-a 1.2 (technique 'one')" in str(e.value)
    assert "plugin 'b' from vitopt-b 1.2 (technique 'two')" in str(e.value)


def test_a_condition_on_a_parameter_not_declared_before_is_refused() -> None:
    late = _Technique(
        "late",
        ParamSpec("late.x", "float", 0.5, low=0.0, high=1.0, when={"late.on": [True]}),
        ParamSpec("late.on", "bool", False),
    )
    with pytest.raises(PluginError, match=r"conditional on 'late\.on', which is not declared"):
        collect_techniques(_manager(("late", _Plugin(late))))
    # On a built-in's parameter it is fine: built-ins register first.
    ok = _Technique("ok", ParamSpec("ok.x", "bool", False, when={"prune.method": ["heads", "mlp"]}))
    manager = build_plugin_manager()
    manager.add(_Plugin(ok), PluginSource("ok", "ok.plugin", "vitopt-ok", "1.0"))
    assert [r.technique.name for r in collect_techniques(manager)][-1] == "ok"


@pytest.mark.parametrize(
    ("technique", "fragment"),
    [
        (object(), "returned object from vitopt_register_techniques, which lacks name"),
        (_Technique("x", "not a spec"), "declared 'not a spec', not a ParamSpec"),
        (_Technique("x", ParamSpec("unqualified", "bool", False)), "must be qualified"),
        (_Technique("x", ParamSpec("x.k", "choice", 1)), "unknown kind 'choice'"),
        (_Technique("x", ParamSpec("x.w", "bool", False, when={"x.v": "on"})), "list of values"),
    ],
)
def test_bad_declarations_name_the_plugin_and_its_distribution(
    technique: Any, fragment: str
) -> None:
    with pytest.raises(PluginError) as caught:
        collect_techniques(_manager(("bad", _Plugin(technique))))
    assert str(caught.value).startswith("plugin 'bad' from vitopt-bad 1.2")
    assert fragment in str(caught.value)


def test_a_misspelt_hook_is_refused() -> None:
    class Typo:
        @hookimpl
        def vitopt_register_technique(self) -> list[Any]:
            return []

    with pytest.raises(PluginError, match="implements vitopt_register_technique, which is not"):
        _manager(("typo", Typo()))


def test_the_manager_lists_distributions_like_pluggy() -> None:
    manager = _manager(("a", _Plugin()))
    assert manager.list_plugin_distinfo() == []  # no real distribution behind an object
    assert manager.source_of(manager.get_plugin("a")).origin == "vitopt-a 1.2"


# --- a technique's result is checked where stages are applied --------------------------------


def _registered(technique: Any) -> RegisteredTechnique:
    return RegisteredTechnique(technique, PluginSource("x", "x.plugin", "vitopt-x", "0.1.0"))


class _Returns(_Technique):
    def __init__(self, stage: str, value: Any) -> None:
        super().__init__("x")
        self.stage = stage
        self.value = value

    def apply(self, subject: Any, params: Any, ctx: StageContext) -> Any:
        if isinstance(self.value, Exception):
            raise self.value
        return self.value


def test_a_wrong_return_type_fails_with_a_reason_naming_technique_and_plugin(
    tmp_path: Path,
) -> None:
    ctx = stage_context(tmp_path)
    with pytest.raises(TechniqueFailed) as caught:
        apply_technique(_registered(_Returns("prune", None)), tiny_vit(), {}, ctx)
    assert str(caught.value) == (
        "technique 'x' (vitopt-x 0.1.0) returned NoneType from apply, expected a torch.nn.Module"
    )
    artifact = OnnxArtifact(tmp_path / "m.onnx")
    with pytest.raises(TechniqueFailed, match=r"returned \w*Path from apply, expected an OnnxArt"):
        apply_technique(_registered(_Returns("quantize", artifact.path)), artifact, {}, ctx)
    with pytest.raises(TechniqueFailed, match=r"\(vitopt-x 0.1.0\) failed in apply: KeyError"):
        apply_technique(_registered(_Returns("train", KeyError("x.lr"))), tiny_vit(), {}, ctx)
    model = torch.nn.Linear(2, 2)
    assert apply_technique(_registered(_Returns("prune", model)), tiny_vit(), {}, ctx) is model


def test_a_trial_fails_where_no_technique_declares_its_parameters(tmp_path: Path) -> None:
    """A Ray node without a plugin the driver has must not run its candidates without it."""
    campaign = load_campaign(write_campaign(tmp_path))
    request = TrialRequest(
        campaign=campaign,
        number=3,
        params={"prune.method": "none", "ghost.amount": 0.5},
        checkpoint=tmp_path / "never-loaded.pt",
        agents=None,
        agent_token=None,
        device_info={},
        work_dir=tmp_path / "work",
    )
    threads = torch.get_num_threads()
    try:
        outcome = run_trial(request)
    finally:
        torch.set_num_threads(threads)
    assert outcome.state == "FAIL"
    reason = outcome.attrs["fail_reason"]
    assert reason.startswith("no technique on ") and " declares ghost.amount: install " in reason


# --- `vitopt plugins` and `vitopt run`, as a user runs them -----------------------------------


def test_vitopt_plugins_lists_the_built_ins_as_json() -> None:
    result = CliRunner().invoke(main, ["plugins", "--json"], env={"VITOPT_DISABLE_PLUGINS": ""})
    assert result.exit_code == 0, result.output
    listing = json.loads(result.stdout)
    by_name = {p["name"]: p for p in listing["plugins"]}
    pruning = by_name["plugins.pruning"]
    assert pruning["source"] == "built-in" and not pruning["disabled"]
    (technique,) = pruning["techniques"]
    assert (technique["name"], technique["stage"]) == ("torch_pruning", "prune")
    ratio = next(p for p in technique["params"] if p["name"] == "prune.ratio")
    assert (ratio["kind"], ratio["low"], ratio["high"], ratio["default"]) == (
        "float",
        0.1,
        0.7,
        0.3,
    )
    assert ratio["when"] == {
        "prune.method": ["heads", "mlp", "heads+mlp", "depth+mlp", "depth+heads+mlp"]
    }
    assert listing["errors"] == []


def test_vitopt_plugins_shows_what_the_campaign_and_the_environment_disable(
    tmp_path: Path,
) -> None:
    campaign = write_campaign(
        tmp_path, **{"plugins.disable": ["plugins.quantization", "nosuchplugin"]}
    )
    result = CliRunner().invoke(
        main,
        ["plugins", "--campaign", str(campaign)],
        env={"VITOPT_DISABLE_PLUGINS": "plugins.distillation", "COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "plugins.quantization built-in disabled (campaign)" in text
    assert "plugins.distillation built-in disabled ($VITOPT_DISABLE_PLUGINS)" in text
    assert "plugins.pruning built-in enabled" in text
    assert "prune.ratio float [0.1, 0.7] 0.3 low 0.4; high 0.7" in text  # the campaign's range
    assert "'nosuchplugin' is disabled, but no plugin has it" in text


@pytest.mark.slow
def test_vitopt_plugins_exits_1_with_one_line_per_broken_plugin(
    broken_targets: dict[str, Path], tmp_path: Path
) -> None:
    result = vitopt("plugins", env=env_with(broken_targets["all"]), cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 3, result.stderr
    for _, message in BROKEN.values():
        assert any(line.startswith(f"Error: {message}") for line in errors), (message, errors)
    assert "torch_pruning" in result.stdout  # the rest is still listed
    # JSON too, with the same exit status.
    listed = vitopt("plugins", "--json", env=env_with(broken_targets["all"]), cwd=tmp_path)
    assert listed.returncode == 1
    by_name = {p["name"]: p for p in json.loads(listed.stdout)["plugins"]}
    assert by_name["importfails"]["source"] == "vitopt-importfails 0.3.0"
    assert by_name["importfails"]["error"].startswith(BROKEN["importfails"][1])
    # Disabling the broken ones from the environment is the way out.
    disabled = vitopt(
        "plugins",
        env=env_with(broken_targets["all"], VITOPT_DISABLE_PLUGINS="importfails,badspec,dup"),
        cwd=tmp_path,
    )
    assert disabled.returncode == 0, disabled.stderr
    assert "disabled, and broken" in disabled.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BROKEN))
def test_vitopt_run_refuses_a_broken_plugin_in_one_line(
    name: str, broken_targets: dict[str, Path], tmp_path: Path
) -> None:
    campaign = write_campaign(tmp_path, **{"execution.workers": 0})
    result = vitopt("run", str(campaign), env=env_with(broken_targets[name]), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1 and lines[0].startswith(f"Error: {BROKEN[name][1]}"), result.stderr
    assert not (tmp_path / "runs" / "tiny" / "study.db").exists()  # stopped before the search


@pytest.mark.slow
def test_a_task_registered_twice_is_refused_not_silently_replaced(tmp_path: Path) -> None:
    target = tmp_path / "target"
    pip_install(write_plugin_package(tmp_path / "src", "taskclash", TASK_CLASH), target)
    campaign = write_campaign(tmp_path, **{"execution.workers": 0})
    run = vitopt("run", str(campaign), env=env_with(target), cwd=tmp_path)
    assert run.returncode == 1, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("Error: ")]
    assert errors == [f"Error: {TASK_CLASH_MESSAGE}"], run.stderr
    listed = vitopt("plugins", "--json", env=env_with(target), cwd=tmp_path)
    assert listed.returncode == 1
    by_name = {p["name"]: p for p in json.loads(listed.stdout)["plugins"]}
    assert by_name["taskclash"]["error"] == TASK_CLASH_MESSAGE
    assert by_name["plugins.classification"]["error"] is None


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MEDDLING))
def test_a_default_that_changes_the_baseline_stops_the_campaign_before_its_first_trial(
    name: str, tmp_path: Path
) -> None:
    code, message = MEDDLING[name]
    target = tmp_path / "target"
    pip_install(write_plugin_package(tmp_path / "src", name, code), target)
    campaign = write_campaign(tmp_path, **{"execution.workers": 0})
    result = vitopt("run", str(campaign), env=env_with(target), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1 and lines[0].startswith(f"Error: {message}"), result.stderr
    assert "a parameter's default must mean 'leave the model as it is'" in lines[0]
    storage = f"sqlite:///{tmp_path}/runs/tiny/study.db"
    assert optuna.load_study(study_name="tiny", storage=storage).trials == []


@pytest.mark.slow
def test_a_technique_failing_inside_a_trial_fails_that_trial_only(tmp_path: Path) -> None:
    target = tmp_path / "target"
    pip_install(write_plugin_package(tmp_path / "src", "faulty", FAULTY), target)
    campaign = write_campaign(
        tmp_path,
        **{
            "search.trials": 3,
            "execution.workers": 0,
            "objective.latency_first_cut": False,
            "search.space": {
                "faulty.enabled": {"fixed": True},
                "train.epochs": {"low": 0, "high": 0},
                "quantize.precision": {"fixed": "fp32"},
            },
        },
    )
    result = vitopt("run", str(campaign), "--json", env=env_with(target), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["trials"] == {"complete": 1, "pruned": 0, "failed": 2}
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/runs/tiny/study.db")
    baseline, raised, returned_none = study.trials
    assert baseline.state == TrialState.COMPLETE
    assert raised.state == returned_none.state == TrialState.FAIL
    assert raised.user_attrs["fail_reason"] == (
        "technique 'faulty' (vitopt-faulty 0.1.0) failed in apply: RuntimeError: boom in trial 1"
    )
    assert 'raise RuntimeError(f"boom in trial' in raised.user_attrs["traceback"]
    assert returned_none.user_attrs["fail_reason"] == (
        "technique 'faulty' (vitopt-faulty 0.1.0) returned NoneType from apply, "
        "expected a torch.nn.Module"
    )
    # Why, from the command line: run's summary, status, and one trial with its log.
    assert summary["failures"] == [
        {"trial": 1, "reason": raised.user_attrs["fail_reason"]},
        {"trial": 2, "reason": returned_none.user_attrs["fail_reason"]},
    ]
    status = vitopt("status", str(campaign), env=env_with(target), cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "failed trials (2; details: vitopt status --trial N)" in status.stdout
    assert "#1: technique 'faulty' (vitopt-faulty 0.1.0) failed in apply" in status.stdout
    one = vitopt("status", str(campaign), "--trial", "1", env=env_with(target), cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    assert "trial 1: FAIL" in one.stdout
    assert "faulty: about to misbehave in trial 1" in one.stdout  # the plugin's own line
    assert "RuntimeError: boom in trial 1" in one.stdout
    log = tmp_path / "runs" / "tiny" / "trials" / "00001" / "trial.log"
    assert "faulty: about to misbehave in trial 1" in log.read_text()
    artifacts = [
        a.filename for a in optuna.artifacts.get_all_artifact_meta(raised, storage=study._storage)
    ]
    assert artifacts == ["trial.log"]  # a failed trial keeps its log, not a model


CACHES = {"__pycache__", ".pytest_cache", ".ruff_cache", "build"}  # git ignores them


# --- `vitopt plugin new` ------------------------------------------------------------------------


def test_plugin_new_refuses_bad_names_and_existing_folders(tmp_path: Path) -> None:
    runner = CliRunner()
    bad = runner.invoke(main, ["plugin", "new", "my plugin", "--dir", str(tmp_path)])
    assert bad.exit_code == 1
    assert "'my plugin' is not a valid plugin name" in bad.output
    taken = runner.invoke(main, ["plugin", "new", "distill", "--dir", str(tmp_path)])
    assert taken.exit_code == 1
    assert "'distill' is taken: built-in plugin 'plugins.distillation' declares" in taken.output
    (tmp_path / "vitopt-my-thing").mkdir()
    exists = runner.invoke(main, ["plugin", "new", "my-thing", "--dir", str(tmp_path)])
    assert exists.exit_code == 1
    assert "already exists" in exists.output and "nothing was written" in exists.output
    assert list((tmp_path / "vitopt-my-thing").iterdir()) == []
    assert [p.name for p in tmp_path.iterdir()] == ["vitopt-my-thing"]


def test_plugin_new_writes_the_same_layout_as_the_example(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["plugin", "new", "lowrank", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output

    def layout(root: Path) -> set[str]:
        return {
            str(p.relative_to(root))
            for p in root.rglob("*")
            if p.is_file() and not CACHES & set(p.parts) and ".egg-info" not in str(p)
        }

    example = Path(__file__).resolve().parents[1] / "examples" / "vitopt-lowrank"
    assert layout(tmp_path / "vitopt-lowrank") == layout(example)
    pyproject = (tmp_path / "vitopt-lowrank" / "pyproject.toml").read_text()
    assert '[project.entry-points."vitopt.plugins"]\nlowrank = "vitopt_lowrank.plugin"' in pyproject


@pytest.mark.slow
def test_a_scaffolded_plugin_installs_passes_its_tests_and_is_listed(tmp_path: Path) -> None:
    stages = {"demo": "prune", "demo_train": "train", "demo-quantize": "quantize"}
    for name, stage in stages.items():
        result = CliRunner().invoke(
            main, ["plugin", "new", name, "--stage", stage, "--dir", str(tmp_path / "src")]
        )
        assert result.exit_code == 0, result.output
    packages = sorted((tmp_path / "src").iterdir())
    assert [p.name for p in packages] == [
        "vitopt-demo",
        "vitopt-demo-quantize",
        "vitopt-demo-train",
    ]
    target = tmp_path / "target"
    for package in packages:
        pip_install(package, target)
    env = env_with(target)
    tests = [str(p / "tests") for p in packages]
    run = vitopt_pytest(tests, env, tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "12 passed" in run.stdout
    listed = vitopt("plugins", "--json", env=env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    by_name = {p["name"]: p for p in json.loads(listed.stdout)["plugins"]}
    assert by_name["demo"]["source"] == "vitopt-demo 0.1.0"
    assert by_name["demo"]["module"] == "vitopt_demo.plugin"
    (technique,) = by_name["demo"]["techniques"]
    assert technique["stage"] == "prune"
    assert [(p["name"], p["default"]) for p in technique["params"]] == [
        ("demo.enabled", False),
        ("demo.amount", 0.1),
    ]
    assert by_name["demo_quantize"]["source"] == "vitopt-demo-quantize 0.1.0"
    assert by_name["demo_train"]["techniques"][0]["stage"] == "train"


def vitopt_pytest(tests: list[str], env: dict[str, str], cwd: Path) -> Any:
    """pytest on the generated packages' tests (each has a tests/test_plugin.py: the importlib
    import mode lets modules of one name from several folders run together)."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    return subprocess.run(
        [*command, "--import-mode=importlib", *tests],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


def test_default_params_are_what_the_baseline_runs() -> None:
    techniques = [r.technique for r in collect_techniques(build_plugin_manager())]
    params = default_params(*techniques)
    assert params["prune.method"] == "none" and params["quantize.precision"] == "fp32"
