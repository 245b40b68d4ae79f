"""The structural pruning plugin on real (tiny, random-weight) timm ViT and DeiT models: weights
are really removed, the pruned model runs, exports to ONNX and matches onnxruntime."""

from __future__ import annotations

import copy
import functools
import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch
from torch import nn
from torch.utils.data import DataLoader

from optimizer.plugin_api import StageContext, Technique
from optimizer.plugin_api.model_stats import (
    count_macs,
    count_params,
    example_input,
    iter_batches,
    onnx_size_bytes,
)
from optimizer.trial.export import export_onnx
from plugins.digits import load_digits_splits
from plugins.families.vit import VIT
from plugins.pruning import (
    METHODS,
    PruningUnsupported,
    TorchPruning,
    kept_mlp_width,
    prune_model,
    units_to_remove,
    vitopt_register_techniques,
)

# timm's shape asserts format tensors while the ONNX exporter traces; harmless here.
pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")

INPUT = (3, 32, 32)
DEPTH = 2
_BASE: dict[str, nn.Module] = {}


def tiny(name: str = "vit_tiny_patch16_224", **kwargs: object) -> nn.Module:
    """3 heads × 64, embed 192, MLP 768, 2 blocks, 64 patches: milliseconds per forward.

    Models are built once per name (timm's weight init is the slow part) and handed out as
    deep copies, so a test may change its model freely."""
    key = f"{name}{sorted(kwargs.items())}"
    if key not in _BASE:
        torch.manual_seed(0)
        args = {"img_size": 32, "patch_size": 4, "depth": DEPTH, "num_classes": 10, **kwargs}
        _BASE[key] = timm.create_model(name, pretrained=False, **args).eval()
    return copy.deepcopy(_BASE[key])


@functools.cache
def base_macs(name: str) -> int:
    return count_macs(tiny(name), INPUT)


def make_ctx(tmp_path: Path, train_loader: object = (), family: object = VIT) -> StageContext:
    return StageContext(
        input_shape=(1, *INPUT),  # batched, as the trial pipeline passes it
        num_classes=10,
        train_loader=train_loader,
        val_loader=(),
        task=None,
        device_info={},
        work_dir=tmp_path,
        seed=0,
        log=logging.getLogger("test.pruning"),
        model_family=family,
    )


def params(
    method: str, ratio: float = 0.5, importance: str = "magnitude", depth: float = 0.25
) -> dict[str, object]:
    return {
        "prune.method": method,
        "prune.ratio": ratio,
        "prune.importance": importance,
        "prune.depth": depth,
    }


def heads(model: nn.Module) -> list[int]:
    return [m.num_heads for m in model.modules() if isinstance(m, timm.layers.Attention)]


def mlp_widths(model: nn.Module) -> list[int]:
    return [m.fc1.out_features for m in model.modules() if isinstance(m, timm.layers.Mlp)]


