"""The layering contracts in pyproject.toml ([tool.importlinter]), checked by import-linter on the
real tree, and shown to fail on a copy with an import planted against each."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("optimizer", "plugins", "jetson_agent")
KEPT_AGENT = "jetson_agent stands alone: it installs on a Jetson without the rest"
KEPT_CORE = "the core imports no plugin: built-ins are plugins like any other"
LAYERS = "the core's layers follow the data flow: none imports a layer above it"
PLUGIN_API = "plugins import the plugin API only: the rest of the core moves without notice"
OLD_PATHS = "the core imports the plugin API from optimizer.plugin_api, not its old paths"
CONTRACTS = (KEPT_AGENT, KEPT_CORE, LAYERS, PLUGIN_API, OLD_PATHS)
# (file, planted line, the import lint-imports must report, the contract it breaks)
PLANTED = (
    (
        "optimizer/campaign/figures.py",
        "import plugins.pruning",
        "optimizer.campaign.figures -> plugins.pruning",
        KEPT_CORE,
    ),
    (
        "jetson_agent/stats.py",
        "from optimizer import config",
        "jetson_agent.stats -> optimizer.config",
        KEPT_AGENT,
    ),
    (
        "optimizer/trial/export.py",
        "from optimizer.campaign import study",
        "optimizer.trial.export -> optimizer.campaign.study",
        LAYERS,
    ),
    (
        "plugins/digits.py",
        "from optimizer.trial import pipeline",
        "plugins.digits -> optimizer.trial.pipeline",
        PLUGIN_API,
    ),
    (
        "optimizer/device/pool.py",
        "from optimizer import technique",
        "optimizer.device.pool -> optimizer.technique",
        OLD_PATHS,
    ),
)


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the packages under ``root`` (first on the path, so a copy is what is
    read, not the installed tree)."""
    env = dict(os.environ, PYTHONPATH=str(root))
    command = [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"]
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)


def test_the_tree_keeps_its_layering_contracts() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    for contract in CONTRACTS:
        assert f"{contract} KEPT" in result.stdout


def test_an_upward_import_breaks_its_contract(tmp_path: Path) -> None:
    for package in PACKAGES:
        shutil.copytree(
            REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    for file, line, _, _ in PLANTED:
        path = tmp_path / file
        path.write_text(path.read_text() + f"\n{line}  # planted\n")

    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    for _, _, reported, contract in PLANTED:
        assert f"{contract} BROKEN" in result.stdout
        assert reported in result.stdout


def test_reading_a_study_and_the_plugin_api_load_no_model_library() -> None:
    """``vitopt status`` (and the plugin API a plugin imports first) start without torch, timm,
    Ray or onnxruntime: the study's records are plain data."""
    code = (
        "import sys, optimizer.cli.status_commands, optimizer.plugin_api\n"
        "print(sorted(m for m in ('torch', 'timm', 'ray', 'onnxruntime') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
