"""int8 recipes on the CPU agent: each recipe's paired speedup over fp32, its top-1 change on the
digits demo, and what its graph runs as.

Models (``MODELS``): three timm ``vit_tiny_patch16_224`` geometries with seeded random weights
(latency depends on the architecture only), exported as a campaign exports (opset 16, batch 1):
the demo's (32 px, patch 4, 4 blocks of width 128), ViT-Tiny at 96 px with patch 8 (144 tokens)
and ViT-Tiny at 224 px (196 tokens); and the digits demo's own baseline
(``search_spaces/demo_digits.yaml``), trained once and cached under ``runs/demo_digits/`` as
``vitopt run`` caches it (run from the repository root to reuse README command 1's), whose
test-split top-1 is taken on every int8 graph with the campaign's own task code.

Each recipe of ``plugins/quantization.py`` quantizes each model through the technique with the
CPU agent's ``/v1/info``, as a campaign's trial would (random calibration images for the random
models, the campaign's calibration split for the demo). ``qdq`` is not offered on a CPU
agent; it is here as *before*: the graph vitopt shipped to the CPU agent until this recipe
table existed. Every int8 graph is then timed by a real loopback agent (onnxruntime,
``JETSON_AGENT_ORT_THREADS=1``, ``use_cache: false``) in one paired job against its fp32 model:
alternating blocks of >= 50 ms, >= 10 rounds, until the speedup's 95 % interval is +-2 % or
``--max-time-s``. ``--passes N`` repeats every job N times (models and recipes interleaved in
each pass); the speedup reported is the median over passes, next to each job's interval.
Nothing trains while anything times (the baseline, when not cached, trains first).

``ops`` gives each graph's integer ops as written, and ``runs_as`` what onnxruntime's CPU
session makes of it after its graph optimizations (``ORT_ENABLE_ALL``): matrix products left in
float (``MatMul``, ``Gemm``, ``FusedMatMul``) against int8 kernels (``DynamicQuantizeMatMul``,
``MatMulIntegerToFloat``, ``QLinearMatMul`` ...) and the standalone quantize/dequantize ops left.
``qdq_fusion`` times, in this process (paired, interleaved blocks), the ``qdq`` graph of each
random model with onnxruntime's default optimizations and with its ``MatMulAddFusion``
disabled, against fp32: the finding behind the recipe table (``plugins/int8_nncf.py``).

    .venv/bin/python bench/quantization.py [--quick] [--passes 1] [--max-time-s 10]
        [--calibration-size 32] [--models demo_32px vit_tiny_96px ...]

``summary``: per model the best offered recipe's speedup, against the targets (>= 1.4x at 224 px,
>= 1.8x at 96 px; ``targets_met``), and the largest top-1 drop of an offered recipe on the demo
(target <= 1 point).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODELS: dict[str, dict[str, int]] = {
    "demo_32px": {"img_size": 32, "patch_size": 4, "depth": 4, "embed_dim": 128, "num_heads": 4},
    "vit_tiny_96px": {"img_size": 96, "patch_size": 8},
    "vit_tiny_224px": {"img_size": 224},
}
DEMO = "digits_demo"
DEMO_CAMPAIGN = Path("search_spaces/demo_digits.yaml")
TARGETS = {"vit_tiny_224px": 1.4, "vit_tiny_96px": 1.8}
TOP1_TARGET_POINTS = 1.0
FLOAT_MATMULS = ("MatMul", "Gemm", "FusedMatMul")
INT8_MATMULS = (
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "MatMulInteger",
    "QLinearMatMul",
    "QGemm",
)
QUANTIZE_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def export_random(name: str, folder: Path) -> Path:
    import timm
    import torch

    from optimizer.trial.export import export_onnx

    torch.manual_seed(0)
    geometry = MODELS[name]
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, **geometry)
    size = geometry["img_size"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's tracer warnings
        return export_onnx(model, torch.randn(1, 3, size, size), folder / f"{name}.onnx")


def demo_baseline(folder: Path) -> tuple[Path, Any, Any, Any]:
    """The digits demo's baseline exported to ONNX, its data splits, its task and campaign."""
    import torch

    from optimizer.config import load_campaign
    from optimizer.trial.baseline import campaign_task, load_model, prepare_baseline
    from optimizer.trial.export import export_onnx
    from optimizer.trial.pipeline import load_splits

    campaign = load_campaign(DEMO_CAMPAIGN)
    splits = load_splits(campaign)
    checkpoint, trained = prepare_baseline(campaign, splits)
    log(f"demo baseline {'trained and cached at' if trained else 'from'} {checkpoint}")
    model = load_model(campaign, splits.num_classes, checkpoint)
    size = campaign.data.image_size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export_onnx(model, torch.randn(1, 3, size, size), folder / f"{DEMO}.onnx")
    return path, splits, campaign_task(campaign), campaign


def random_loader(size: int, count: int) -> list[tuple[Any, None]]:
    import torch

    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(count, 3, size, size, generator=generator), None)]


def quantize_all(
    fp32: Path,
    size: int,
    loader: Any,
    calibration_size: int,
    device_info: Mapping[str, Any],
    work: Path,
) -> dict[str, dict[str, Any]]:
    """Each recipe's int8 graph of ``fp32``, made through the technique as a trial makes it."""
    from optimizer.plugin_api import OnnxArtifact
    from optimizer.plugin_testing import stage_context
    from plugins.quantization import METHOD_PARAM, PRECISION_PARAM, RECIPES, Int8Quantization

    technique = Int8Quantization()
    out: dict[str, dict[str, Any]] = {}
    for recipe in RECIPES:
        ctx = stage_context(
            work / fp32.stem / recipe.name,
            image_size=size,
            train_loader=loader,
            device_info=device_info,
            calibration_size=calibration_size,
            log=logging.getLogger("bench.quantization"),
        )
        started = time.perf_counter()
        params = {PRECISION_PARAM: "int8", METHOD_PARAM: recipe.name}
        artifact = technique.apply(OnnxArtifact(fp32), params, ctx)
        out[recipe.name] = {
            "path": artifact.path,
            "quantize_s": round(time.perf_counter() - started, 2),
            "bytes": artifact.path.stat().st_size,
        }
    return out


def graph_ops(path: Path, folder: Path) -> dict[str, Any]:
    """The integer ops written in the file, and what a CPU session runs after optimizing it."""
    import onnx
    import onnxruntime as ort

    from plugins.int8_recipe import onnx_op_counts

    written = onnx_op_counts(onnx.load(str(path)))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3  # not the "hardware specific optimizations" warning
    optimized = folder / f"{path.stem}.optimized.onnx"
    options.optimized_model_filepath = str(optimized)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    runs = onnx_op_counts(onnx.load(str(optimized)))
    optimized.unlink()

    def total(counts: Mapping[str, int], ops: tuple[str, ...]) -> int:
        return sum(counts.get(op, 0) for op in ops)

    return {
        "ops": {op: n for op, n in sorted(written.items()) if op in (*INT8_MATMULS, *QUANTIZE_OPS)},
        "runs_as": {
            "float_matmuls": total(runs, FLOAT_MATMULS),
            "int8_matmuls": total(runs, INT8_MATMULS),
            "quantize_ops_left": total(runs, QUANTIZE_OPS),
            "int8_kernels": {op: runs[op] for op in INT8_MATMULS if op in runs},
        },
    }


def paired_job(client: Any, model: Path, reference: Path, max_time_s: float) -> dict[str, Any]:
    """``model`` timed paired against ``reference`` by the agent (uncached): the speedup, its
    interval, and both halves' p50 (also used by ``families.py``)."""
    from optimizer.device.client import Reference

    spec = {"warmup": 20, "min_repeat_ms": 50, "ratio_ci": 0.02, "max_time_s": max_time_s}
    result = client.measure(model, dict(spec, use_cache=False), reference=Reference(reference))
    paired = result["paired"]
    return {
        "speedup": round(paired["speedup"], 4),
        "ci": [round(x, 4) for x in paired["speedup_ci"]],
        "rounds": paired["rounds"],
        "stopped_by": paired["stopped_by"],
        "reference_p50_ms": round(paired["reference"]["latency_ms"]["p50"], 3),
        "p50_ms": round(result["latency_ms"]["p50"], 3),
    }


def qdq_fusion(fp32: Path, qdq: Path, rounds: int = 10, block_ms: float = 50.0) -> dict[str, Any]:
    """fp32, the qdq graph, and the qdq graph without onnxruntime's MatMulAddFusion, timed in
    interleaved blocks in this process (one thread, ``fidelity.OrtTimer``); speedups are
    medians of round ratios."""
    from fidelity import OrtTimer

    timers = {
        "fp32": OrtTimer(fp32, block_ms),
        "default": OrtTimer(qdq, block_ms),
        "without_MatMulAddFusion": OrtTimer(qdq, block_ms, ["MatMulAddFusion"]),
    }
    ratios: dict[str, list[float]] = {"default": [], "without_MatMulAddFusion": []}
    for number in range(rounds):
        names = list(timers) if number % 2 == 0 else list(timers)[::-1]
        medians = {name: statistics.median(timers[name].block()) for name in names}
        for name in ratios:
            ratios[name].append(medians["fp32"] / medians[name])
    return {
        name: {
            "speedup": round(statistics.median(r), 3),
            "range": [round(min(r), 3), round(max(r), 3)],
        }
        for name, r in ratios.items()
    }


def top1_points(task: Any, paths: Mapping[str, Path], dataset: Any) -> dict[str, float]:
    return {name: round(100 * task.evaluate_onnx(path, dataset), 2) for name, path in paths.items()}


def summarize(results: Mapping[str, Any], offered: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {"offered_on_cpu": offered, "models": {}}
    met = True
    for name, model in results.items():
        best = max(offered, key=lambda r: model["recipes"][r]["speedup"])
        entry = {"best_recipe": best, "speedup": model["recipes"][best]["speedup"]}
        entry["before_qdq"] = model["recipes"]["qdq"]["speedup"]
        if name in TARGETS:
            entry["target"] = TARGETS[name]
            entry["met"] = entry["speedup"] >= TARGETS[name]
            met = met and entry["met"]
        if "top1_change_points" in model:
            drops = [-model["top1_change_points"][r] for r in offered]
            entry["largest_top1_drop_points"] = max(drops)
            entry["top1_met"] = max(drops) <= TOP1_TARGET_POINTS
            met = met and entry["top1_met"]
        summary["models"][name] = entry
    summary["targets_met"] = met
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the demo models only, short jobs")
    parser.add_argument("--passes", type=int, default=1, help="jobs per model and recipe")
    parser.add_argument("--max-time-s", type=float, default=10.0, help="cap of each paired job")
    parser.add_argument("--calibration-size", type=int, default=32, help="random models' images")
    parser.add_argument("--models", nargs="*", choices=[*MODELS, DEMO], help="default: all")
    args = parser.parse_args()
    names = args.models or ([*MODELS, DEMO] if not args.quick else ["demo_32px", DEMO])
    max_time_s = 3.0 if args.quick else args.max_time_s

    from torch.utils.data import DataLoader

    from optimizer.device.client import AgentClient
    from optimizer.device.local_agent import local_agent
    from plugins.int8_target import int8_target
    from plugins.quantization import RECIPES

    started = time.perf_counter()
    load_before = [round(x, 2) for x in os.getloadavg()]
    env = dict(os.environ, JETSON_AGENT_ORT_THREADS="1")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with local_agent(folder / "agent-cache", "--backend", "onnxruntime", env=env) as url:
            client = AgentClient(url)
            info = client.info()
            target = int8_target(info)
            offered = [r.name for r in RECIPES if r.offered(target)]
            models: dict[str, dict[str, Any]] = {}
            demo: tuple[Any, Any] | None = None
            for name in names:
                if name == DEMO:
                    fp32, splits, task, campaign = demo_baseline(folder)
                    size = campaign.data.image_size
                    loader = DataLoader(splits.train, batch_size=campaign.data.batch_size)
                    count = campaign.data.calibration_size
                    demo = (task, splits)
                else:
                    fp32 = export_random(name, folder)
                    size = MODELS[name]["img_size"]
                    loader, count = (
                        random_loader(size, args.calibration_size),
                        args.calibration_size,
                    )
                log(f"{name}: quantizing with {', '.join(r.name for r in RECIPES)}")
                recipes = quantize_all(fp32, size, loader, count, info, folder / "int8")
                models[name] = {"fp32": fp32, "size": size, "recipes": recipes}
            jobs: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for number in range(args.passes):
                for name, model in models.items():
                    for recipe, made in model["recipes"].items():
                        log(f"pass {number + 1}/{args.passes}: {name} {recipe} against fp32")
                        job = paired_job(client, made["path"], model["fp32"], max_time_s)
                        jobs.setdefault((name, recipe), []).append(job)
            results: dict[str, Any] = {}
            for name, model in models.items():
                entry: dict[str, Any] = {
                    "geometry": MODELS.get(name, "search_spaces/demo_digits.yaml"),
                    "fp32_bytes": model["fp32"].stat().st_size,
                    "fp32": graph_ops(model["fp32"], folder),
                    "recipes": {},
                }
                for recipe, made in model["recipes"].items():
                    runs = jobs[(name, recipe)]
                    entry["recipes"][recipe] = {
                        "offered_on_cpu": recipe in offered,
                        "speedup": round(statistics.median(j["speedup"] for j in runs), 4),
                        "jobs": runs,
                        "quantize_s": made["quantize_s"],
                        "bytes": made["bytes"],
                        **graph_ops(made["path"], folder),
                    }
                if name == DEMO and demo is not None:
                    task, splits = demo
                    paths = {"fp32": model["fp32"]}
                    paths.update({r: made["path"] for r, made in model["recipes"].items()})
                    top1 = top1_points(task, paths, splits.test)
                    entry["top1_percent"] = top1
                    entry["top1_change_points"] = {
                        r: round(top1[r] - top1["fp32"], 2) for r in model["recipes"]
                    }
                    entry["test_images"] = len(splits.test)
                else:
                    log(f"{name}: qdq graph with and without MatMulAddFusion")
                    entry["qdq_fusion"] = qdq_fusion(model["fp32"], model["recipes"]["qdq"]["path"])
                results[name] = entry
    print(
        json.dumps(
            {
                "bench": "quantization",
                "host": {
                    "cpus": os.cpu_count(),
                    "machine": platform.machine(),
                    "load_avg_before": load_before,
                    "load_avg_after": [round(x, 2) for x in os.getloadavg()],
                },
                "agent": {"backend": info.get("backend"), "ort_threads": 1},
                "max_time_s": max_time_s,
                "passes": args.passes,
                "models": results,
                "summary": summarize(results, offered),
                "wall_s": round(time.perf_counter() - started, 1),
            },
            indent=2,
            default=str,
        )
    )


if __name__ == "__main__":
    main()