def assert_onnx_matches(model: nn.Module, path: Path) -> None:
    x = torch.randn(1, *INPUT)
    export_onnx(model, x, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def digits_loader() -> DataLoader:
    return DataLoader(load_digits_splits(32).train, batch_size=16, shuffle=False)


def test_registered_and_search_space_valid() -> None:
    (technique,) = vitopt_register_techniques()
    assert isinstance(technique, Technique)
    assert (technique.name, technique.stage, technique.round_to) == ("torch_pruning", "prune", 8)
    specs = {spec.name: spec for spec in technique.search_space()}
    assert list(specs) == ["prune.method", "prune.depth", "prune.ratio", "prune.importance"]
    for spec in specs.values():
        spec.validate()
    assert specs["prune.method"].choices == METHODS
    assert specs["prune.method"].default == "none"  # the baseline prunes nothing
    assert (specs["prune.ratio"].low, specs["prune.ratio"].high) == (0.1, 0.7)
    assert specs["prune.ratio"].default == 0.3
    assert (specs["prune.depth"].low, specs["prune.depth"].high) == (0.1, 0.5)
    assert specs["prune.importance"].choices == ("magnitude", "taylor")
    widths = ["depth+heads+mlp", "depth+mlp", "heads", "heads+mlp", "mlp"]
    for name in ("prune.ratio", "prune.importance"):
        assert sorted(specs[name].when["prune.method"]) == widths
    assert sorted(specs["prune.depth"].when["prune.method"]) == [
        "depth",
        "depth+heads+mlp",
        "depth+mlp",
    ]


@pytest.mark.parametrize(
    ("name", "method"),
    [
        ("vit_tiny_patch16_224", "heads"),
        ("vit_tiny_patch16_224", "mlp"),
        ("vit_tiny_patch16_224", "heads+mlp"),
        ("deit_tiny_patch16_224", "heads+mlp"),
    ],
)
def test_prunes_for_real_and_exports(name: str, method: str, tmp_path: Path) -> None:
    original = tiny(name)
    before_params, before_macs = count_params(original), base_macs(name)
    before_state = {k: v.clone() for k, v in original.state_dict().items()}

    pruned = TorchPruning().apply(original, params(method), make_ctx(tmp_path))

    assert pruned is not original
    assert count_params(pruned) < before_params
    assert count_macs(pruned, INPUT) < before_macs
    # The caller's model is untouched (apply prunes a copy).
    assert count_params(original) == before_params
    assert all(torch.equal(v, before_state[k]) for k, v in original.state_dict().items())
    # Heads: 3 -> 1 at ratio 0.5 (two removed, nearest whole head); MLP 768 -> 384.
    assert heads(pruned) == [1 if "heads" in method else 3] * DEPTH
    assert mlp_widths(pruned) == [384 if "mlp" in method else 768] * DEPTH
    assert all(width % 8 == 0 for width in mlp_widths(pruned))
    # The residual stream is never pruned.
    assert pruned.pos_embed.shape == original.pos_embed.shape
    assert pruned.patch_embed.proj.out_channels == 192
    assert pruned.head.in_features == 192
    for attn in (m for m in pruned.modules() if isinstance(m, timm.layers.Attention)):
        assert attn.attn_dim == attn.num_heads * attn.head_dim == attn.qkv.out_features // 3
        assert attn.head_dim == 64
        assert attn.proj.in_features == attn.attn_dim
        assert attn.scale == pytest.approx(64**-0.5)
    with torch.no_grad():
        assert pruned(torch.randn(4, *INPUT)).shape == (4, 10)
    assert_onnx_matches(pruned, tmp_path / "pruned.onnx")


def test_pruning_dead_heads_and_channels_keeps_the_function(tmp_path: Path) -> None:
    """Zero two of three heads and half the MLP channels of every block: magnitude ranking must
    remove exactly those, so the pruned model computes what the zeroed one did. This checks the
    right rows/columns go and timm's Attention reshapes by the updated attributes."""
    model = tiny()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for block in model.blocks:
            qkv, proj = block.attn.qkv, block.attn.proj
            for head in (0, 2):
                for part in range(3):  # q, k and v rows of this head
                    rows = slice(part * 192 + head * 64, part * 192 + (head + 1) * 64)
                    qkv.weight[rows] = 0
                    qkv.bias[rows] = 0
                proj.weight[:, head * 64 : (head + 1) * 64] = 0
            dead = torch.randperm(768, generator=gen)[:384]
            block.mlp.fc1.weight[dead] = 0
            block.mlp.fc1.bias[dead] = 0  # GELU(0) = 0
            block.mlp.fc2.weight[:, dead] = 0
    x = torch.randn(4, *INPUT)
    with torch.no_grad():
        want = model(x)

    prune_model(model, VIT, method="heads+mlp", ratio=0.5, example=x[:1])

    assert heads(model) == [1] * DEPTH
    assert mlp_widths(model) == [384] * DEPTH
    for block in model.blocks:  # what is left is the live head and live channels
        assert block.attn.qkv.weight.abs().sum(dim=1).min() > 0
        assert block.mlp.fc1.weight.abs().sum(dim=1).min() > 0
    with torch.no_grad():
        torch.testing.assert_close(model(x), want, atol=1e-5, rtol=1e-5)


def test_none_returns_model_unchanged(tmp_path: Path) -> None:
    model = tiny()
    before = count_params(model)
    out = TorchPruning().apply(model, params("none"), make_ctx(tmp_path))
    assert out is model
    assert count_params(out) == before
    assert heads(out) == [3] * DEPTH and mlp_widths(out) == [768] * DEPTH


def test_taylor_importance_with_digits(tmp_path: Path, digits_loader: DataLoader) -> None:
    model = tiny("deit_tiny_patch16_224")
    for param in model.blocks[0].parameters():  # a partly frozen model stays so
        param.requires_grad_(False)
    model.train()
    before = count_params(model)
    technique = TorchPruning(score_batches=2)

    pruned = technique.apply(
        model, params("heads+mlp", 0.5, "taylor"), make_ctx(tmp_path, digits_loader)
    )

    assert count_params(pruned) < before
    assert heads(pruned) == [1] * DEPTH and mlp_widths(pruned) == [384] * DEPTH
    assert pruned.training  # mode restored
    assert all(p.grad is None for p in pruned.parameters())  # no stale gradients for training
    assert not any(p.requires_grad for p in pruned.blocks[0].parameters())
    assert all(p.requires_grad for p in pruned.blocks[1].parameters())
    # A gradient ranking keeps other channels than a magnitude one on the same weights.
    by_magnitude = technique.apply(model, params("heads+mlp", 0.5), make_ctx(tmp_path))
    assert not torch.equal(by_magnitude.blocks[1].mlp.fc1.weight, pruned.blocks[1].mlp.fc1.weight)


def test_taylor_without_batches_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="taylor"):
        TorchPruning().apply(tiny(), params("mlp", 0.5, "taylor"), make_ctx(tmp_path, []))


