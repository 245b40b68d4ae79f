"""What a careless user types gets one line and exit 1, and nothing written: broken campaign
files, commands that read a study that is not there, a study kept elsewhere (--storage), wrong
trial numbers, agent URLs that are not HTTP."""

from __future__ import annotations

import copy
from pathlib import Path

import optuna
import pytest
import yaml
from agent_helpers import start_agent
from campaign_helpers import TINY
from click.testing import CliRunner

from optimizer.cli import main


def _changed(dotted: str, value: object) -> str:
    data = copy.deepcopy(TINY)
    node = data
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return yaml.safe_dump(data)


BROKEN = {
    "search: fast": (_changed("search", "fast"), "search: expected a section (a mapping)"),
    "storage: foo://bar": (_changed("storage", "foo://bar"), "storage.url: 'foo://bar'"),
    "a typo'd key": (
        _changed("objective", {"max_acuracy_drop": 0.1}),
        "objective.max_acuracy_drop: unknown key; did you mean max_accuracy_drop?",
    ),
    "a NaN budget": (
        _changed("objective", {"max_accuracy_drop": float("nan")}),
        "objective.max_accuracy_drop: Input should be a finite number",
    ),
    "trials: 1e30": (_changed("search.trials", 1e30), "search.trials:"),
    "objective twice": (
        yaml.safe_dump(TINY) + "objective:\n  max_accuracy_drop: 0.5\n",
        "not valid YAML: duplicate key 'objective'",
    ),
    "name: ..": (_changed("name", ".."), "name: '..' is not a folder name under runs/"),
    "an unknown data source": (
        _changed("data.source", "imagenet"),
        "data.source: 'imagenet' is not registered by any enabled plugin (registered: digits,",
    ),
    "an unknown task": (
        _changed("task", {"name": "regression"}),
        "task.name: 'regression' is not registered by any enabled plugin (registered: "
        "classification, segmentation;",
    ),
    "an unknown timm model": (
        _changed("model.name", "vit_tiny_patch16_2244"),
        "model.name: timm has no model 'vit_tiny_patch16_2244' (close: vit_tiny_patch16_224",
    ),
    "a model no family covers, pruned": (
        _changed("model", {"name": "resnet18"}),
        "model.name: no model family covers 'resnet18' (families: vit: vit_*, deit_*; swin: "
        "swin_*; mobilevit: mobilevit_*, mobilevitv2_*; efficientformer: efficientformer_*, "
        "efficientformerv2_*; levit: levit_*; see vitopt plugins): torch_pruning works by a "
        "family's rules (plugins.disable turns it off)",
    ),
}


def _one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), output
    assert "Traceback" not in output
    return lines[0]


@pytest.mark.parametrize("text, fragment", BROKEN.values(), ids=BROKEN.keys())
def test_a_broken_campaign_is_one_line_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, fragment: str
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("campaign.yaml").write_text(text)
    result = CliRunner().invoke(main, ["run", "campaign.yaml", "--workers", "0"])
    assert result.exit_code == 1
    line = _one_error_line(result.output)
    assert line.startswith("Error: campaign.yaml:") and fragment in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["campaign.yaml"]


def test_a_method_the_model_cannot_take_is_refused_before_any_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A one-block ViT has no block to drop: the search space, built after the agent answers
    (its choices are the device's too), refuses a campaign fixed to a depth cut in one line."""
    monkeypatch.chdir(tmp_path)
    campaign = {
        **TINY,
        "model": {**TINY["model"], "kwargs": {**TINY["model"]["kwargs"], "depth": 1}},
        "search": {**TINY["search"], "space": {"prune.method": {"fixed": "depth"}}},
    }
    Path("campaign.yaml").write_text(yaml.safe_dump(campaign))
    result = CliRunner().invoke(main, ["run", "campaign.yaml", "--workers", "0"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1] == (
        "Error: campaign.yaml: search.space.prune.method: fixed to depth, which the model "
        "cannot take (the model takes none, heads, mlp, heads+mlp)"
    )
    study = optuna.load_study(study_name=None, storage="sqlite:///runs/tiny/study.db")
    assert study.trials == []


READERS = {
    "status": [],
    "report": ["--out", "review"],
    "export": ["--out", "exported"],
    "dashboard": ["--port", "0"],
}


@pytest.mark.parametrize("command", READERS)
def test_reading_a_study_that_is_not_there_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("campaign.yaml").write_text(yaml.safe_dump(TINY))
    result = CliRunner().invoke(main, [command, "campaign.yaml", *READERS[command]])
    assert result.exit_code == 1
    line = _one_error_line(result.output)
    assert "no study 'tiny' in sqlite:///runs/tiny/study.db: run 'vitopt run' first" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["campaign.yaml"]


def test_every_command_that_reads_a_study_takes_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("campaign.yaml").write_text(yaml.safe_dump(TINY))
    (tmp_path / "kept").mkdir()
    elsewhere = f"sqlite:///{tmp_path / 'kept' / 'elsewhere.db'}"
    study = optuna.create_study(study_name="tiny", storage=elsewhere)
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    runner = CliRunner()
    found = runner.invoke(main, ["status", "campaign.yaml", "--storage", elsewhere])
    assert found.exit_code == 0, found.output
    assert f"tiny ({elsewhere}): 1/5 trials" in found.output.replace("\n", "")
    for command, args in READERS.items():
        assert "--storage" in runner.invoke(main, [command, "--help"]).output, command
        if command == "dashboard":
            continue  # it would serve until stopped
        result = runner.invoke(main, [command, "campaign.yaml", *args, "--storage", elsewhere])
        assert "no study" not in result.output, (command, result.output)
    assert "--storage" in runner.invoke(main, ["baseline", "--help"]).output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["campaign.yaml", "kept"]


@pytest.mark.parametrize(
    "trial, fragment",
    [
        ("999", "no trial 999 in 'tiny': its trials are 0 to 1"),
        ("-1", "Invalid value for --trial: 'best' or a trial number, got '-1'"),
        ("abc", "Invalid value for --trial: 'best' or a trial number, got 'abc'"),
        ("1", "trial 1 is FAIL, not COMPLETE"),
    ],
)
def test_export_names_the_trial_it_cannot_rebuild(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trial: str, fragment: str
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("campaign.yaml").write_text(yaml.safe_dump(TINY))
    Path("runs/tiny").mkdir(parents=True)
    study = optuna.create_study(study_name="tiny", storage="sqlite:///runs/tiny/study.db")
    study.add_trial(optuna.trial.create_trial(value=1.0))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    result = CliRunner().invoke(main, ["export", "campaign.yaml", "--trial", trial, "--out", "x"])
    assert result.exit_code in (1, 2)
    assert fragment in result.output
    assert "Traceback" not in result.output
    assert not Path("x").exists()


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://nano:21", "nano:8765"])
def test_agent_commands_refuse_urls_that_are_not_http(url: str, tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    for args in (["agent", "ping", url], ["agent", "measure", url, str(model)]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1
        line = _one_error_line(result.output)
        assert f"{url!r} is not an agent URL: give http://HOST:PORT" in line


def test_a_refused_token_says_so(tmp_path: Path, vit_onnx: Path) -> None:
    agent = start_agent(tmp_path, "--backend", "onnxruntime", token="the-token")
    try:
        result = CliRunner().invoke(main, ["agent", "measure", agent.url, str(vit_onnx)])
    finally:
        agent.stop()
    assert result.exit_code == 1
    line = _one_error_line(result.output)
    assert "agent answered 401" in line and "Unauthorized" in line
    assert "give the agent's token (--token-file or $VITOPT_AGENT_TOKEN)" in line
