"""Whether a pruned MLP width's exact value matters on onnxruntime's CPU kernels: the reference
workload's geometry (``search_spaces/reference_vit_tiny.yaml``: timm ``vit_tiny_patch16_224``,
12 blocks of width 192, 32 px inputs in 4 px patches, 65 tokens) built with every block's MLP
hidden width set to each of ``--widths`` (untrained: timing does not depend on the weights),
exported as the pipeline exports, and timed against the first width.

    .venv/bin/python bench/mlp_widths.py [--widths 768 384 320 312 304 296 288 256]
        [--rounds 25] [--block-ms 100]

Each width is timed against the first by ``bench/fidelity.py``'s ``remeasure``, the quiet
re-measurement ``reference_campaign.py`` uses: onnxruntime in this process, one thread,
``rounds`` rounds, in each a ``block_ms`` block of the first width and one of the other width,
in alternating order, for every width in a shuffled order, holding this host's measurement lock.
Per width: the paired speedup over the first (median of the rounds' ratios, with its 95 %
interval), the MAC reduction (``count_macs``) and the speedup per MAC. A step in speedup per
MAC at multiples of 16, 32 or 64 would say that pruning should round widths; a smooth curve
says it need not.

Prints one JSON object on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from fidelity import host_measuring, log, remeasure

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
    parser.add_argument("--block-ms", type=float, default=100.0)
    args = parser.parse_args()
    if len(args.widths) < 2 or min(args.widths) < 1:
        parser.error("--widths: two or more positive widths, the first the reference")

    reference, *others = args.widths
    with tempfile.TemporaryDirectory(prefix="vitopt-mlpwidths-") as folder:
        built = {w: build(w, Path(folder)) for w in args.widths}
        log(f"timing {len(others)} widths against {reference}, {args.rounds} rounds")
        timed = remeasure(
            built[reference][0],
            {w: built[w][0] for w in others},
            args.rounds,
            args.block_ms,
            seed=0,
            hold=host_measuring(),
        )
    widths: dict[str, Any] = {}
    for w, result in timed.items():
        mac_reduction = built[reference][1] / built[w][1]
        widths[str(w)] = {
            "speedup": round(result["speedup"], 4),
            "speedup_ci": [round(bound, 4) for bound in result["speedup_ci"]],
            "mac_reduction": round(mac_reduction, 4),
            "speedup_per_mac": round(result["speedup"] / mac_reduction, 4),
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
