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


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the packages under ``root`` (first on the path, so a copy is what is
    read, not the installed tree)."""
    env = dict(os.environ, PYTHONPATH=str(root))
    command = [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"]
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)


def test_the_tree_keeps_its_layering_contracts() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{KEPT_AGENT} KEPT" in result.stdout
    assert f"{KEPT_CORE} KEPT" in result.stdout


def test_an_upward_import_breaks_its_contract(tmp_path: Path) -> None:
    for package in PACKAGES:
        shutil.copytree(
            REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    figures = tmp_path / "optimizer" / "figures.py"
    figures.write_text(figures.read_text() + "\nimport plugins.pruning  # planted\n")
    stats = tmp_path / "jetson_agent" / "stats.py"
    stats.write_text(stats.read_text() + "\nfrom optimizer import config  # planted\n")

    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{KEPT_AGENT} BROKEN" in result.stdout
    assert f"{KEPT_CORE} BROKEN" in result.stdout
    assert "optimizer.figures -> plugins.pruning" in result.stdout
    assert "jetson_agent.stats -> optimizer.config" in result.stdout
