from __future__ import annotations

from pathlib import Path

import pytest
from agent_helpers import RunningAgent, start_agent
from model_factory import export_tiny_vit


@pytest.fixture(scope="session")
def vit_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real timm ViT (random weights) exported to ONNX, once per test session."""
    return export_tiny_vit(tmp_path_factory.mktemp("models") / "vit.onnx")


@pytest.fixture(scope="session")
def vit_reference_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same ViT with four blocks instead of two: a slower model of the same inputs, the
    reference a paired job times the candidate ``vit_onnx`` against."""
    return export_tiny_vit(tmp_path_factory.mktemp("models") / "vit-deep.onnx", depth=4)


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> RunningAgent:
    """The real agent, onnxruntime backend, on a free loopback port."""
    running = start_agent(tmp_path_factory.mktemp("agent"), "--backend", "onnxruntime")
    yield running
    running.stop()
