"""Install a package folder as a user would (pip), into a throwaway ``--target`` folder rather
than the test environment."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def pip_install(package: Path, target: Path) -> None:
    """``pip install --no-deps --no-build-isolation --target TARGET`` of a copy of ``package``
    (setuptools writes build/ and *.egg-info/ next to the sources), offline."""
    build = target.parent / f"build-{package.name}"
    shutil.rmtree(build, ignore_errors=True)
    shutil.copytree(package, build, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(build),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