@pytest.mark.parametrize("method", ["heads", "mlp"])  # heads+mlp removes the sum of both
def test_higher_ratio_removes_more(method: str, tmp_path: Path) -> None:
    technique, ctx, model = TorchPruning(), make_ctx(tmp_path), tiny()
    low = technique.apply(model, params(method, 0.1), ctx)
    high = technique.apply(model, params(method, 0.7), ctx)
    assert count_params(high) < count_params(low) < count_params(model)


def test_round_to_is_honoured(tmp_path: Path) -> None:
    pruned = TorchPruning(round_to=32).apply(tiny(), params("mlp", 0.3), make_ctx(tmp_path))
    assert mlp_widths(pruned) == [512] * DEPTH  # 768 * 0.7 = 537.6 -> down to 512


def test_width_and_head_rules() -> None:
    assert [units_to_remove(3, r) for r in (0.1, 0.3, 0.5, 0.7)] == [1, 1, 2, 2]  # keeps >= 1
    assert [units_to_remove(12, r) for r in (0.1, 0.3, 0.5, 0.7)] == [1, 4, 6, 8]
    assert units_to_remove(1, 0.7) == 0
    assert [units_to_remove(12, r) for r in (0.1, 0.25, 0.5)] == [1, 3, 6]  # blocks of a stack
    assert kept_mlp_width(768, 0.3, 8) == 536
    assert kept_mlp_width(1536, 0.5, 8) == 768
    assert kept_mlp_width(20, 0.7, 8) == 8  # never below one multiple


