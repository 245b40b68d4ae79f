"""The agent stays installable alone on a Jetson: Python 3.6 syntax, stdlib only, own setup.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pip_target import pip_install

REPO = Path(__file__).resolve().parent.parent
VERMIN = [
    str(Path(sys.executable).with_name("vermin")),
    "--target=3.6-",
    "--violations",
    "--no-tips",
]


def test_agent_code_is_valid_on_python_3_6() -> None:
    run = subprocess.run([*VERMIN, str(REPO / "jetson_agent")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_3_6_check_fails_on_a_3_8_construct(tmp_path: Path) -> None:
    (tmp_path / "new.py").write_text("if (n := len('abc')) > 2:\n    print(n)\n")
    run = subprocess.run([*VERMIN, str(tmp_path)], capture_output=True, text=True)
    assert run.returncode != 0
    assert "3.8" in run.stdout


def test_agent_imports_nothing_from_the_rest_of_vitopt() -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{number}"
        for path in (REPO / "jetson_agent").rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if line.lstrip().startswith(
            ("from optimizer", "import optimizer", "from plugins", "import plugins")
        )
    ]
    assert offenders == []


@pytest.mark.slow
def test_pip_installs_the_agent_folder_alone(tmp_path: Path) -> None:
    # From a copy of the folder, as it travels to a Jetson (setuptools builds in place).
    target = tmp_path / "site"
    pip_install(REPO / "jetson_agent", target)
    assert (target / "jetson_agent" / "backends" / "onnxruntime_backend.py").exists()
    run = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            f"import sys; sys.path.insert(0, {str(target)!r}); import jetson_agent, "
            "jetson_agent.__main__ as m; print(jetson_agent.__file__); m.main(['--version'])",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert str(target) in run.stdout
    assert "jetson_agent 0.1.0" in run.stdout
