"""What each fine-tuning choice buys a pruned candidate: plain fine-tuning, logit KD, logit +
feature KD, at several lengths, on one fixed cut of the campaign's baseline; one JSON line.

    .venv/bin/python bench/fine_tuning.py [--campaign search_spaces/reference_vit_tiny.yaml]
        [--method heads+mlp] [--ratios 0.5] [--depths 0.25] [--epochs 2 4]
        [--variants ce kd kd+features]

The baseline is the campaign's cached one (trained first if missing). Each variant starts from
the same pruned copy (``--importance``, magnitude by default; ``--depths``: the share of blocks a
method with ``depth`` drops; seeded), is fine-tuned with the
campaign's loader and seed by the built-in ``kd`` technique, exported as a trial exports it and
scored on the held-out test split by onnxruntime (fp32: the fine-tuning's effect alone, without
int8's). ``drop`` is the baseline's test score minus the variant's, in points. Nothing is timed:
the figures do not depend on the machine's load, only the wall times do.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from optimizer.config import load_campaign
from optimizer.plugin_api.model_stats import count_macs
from optimizer.plugin_host.registry import plugin_registry
from optimizer.trial.baseline import load_model, prepare_baseline
from optimizer.trial.export import export_onnx
from optimizer.trial.pipeline import load_splits, trial_context
from plugins.distillation import KnowledgeDistillation
from plugins.pruning import TorchPruning, removes

VARIANTS = {
    "ce": {"distill.enabled": False},
    "kd": {"distill.enabled": True, "distill.features": False},
    "kd+features": {"distill.enabled": True, "distill.features": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--campaign", default="search_spaces/reference_vit_tiny.yaml")
    parser.add_argument("--method", default="heads+mlp")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.5])
    parser.add_argument("--depths", type=float, nargs="+", default=[0.25])
    parser.add_argument("--epochs", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--importance", default="magnitude", choices=["magnitude", "taylor"])
    args = parser.parse_args()
    campaign = load_campaign(args.campaign)
    torch.set_num_threads(campaign.execution.torch_threads)
    splits = load_splits(campaign)
    checkpoint, _ = prepare_baseline(campaign, splits)
    registry = plugin_registry(campaign.plugins.disable)
    example = torch.zeros(1, *splits.input_shape)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="vitopt-fine-tuning-") as folder:
        work = Path(folder)

        def context() -> Any:  # a fresh one per run: the same seeded batch order for each
            return trial_context(
                campaign,
                splits,
                registry,
                {},
                work,
                number=0,
                checkpoint=checkpoint,
                log=logging.getLogger("fine_tuning"),
            )

        scoring = context()

        def score(model: torch.nn.Module, name: str) -> float:
            path = export_onnx(model, example, work / f"{name}.onnx", family=scoring.model_family)
            return scoring.task.evaluate_onnx(path, splits.test)

        baseline = load_model(campaign, splits.num_classes, checkpoint)
        base_score = score(baseline, "baseline")
        base_macs = count_macs(baseline, (1, *splits.input_shape))
        depths = args.depths if "depth" in removes(args.method) else [None]
        for ratio, depth, epochs, variant in itertools.product(
            args.ratios, depths, args.epochs, args.variants
        ):
            ctx = context()
            torch.manual_seed(ctx.seed)
            cut = {
                "prune.method": args.method,
                "prune.ratio": ratio,
                "prune.depth": depth or 0.0,
                "prune.importance": args.importance,
            }
            pruned = TorchPruning().apply(baseline, cut, ctx)
            ctx.macs_kept = count_macs(pruned, ctx.input_shape) / base_macs
            params = {
                "train.epochs": epochs,
                "train.lr": args.lr,
                "distill.temperature": 4.0,
                "distill.alpha": 0.5,
                "distill.features": False,
                **VARIANTS[variant],
            }
            started = time.monotonic()
            tuned = KnowledgeDistillation().apply(pruned, params, ctx)
            value = score(tuned, f"{variant}-{ratio}-{depth}-{epochs}")
            rows.append(
                {
                    "ratio": ratio,
                    "depth": depth,
                    "epochs": epochs,
                    "variant": variant,
                    "test_score": value,
                    "drop_points": round(100 * (base_score - value), 2),
                    "macs_kept": round(ctx.macs_kept, 3),
                    "train_s": round(time.monotonic() - started, 1),
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(
        json.dumps(
            {
                "bench": "fine_tuning",
                "campaign": campaign.name,
                "method": args.method,
                "importance": args.importance,
                "lr": args.lr,
                "baseline_test_score": base_score,
                "rows": rows,
                "machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads()},
            }
        )
    )


if __name__ == "__main__":
    main()