def test_a_model_no_family_covers_is_refused(tmp_path: Path) -> None:
    import torchvision

    resnet = torchvision.models.resnet18(num_classes=10)
    with pytest.raises(PruningUnsupported, match=r"^ResNet: no model family covers it"):
        TorchPruning().apply(resnet, params("heads+mlp"), make_ctx(tmp_path, family=None))
    # Handed to a family whose blocks it lacks, the family's rules find nothing to remove.
    with pytest.raises(
        PruningUnsupported, match=r"ResNet: .*vit model has none.*no timm Attention"
    ):
        prune_model(resnet, VIT, method="heads", ratio=0.5, example=torch.randn(1, *INPUT))
    with pytest.raises(PruningUnsupported, match=r"ResNet: .*no MLP or conv block"):
        prune_model(resnet, VIT, method="mlp", ratio=0.5, example=torch.randn(1, *INPUT))
    with pytest.raises(PruningUnsupported, match=r"ResNet: .*drops whole blocks.*no block stack"):
        prune_model(resnet, VIT, method="depth", depth=0.5, example=torch.randn(1, *INPUT))
    assert issubclass(PruningUnsupported, ValueError)
    # "none" is a no-op whatever the model.
    assert TorchPruning().apply(resnet, params("none"), make_ctx(tmp_path, family=None)) is resnet


def test_single_head_model_is_refused_for_heads(tmp_path: Path) -> None:
    model = tiny(embed_dim=64, num_heads=1)
    with pytest.raises(PruningUnsupported, match="single head"):
        TorchPruning().apply(model, params("heads"), make_ctx(tmp_path))


def test_qk_norm_heads_prune_and_gated_attention_is_refused(tmp_path: Path) -> None:
    model = tiny(qk_norm=True)
    pruned = TorchPruning().apply(model, params("heads", 0.5), make_ctx(tmp_path))
    assert heads(pruned) == [1] * DEPTH
    assert isinstance(pruned.blocks[0].attn.q_norm, nn.LayerNorm)  # whole heads: still head_dim
    assert pruned.blocks[0].attn.q_norm.normalized_shape == (64,)
    with torch.no_grad():
        assert pruned(torch.randn(2, *INPUT)).shape == (2, 10)

    gated = tiny()
    for block in gated.blocks:
        block.attn = timm.layers.Attention(192, num_heads=3, qkv_bias=True, gated=True)
    with pytest.raises(PruningUnsupported, match="gated"):
        TorchPruning().apply(gated, params("heads"), make_ctx(tmp_path))


def test_bad_parameters_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"prune\.method"):
        TorchPruning().apply(tiny(), params("channels"), make_ctx(tmp_path))
    with pytest.raises(ValueError, match=r"prune\.importance"):
        TorchPruning().apply(tiny(), params("mlp", 0.5, "hessian"), make_ctx(tmp_path))
    with pytest.raises(ValueError, match="round_to"):
        TorchPruning(round_to=0)


def test_model_stats(tmp_path: Path) -> None:
    model = tiny()
    assert count_params(model) == sum(p.numel() for p in model.parameters())
    macs = count_macs(model, INPUT)
    assert macs == count_macs(model, (1, *INPUT)) > 0
    # Exactly: the patch embedding, per block 65 tokens x (qkv + proj + fc1 + fc2) and the
    # attention's two matmuls (65 x 65 scores of 192 channels, then the weighted values), and
    # the classifier on the class token.
    tokens, dim, patches = 65, 192, 64
    embedding = patches * dim * 3 * 4 * 4
    blocks = DEPTH * (tokens * dim * (3 * dim + dim + 2 * 768) + 2 * tokens * tokens * dim)
    assert macs == embedding + blocks + dim * 10
    assert example_input(INPUT).shape == (1, *INPUT)
    with pytest.raises(ValueError):
        example_input((2, *INPUT))

    path = export_onnx(model, torch.randn(1, *INPUT), tmp_path / "m.onnx")
    assert onnx_size_bytes(path) == path.stat().st_size
    # External data (as large quantized models are saved) is counted too.
    external = tmp_path / "ext" / "m.onnx"
    external.parent.mkdir()
    onnx.save(onnx.load(str(path)), str(external), save_as_external_data=True, location="w.bin")
    assert (
        onnx_size_bytes(external)
        == external.stat().st_size + (external.parent / "w.bin").stat().st_size
    )
    assert onnx_size_bytes(external) > path.stat().st_size // 2


