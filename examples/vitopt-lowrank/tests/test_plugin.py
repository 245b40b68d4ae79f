"""Tests of the 'lowrank' technique, found through vitopt's plugin manager as a campaign finds
it (so the package must be installed: ``pip install -e .``), on a tiny timm ViT."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest
import torch
from optimizer.plugin_testing import (
    check_technique,
    default_params,
    find_technique,
    stage_context,
    tiny_onnx,
    tiny_vit,
)
from torch import nn

from vitopt_lowrank.plugin import factorise, kept_rank

NAME = "lowrank"


def test_is_installed_and_declares_do_nothing_defaults() -> None:
    technique = find_technique(NAME)
    assert technique.stage == "prune"
    defaults = default_params(technique)
    assert defaults == {"lowrank.enabled": False, "lowrank.rank_ratio": 0.5}


def test_keeps_the_technique_contract(tmp_path: Path) -> None:
    check_technique(NAME, tmp_path, {"lowrank.enabled": True, "lowrank.rank_ratio": 0.25})


def test_the_defaults_leave_the_model_unchanged(tmp_path: Path) -> None:
    technique = find_technique(NAME)
    model = tiny_vit()
    result = technique.apply(model, default_params(technique), stage_context(tmp_path))
    assert result is model
    assert all(isinstance(block.mlp.fc1, nn.Linear) for block in model.blocks)


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.75])
def test_enabled_factorises_every_mlp_layer_into_fewer_weights(
    tmp_path: Path, ratio: float
) -> None:
    technique = find_technique(NAME)
    model = tiny_vit()  # width 64, MLP hidden 256: full rank 64
    params = {**default_params(technique), "lowrank.enabled": True, "lowrank.rank_ratio": ratio}
    result = technique.apply(model, params, stage_context(tmp_path))
    rank = kept_rank(64, 256, ratio)
    assert rank % 8 == 0
    for block in result.blocks:
        for layer in (block.mlp.fc1, block.mlp.fc2):
            assert isinstance(layer, nn.Sequential)
            assert [m.out_features for m in layer] == [rank, layer[1].out_features]
    assert sum(p.numel() for p in result.parameters()) < sum(p.numel() for p in model.parameters())
    assert isinstance(model.blocks[0].mlp.fc1, nn.Linear)  # the input model is untouched


def test_full_rank_reproduces_the_layer() -> None:
    torch.manual_seed(0)
    dense = nn.Linear(24, 40)
    x = torch.randn(5, 24)
    assert torch.allclose(factorise(dense, 24)(x), dense(x), atol=1e-5)
    # A truncation is an approximation whose error shrinks with the rank.
    errors = [(factorise(dense, r)(x) - dense(x)).norm() for r in (4, 12, 20)]
    assert errors[0] > errors[1] > errors[2]


def test_factorised_model_exports_to_onnx_and_matches_torch(tmp_path: Path) -> None:
    technique = find_technique(NAME)
    ctx = stage_context(tmp_path)
    params = {**default_params(technique), "lowrank.enabled": True, "lowrank.rank_ratio": 0.25}
    model = technique.apply(tiny_vit(), params, ctx).eval()
    artifact = tiny_onnx(tmp_path, model)
    image = torch.randn(ctx.input_shape)
    session = ort.InferenceSession(str(artifact.path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": image.numpy()})
    with torch.no_grad():
        expected = model(image).numpy()
    assert logits.shape == (1, ctx.num_classes)
    assert abs(logits - expected).max() < 1e-4


def test_a_model_without_mlps_fails_with_a_clear_reason(tmp_path: Path) -> None:
    technique = find_technique(NAME)
    params = {**default_params(technique), "lowrank.enabled": True}
    with pytest.raises(ValueError, match="no MLP with fc1/fc2"):
        technique.apply(nn.Sequential(nn.Linear(4, 4)), params, stage_context(tmp_path))
