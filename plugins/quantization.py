"""Post-training quantization: the ``quantize`` stage, on the exported ONNX graph.

``quantize.precision`` is what the device runs: ``fp32``, ``fp16`` (a TensorRT builder flag:
the graph stays fp32 and only the artifact's precision changes) or ``int8``. An int8 graph is
made by one of the recipes below, chosen by ``quantize.method``; the search offers each recipe
only on the runtimes that run it faster than fp32 (:meth:`Int8Quantization.device_choices`,
from the agent's ``GET /v1/info``):

* TensorRT, trtexec, onnxruntime with a CUDA or TensorRT provider: ``qdq``, NNCF's symmetric
  Q/DQ graph (``int8_nncf``);
* onnxruntime on a CPU: ``dynamic``, ``dynamic_per_channel`` and ``static``, onnxruntime's own
  quantizer restricted to the weight MatMuls (``int8_onnxruntime``).

Whatever the recipe, the int8 file is what the campaign evaluates for accuracy and what the
agent times: accuracy is always measured on the graph that ships.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from optimizer.plugin_api import OnnxArtifact, ParamSpec, StageContext, hookimpl

from .int8_nncf import QdqRecipe
from .int8_onnxruntime import DynamicRecipe, StaticRecipe
from .int8_recipe import Int8Job, Recipe, calibration_items, graph_input, onnx_op_counts
from .int8_target import int8_target

PRECISION_PARAM = "quantize.precision"
METHOD_PARAM = "quantize.method"
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
RECIPES: tuple[Recipe, ...] = (
    QdqRecipe(),
    DynamicRecipe(),
    DynamicRecipe(per_channel=True),
    StaticRecipe(),
)

# The ops an int8 graph's log line counts: what shows which layers were really quantized.
INTEGER_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "QLinearMatMul",
        "ConvInteger",
        "QLinearConv",
    }
)


def _default_opset(model: Any) -> int | None:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return None


class Int8Quantization:
    """int8 post-training quantization of the ONNX graph by one of ``recipes``; fp16/fp32 pass
    through.

    ``calibration_size`` is only the fallback for a context without one: the campaign's
    ``data.calibration_size`` arrives as :attr:`StageContext.calibration_size` and wins.
    """

    name = "int8"
    stage = "quantize"

    def __init__(self, calibration_size: int = 128, *, recipes: Sequence[Recipe] = RECIPES):
        if calibration_size < 1:
            raise ValueError("calibration_size must be at least 1")
        if not recipes:
            raise ValueError("at least one int8 recipe is needed")
        self.calibration_size = calibration_size
        self.recipes = {recipe.name: recipe for recipe in recipes}

    def search_space(self) -> Sequence[ParamSpec]:
        methods = "; ".join(f"{r.name}: {r.help}" for r in self.recipes.values())
        return [
            ParamSpec(
                PRECISION_PARAM,
                "categorical",
                "fp32",
                choices=PRECISIONS,
                help="deployed precision: fp16 is a TensorRT builder flag, int8 a "
                "post-training-quantized graph (see quantize.method)",
            ),
            ParamSpec(
                METHOD_PARAM,
                "categorical",
                next(iter(self.recipes)),
                choices=tuple(self.recipes),
                when={PRECISION_PARAM: ["int8"]},
                help=f"how the int8 graph is made, offered per device runtime: {methods}",
            ),
        ]

    def device_choices(self, device_info: Mapping[str, Any]) -> dict[str, list[Any]]:
        """The precisions the device reports and the recipes offered for its runtime."""
        target = int8_target(device_info)
        runs = device_info.get("precisions", PRECISIONS)
        return {
            PRECISION_PARAM: [p for p in PRECISIONS if p in runs],
            METHOD_PARAM: [r.name for r in self.recipes.values() if r.offered(target)],
        }

    def apply(
        self, subject: OnnxArtifact, params: Mapping[str, Any], ctx: StageContext
    ) -> OnnxArtifact:
        precision = params[PRECISION_PARAM]
        if precision == "fp32":
            return subject
        if precision == "fp16":
            return OnnxArtifact(subject.path, "fp16")
        if precision != "int8":
            raise ValueError(f"{PRECISION_PARAM}: unknown precision {precision!r}")
        method = params[METHOD_PARAM]
        recipe = self.recipes.get(method)
        if recipe is None:
            raise ValueError(
                f"{METHOD_PARAM}: unknown method {method!r} (known: {', '.join(self.recipes)})"
            )
        return self.quantize(subject, recipe, ctx)

    def quantize(self, artifact: OnnxArtifact, recipe: Recipe, ctx: StageContext) -> OnnxArtifact:
        """Write ``<work_dir>/<input stem>.int8.onnx`` with ``recipe`` (the stem keeps the
        pipeline's two exports of one trial, ``architecture`` and ``candidate``, apart)."""
        import onnx

        started = time.perf_counter()
        model = onnx.load(str(artifact.path))
        opset = _default_opset(model)
        input_name, batch = graph_input(model)
        count = ctx.calibration_size or self.calibration_size
        job = Int8Job(
            target=int8_target(ctx.device_info),
            input_name=input_name,
            calibration=lambda: calibration_items(ctx.train_loader, count, batch),
            calibration_method=ctx.calibration_method,
        )
        out = Path(ctx.work_dir) / f"{artifact.path.stem}.int8.onnx"
        out.parent.mkdir(parents=True, exist_ok=True)
        done = recipe.quantize(artifact.path, out, job)
        quantized = onnx.load(str(out))
        if _default_opset(quantized) != opset:
            # Not seen with NNCF 3.4 or onnxruntime 1.32, which keep the opset imports; checked
            # because the Jetson Nano's TensorRT 8.2 parses opset <= 16 only.
            ctx.log.warning(
                "int8: %s changed the opset from %s to %s",
                recipe.name,
                opset,
                _default_opset(quantized),
            )
        onnx.checker.check_model(quantized, full_check=True)
        ops = onnx_op_counts(quantized)
        integer_ops = {k: v for k, v in sorted(ops.items()) if k in INTEGER_OPS}
        ctx.log.info(
            "int8 (%s): %s; %s; %.1f s -> %s",
            recipe.name,
            done,
            ", ".join(f"{v} {k}" for k, v in integer_ops.items()),
            time.perf_counter() - started,
            out,
        )
        return OnnxArtifact(out, "int8")


@hookimpl
def vitopt_register_techniques() -> list[Int8Quantization]:
    return [Int8Quantization()]