def test_iter_batches_limits_and_moves() -> None:
    data = [(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), "extra")] * 5
    got = list(iter_batches(data, 3, "cpu"))
    assert len(got) == 3 and all(x.shape == (2, 3) for x, _ in got)
    with pytest.raises(TypeError):
        list(iter_batches([torch.zeros(2)], 1))


def test_depth_drops_the_least_influential_blocks_and_exports(
    tmp_path: Path, digits_loader: DataLoader
) -> None:
    """Of 4 blocks, the one whose residual branches output nothing (it passes its input on) is
    the one a 0.25 depth cut drops: the model computes what it did, exports and matches."""
    model = tiny(depth=4)
    with torch.no_grad():
        for layer in (model.blocks[2].attn.proj, model.blocks[2].mlp.fc2):
            layer.weight.zero_()
            layer.bias.zero_()
    x = torch.randn(2, *INPUT)
    with torch.no_grad():
        want = model(x)
    kept = [model.blocks[i] for i in (0, 1, 3)]

    pruned = TorchPruning().apply(
        model, params("depth", depth=0.25), make_ctx(tmp_path, digits_loader)
    )

    assert isinstance(pruned.blocks[2], nn.Identity)
    assert [type(b).__name__ for b in pruned.blocks] == ["Block", "Block", "Identity", "Block"]
    names = {name for name, _ in pruned.named_parameters()}
    assert "blocks.3.attn.qkv.weight" in names and not any(n.startswith("blocks.2.") for n in names)
    assert count_macs(pruned, INPUT) < 0.8 * count_macs(model, INPUT)
    for block, original in zip([pruned.blocks[i] for i in (0, 1, 3)], kept, strict=True):
        torch.testing.assert_close(block.attn.qkv.weight, original.attn.qkv.weight)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), want, atol=1e-5, rtol=1e-5)
    assert_onnx_matches(pruned, tmp_path / "depth.onnx")
    # Deeper cuts drop more, never the whole stack.
    deep = TorchPruning().apply(
        model, params("depth", depth=0.5), make_ctx(tmp_path, digits_loader)
    )
    assert sum(isinstance(b, nn.Identity) for b in deep.blocks) == 2
    with pytest.raises(PruningUnsupported, match="single block"):
        TorchPruning().apply(tiny(depth=1), params("depth"), make_ctx(tmp_path, digits_loader))
    with pytest.raises(ValueError, match="influence on training batches"):
        TorchPruning().apply(tiny(), params("depth", depth=0.5), make_ctx(tmp_path, []))
    with pytest.raises(ValueError, match=r"prune\.depth"):
        prune_model(tiny(), VIT, method="depth", depth=1.0, example=x[:1])


def test_depth_with_heads_and_widths_cuts_the_kept_blocks(
    tmp_path: Path, digits_loader: DataLoader
) -> None:
    model = tiny("deit_tiny_patch16_224", depth=4)
    pruned = TorchPruning().apply(
        model,
        params("depth+heads+mlp", 0.5, "taylor", depth=0.25),
        make_ctx(tmp_path, digits_loader),
    )
    assert sum(isinstance(b, nn.Identity) for b in pruned.blocks) == 1
    assert heads(pruned) == [1] * 3 and mlp_widths(pruned) == [384] * 3
    widths_only = TorchPruning().apply(model, params("heads+mlp", 0.5), make_ctx(tmp_path))
    assert count_macs(pruned, INPUT) < 0.8 * count_macs(widths_only, INPUT)
    assert_onnx_matches(pruned, tmp_path / "both.onnx")
