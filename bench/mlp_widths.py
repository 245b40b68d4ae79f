"""Whether a pruned MLP width's exact value matters on onnxruntime's CPU kernels: the reference
workload's geometry (``search_spaces/reference_vit_tiny.yaml``: timm ``vit_tiny_patch16_224``,
12 blocks of width 192, 32 px inputs in 4 px patches, 65 tokens) built with every block's MLP
hidden width set to each of ``--widths`` (untrained: timing does not depend on the weights),
exported as the pipeline exports, and timed against the first width.

    .venv/bin/python bench/mlp_widths.py [--widths 768 384 320 312 304 296 288 256]
        [--rounds 25] [--block-ms 250]

Each model runs in onnxruntime in this process, one thread (``bench/fidelity.py``'s timer), in
``rounds`` interleaved rounds of one ``block_ms`` block per model, the order reversed every other
round, holding this host's measurement lock. Per width: the median block latency, the paired
speedup over the first width (median of the rounds' ratios, with its 95 % interval), the MAC
reduction (``count_macs``) and the speedup per MAC. A step in speedup per MAC at multiples of 16,
32 or 64 would say that pruning should round widths; a smooth curve says it need not.

Prints one JSON object on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from fidelity import OrtTimer, host_measuring, log

from jetson_agent.stats import median_interval
from optimizer.plugin_api.model_stats import count_macs
from optimizer.trial.export import export_onnx

WIDTH, IMAGE, PATCH = 192, 32, 4


def build(width: int, folder: Path) -> tuple[Path, int]:
    """The geometry with MLP hidden width ``width``, exported; its path and MACs."""
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=IMAGE,
        patch_size=PATCH,
        num_classes=10,
        mlp_ratio=width / WIDTH,
    ).eval()
    built = {block.mlp.fc1.out_features for block in model.blocks}
    if built != {width}:
        raise SystemExit(f"--widths {width}: timm built hidden widths {sorted(built)}")
    shape = (1, 3, IMAGE, IMAGE)
    path = export_onnx(model, torch.randn(*shape), folder / f"mlp{width}.onnx")
    return path, count_macs(model, shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--widths", type=int, nargs="+", default=[768, 384, 320, 312, 304, 296, 288, 256]
    )
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--block-ms", type=float, default=250.0)
    args = parser.parse_args()
    if len(args.widths) < 2 or min(args.widths) < 1:
        parser.error("--widths: two or more positive widths, the first the reference")

    with tempfile.TemporaryDirectory(prefix="vitopt-mlpwidths-") as folder:
        built = {w: build(w, Path(folder)) for w in args.widths}
        timers = {w: OrtTimer(path, args.block_ms) for w, (path, _) in built.items()}
    log(f"timing {len(timers)} widths, {args.rounds} rounds of {args.block_ms:.0f} ms each")
    medians: dict[int, list[float]] = {w: [] for w in args.widths}
    hold = host_measuring()
    for round_number in range(args.rounds):
        with hold():
            for w in args.widths if round_number % 2 == 0 else reversed(args.widths):
                medians[w].append(statistics.median(timers[w].block()))
        if round_number % 5 == 4:
            log(f"  timed {round_number + 1}/{args.rounds} rounds")

    reference = args.widths[0]
    widths: dict[str, Any] = {}
    for w in args.widths:
        ratios = [r / c for r, c in zip(medians[reference], medians[w], strict=True)]
        speedup = statistics.median(ratios)
        low, high, _ = median_interval(ratios)
        mac_reduction = built[reference][1] / built[w][1]
        widths[str(w)] = {
            "median_ms": round(statistics.median(medians[w]), 4),
            "speedup": round(speedup, 4),
            "speedup_ci": [round(low, 4), round(high, 4)],
            "mac_reduction": round(mac_reduction, 4),
            "speedup_per_mac": round(speedup / mac_reduction, 4),
        }
    print(
        json.dumps(
            {
                "bench": "mlp_widths",
                "reference_width": reference,
                "rounds": args.rounds,
                "widths": widths,
                "machine": {"cpus": os.cpu_count(), "load_avg": list(os.getloadavg())},
            }
        )
    )


if __name__ == "__main__":
    sys.exit(main())
