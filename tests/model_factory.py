"""Real ONNX models for tests: a timm ViT, and graphs that misbehave on purpose."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper


def export_tiny_vit(path: Path, img_size: int = 32, depth: int = 2) -> Path:
    """A timm ViT small enough to time in milliseconds on a CPU (random weights: only the
    architecture matters for latency; more ``depth`` makes a slower model of the same inputs)."""
    import timm
    import torch

    from optimizer.trial.export import export_onnx

    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=img_size,
        patch_size=4,
        depth=depth,
        num_classes=10,
    )
    return export_onnx(model, torch.randn(1, 3, img_size, img_size), path)


def endless_loop_model(path: Path) -> Path:
    """A valid model whose Loop runs 10^15 iterations: it really hangs the runtime, which
    is what the agent's run timeout must survive."""
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["v_in", "one"], ["v_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1]),
        ],
        [one],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trip", "cond", "x"], ["y"], body=body)],
        "endless",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [
            helper.make_tensor("trip", TensorProto.INT64, [], [10**15]),
            helper.make_tensor("cond", TensorProto.BOOL, [], [True]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def constant_bomb_model(path: Path, side: int = 4096) -> Path:
    """A model of ~160 bytes whose constant folding makes a ``side``² float tensor (64 MB at
    4096): onnxruntime's optimised graph, which the agent caches, holds it."""
    graph = helper.make_graph(
        [
            helper.make_node(
                "ConstantOfShape",
                ["shape"],
                ["big"],
                value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]),
            ),
            helper.make_node("Add", ["x", "big"], ["y"]),
        ],
        "bomb",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [side, side])],
        [helper.make_tensor("shape", TensorProto.INT64, [2], [side, side])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def string_input_model(path: Path) -> Path:
    """A valid model whose input is a string tensor: nothing the agent can feed."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["same"])],
        "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, [1])],
        [helper.make_tensor_value_info("same", TensorProto.STRING, [1])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path
