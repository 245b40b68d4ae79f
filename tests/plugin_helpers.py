"""Plugin packages for tests, installed as a user installs them (pip), but into a throwaway
``--target`` folder rather than the virtual environment: ``PYTHONPATH=TARGET`` makes a
subprocess see them (importlib.metadata reads ``TARGET/*.dist-info`` entry points), and
``monkeypatch.syspath_prepend(TARGET)`` does the same in-process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "vitopt-lowrank"

# A technique whose declared default changes the model (a default of 1.0 would not): what the
# campaign and the conformance check must refuse.
SHRINK = """
import torch
from optimizer.plugin_api import hookimpl
from optimizer.plugin_api import ParamSpec

class Shrink:
    name = "shrink"
    stage = "prune"
    def search_space(self):
        return [ParamSpec("shrink.scale", "float", 0.5, low=0.1, high=1.0)]
    def apply(self, subject, params, ctx):
        with torch.no_grad():  # a default of 1.0 would leave the model alone
            for weight in subject.parameters():
                weight.mul_(params["shrink.scale"])
        return subject

@hookimpl
def vitopt_register_techniques():
    return [Shrink()]
"""


def write_plugin_package(
    folder: Path, name: str, plugin_code: str, version: str = "0.1.0", entry_point: str = ""
) -> Path:
    """A minimal plugin distribution ``vitopt-NAME`` whose entry point ``NAME`` (or
    ``entry_point``) is the module ``vitopt_NAME.plugin`` holding ``plugin_code``."""
    package = f"vitopt_{name}"
    root = folder / f"vitopt-{name}"
    (root / package).mkdir(parents=True)
    (root / package / "__init__.py").write_text("")
    (root / package / "plugin.py").write_text(textwrap.dedent(plugin_code))
    (root / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""\
            [build-system]
            requires = ["setuptools>=68"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "vitopt-{name}"
            version = "{version}"

            [project.entry-points."vitopt.plugins"]
            {entry_point or name} = "{package}.plugin"

            [tool.setuptools.packages.find]
            include = ["{package}*"]
            """
        )
    )
    return root


def env_with(target: Path, **extra: str) -> dict[str, str]:
    """This environment, with ``target`` first on PYTHONPATH and $VITOPT_DISABLE_PLUGINS unset
    unless given."""
    env = {k: v for k, v in os.environ.items() if k != "VITOPT_DISABLE_PLUGINS"}
    path = [str(target), *filter(None, [env.get("PYTHONPATH")])]
    env["PYTHONPATH"] = os.pathsep.join(path)
    env.update(extra)
    return env


def vitopt(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 300
) -> subprocess.CompletedProcess:
    """``vitopt ARGS`` as a user runs it, in a separate process."""
    return subprocess.run(
        [sys.executable, "-m", "optimizer", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )
