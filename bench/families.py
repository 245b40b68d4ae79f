"""Which model families turn removed MACs into speed: each family's smallest timm config, pruned
at two ratios, timed paired against its unpruned self on the CPU agent.

Per model (random weights: latency depends on the architecture only), at ``--image-size``
(224 by default, what these configs are built for): the unpruned model and the model pruned by
its family's rules at each ratio (``--ratios``, 0.3 and 0.6) with the most its family removes
(``heads+mlp``, or ``mlp`` where the family has no heads to slice), each exported as a campaign
exports it (opset 16, shapes folded, prepared by the family). A real loopback agent
(onnxruntime, ``JETSON_AGENT_ORT_THREADS=1``) times every pruned model in a paired job against
the unpruned one (``spec.reference``: ``quantization.paired_job``'s, alternating blocks of
>= 50 ms, >= 10 rounds, until the speedup's 95 % interval is +-2 % or ``--max-time-s``),
``--passes`` times, models in a shuffled
order per pass. Nothing trains while it runs.

    .venv/bin/python bench/families.py [--quick] [--passes 3] [--max-time-s 10]
        [--image-size 224] [--models NAME ...]

How to read the JSON: ``models[NAME]`` has the family, ``fp32_p50_ms`` (the unpruned model's
p50 on the agent: the median over the paired jobs' reference halves), its ``params`` and
``macs``, and per ratio ``macs_reduction`` (unpruned MACs / pruned MACs), ``params_reduction``,
``speedup`` (median over passes of the paired jobs' speedups; ``range`` across passes, ``ci``
the 95 % interval of each job) and ``efficiency`` = speedup / MAC reduction (1: every removed
MAC is time saved; a value above 1 is a measurement error until shown otherwise and is listed
in ``summary.suspicious``). ``summary.by_efficiency`` ranks the families at the higher ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

# Each family's smallest timm config and the most its rules remove.
MODELS: dict[str, str] = {
    "deit_tiny_patch16_224": "heads+mlp",
    "swin_tiny_patch4_window7_224": "heads+mlp",
    "mobilevit_xxs": "heads+mlp",
    "mobilevitv2_050": "mlp",
    "efficientformer_l1": "heads+mlp",
    "efficientformerv2_s0": "mlp",
    "levit_128s": "heads+mlp",
}


def log(message: str) -> None:
    print(f"[families] {message}", file=sys.stderr, flush=True)


def export_variants(
    name: str, method: str, ratios: list[float], size: int, folder: Path
) -> dict[str, Any]:
    """The unpruned model and one pruned copy per ratio, exported; their MACs and params."""
    import copy

    import torch

    from optimizer.plugin_api.model_stats import count_macs, count_params
    from optimizer.plugin_api.task import create_timm_model
    from optimizer.plugin_host.registry import plugin_registry
    from optimizer.trial.export import export_onnx
    from plugins.pruning import prune_model

    family = plugin_registry().model_family(name)
    torch.manual_seed(0)
    base = create_timm_model(name, False, size, num_classes=1000).eval()
    x = torch.randn(1, 3, size, size)
    variants: dict[str, Any] = {}
    for ratio in [0.0, *ratios]:
        model = copy.deepcopy(base)
        if ratio:
            prune_model(model, family, method=method, ratio=ratio, example=x)
        path = export_onnx(model, x, folder / f"{name}-{ratio}.onnx", family=family)
        variants[str(ratio)] = {
            "path": path,
            "params": count_params(model),
            "macs": count_macs(model, (3, size, size)),
        }
    return {"family": family.name, "method": method, "variants": variants}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one pass, short jobs, 64 px")
    parser.add_argument("--passes", type=int, default=3, help="paired jobs per pruned model")
    parser.add_argument("--max-time-s", type=float, default=10.0, help="cap of each paired job")
    parser.add_argument("--image-size", type=int, default=224, help="input size (224)")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.6])
    parser.add_argument("--models", nargs="*", choices=list(MODELS), help="default: all")
    parser.add_argument("--seed", type=int, default=0, help="the passes' model order")
    args = parser.parse_args()
    passes = 1 if args.quick else args.passes
    max_time_s = 2.0 if args.quick else args.max_time_s
    names = args.models or list(MODELS)

    warnings.filterwarnings("ignore")
    from quantization import paired_job

    from optimizer.device.client import AgentClient
    from optimizer.device.local_agent import local_agent

    started = time.perf_counter()
    load_before = [round(v, 2) for v in os.getloadavg()]
    env = dict(os.environ, JETSON_AGENT_ORT_THREADS="1")
    order = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        built: dict[str, dict[str, Any]] = {}
        for name in names:
            # EfficientFormer V1's attention biases are fixed at a 7x7 last stage: 224 px only.
            size = 224 if name.startswith("efficientformer_l") else args.image_size
            log(f"{name}: pruning at {args.ratios} and exporting at {size} px")
            built[name] = export_variants(name, MODELS[name], args.ratios, size, folder)
            built[name]["image_size"] = size
        jobs: dict[tuple[str, str], list[dict[str, Any]]] = {}
        with local_agent(folder / "agent-cache", "--backend", "onnxruntime", env=env) as url:
            client = AgentClient(url)
            pairs = [(n, str(r)) for n in names for r in args.ratios]
            for number in range(passes):
                order.shuffle(pairs)
                for name, ratio in pairs:
                    log(f"pass {number + 1}/{passes}: {name} at {ratio} against unpruned")
                    variants = built[name]["variants"]
                    job = paired_job(
                        client, variants[ratio]["path"], variants["0.0"]["path"], max_time_s
                    )
                    jobs.setdefault((name, ratio), []).append(job)
    models: dict[str, Any] = {}
    suspicious: list[str] = []
    for name in names:
        variants = built[name]["variants"]
        base = variants["0.0"]
        references = [j["reference_p50_ms"] for r in args.ratios for j in jobs[(name, str(r))]]
        entry: dict[str, Any] = {
            "family": built[name]["family"],
            "method": built[name]["method"],
            "image_size": built[name]["image_size"],
            "fp32_p50_ms": round(statistics.median(references), 3),
            "params": base["params"],
            "macs": base["macs"],
            "ratios": {},
        }
        for ratio in args.ratios:
            runs = jobs[(name, str(ratio))]
            speedups = [j["speedup"] for j in runs]
            macs_reduction = base["macs"] / variants[str(ratio)]["macs"]
            speedup = statistics.median(speedups)
            entry["ratios"][str(ratio)] = {
                "macs_reduction": round(macs_reduction, 3),
                "params_reduction": round(base["params"] / variants[str(ratio)]["params"], 3),
                "speedup": round(speedup, 3),
                "range": [round(min(speedups), 3), round(max(speedups), 3)],
                "efficiency": round(speedup / macs_reduction, 3),
                "jobs": runs,
            }
            if speedup > macs_reduction:
                suspicious.append(f"{name} at {ratio}")
        models[name] = entry
    top = str(args.ratios[-1])
    ranking = sorted(names, key=lambda n: -models[n]["ratios"][top]["efficiency"])
    print(
        json.dumps(
            {
                "bench": "families",
                "cpu_count": os.cpu_count(),
                "load_avg_before": load_before,
                "load_avg_after": [round(v, 2) for v in os.getloadavg()],
                "passes": passes,
                "max_time_s": max_time_s,
                "models": models,
                "summary": {
                    "by_efficiency": [
                        {
                            "model": n,
                            "family": models[n]["family"],
                            "ratio": float(top),
                            "speedup": models[n]["ratios"][top]["speedup"],
                            "macs_reduction": models[n]["ratios"][top]["macs_reduction"],
                            "efficiency": models[n]["ratios"][top]["efficiency"],
                        }
                        for n in ranking
                    ],
                    "suspicious": suspicious,
                },
                "wall_s": round(time.perf_counter() - started, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
