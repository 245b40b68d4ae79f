"""Standalone packaging of the device agent: ``pip install ./jetson_agent`` on the device.

Plain setuptools with setup.py (no pyproject) so that JetPack 4.6's pip on Python 3.6 installs it.
The folder is the package (package_dir maps it), so copying the folder also works.
The guard keeps this file inert when it is imported as part of the vitopt distribution.
"""

import os
import re

if __name__ == "__main__":
    from setuptools import setup

    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "__init__.py")) as handle:
        version = re.search(r'__version__ = "([^"]+)"', handle.read()).group(1)
    setup(
        name="jetson-agent",
        version=version,
        description="vitopt's device agent: measures ONNX models on a Jetson over HTTP",
        packages=["jetson_agent", "jetson_agent.backends", "jetson_agent.telemetry"],
        package_dir={"jetson_agent": ".", "jetson_agent.backends": "backends"},
        python_requires=">=3.6",
        extras_require={"onnxruntime": ["onnxruntime", "numpy"], "onnx": ["onnx"]},
        entry_points={"console_scripts": ["jetson-agent=jetson_agent.__main__:main"]},
    )
