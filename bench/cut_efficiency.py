"""Why a deep cut's speedup falls short of its MAC reduction on onnxruntime's CPU kernels: the
reference workload's geometry (``search_spaces/reference_vit_tiny.yaml``: timm
``vit_tiny_patch16_224``, 12 blocks of width 192 and 3 heads, MLP width 768, 32 px inputs in
4 px patches, 65 tokens; untrained: timing does not depend on the weights) cut each of
``--cuts`` ways, exported as the pipeline exports, and timed against the uncut geometry.

    .venv/bin/python bench/cut_efficiency.py [--cuts heads:0.34 heads:0.6 mlp:0.6 ...]
        [--rounds 25] [--block-ms 100]

A cut is ``METHOD:RATIO``, the pruning plugin's own ``prune_model`` (``plugins/pruning.py``:
its rules for heads and hidden widths, magnitude importance, widths rounded to 8), or
``width:W``, every MLP hidden width built as exactly W by timm (widths the pruner's rounding
never makes, to see whether a width's alignment matters), or ``depth:D``, the uncut widths in
D blocks instead of 12 (what dropping whole blocks would buy: no pruning method does yet).

Each cut is timed against the uncut geometry by ``bench/fidelity.py``'s ``remeasure``, the quiet
re-measurement ``reference_campaign.py`` uses: onnxruntime in this process, one thread,
``rounds`` rounds, in each a ``block_ms`` block of the uncut model and one of the cut, in
alternating order, for every cut in a shuffled order, holding this host's measurement lock.
Per cut: the paired speedup (median of the rounds' ratios, with its 95 % interval), the MAC
reduction r (``count_macs``), the speedup per MAC, and the speedup Amdahl's law predicts,
``1 / ((1 - F) / r + F)``, for F the fraction of the uncut model's time that shrinks with no cut,
fitted to all width cuts (every kind but ``depth``) by least squares. The summary gives F and
the deepest MAC reduction whose predicted speedup per MAC still reaches 0.9
(``(1 / 0.9 - 1 + F) / F``). Cuts that fit the law say the shortfall of deep cuts is that fixed
time (per-node costs of a graph whose node count no cut changes, the layer norms and residual
adds on the 192-wide stream: see ``docs/families.md``), not kernels that run slower at some
widths; a width whose speedup per MAC stood above its neighbours' would say pruning should
round to it. A depth cut removes its blocks' share of that fixed time too: one above the width
cuts' law says so.

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
from reference_campaign import MAC_EFFICIENCY

from optimizer.plugin_api.model_stats import count_macs
from optimizer.trial.export import export_onnx
from plugins.pruning import METHODS

WIDTH, MLP_WIDTH, DEPTH, IMAGE, PATCH = 192, 768, 12, 32, 4
SHAPE = (1, 3, IMAGE, IMAGE)
UNCUT = ("width", float(MLP_WIDTH))
_SAME = {UNCUT, ("depth", float(DEPTH))}  # cuts that cut nothing
CUTS = [
    *("heads:0.34", "heads:0.6", "mlp:0.3", "mlp:0.6", "heads+mlp:0.34", "heads+mlp:0.6"),
    *("width:320", "width:304", "width:256", "depth:8", "depth:5"),
]
_WHOLE = ("width", "depth")  # kinds whose value is a count
_METHODS = tuple(method for method in METHODS if method != "none")  # kinds whose value is a ratio
_KINDS = (*_WHOLE, *_METHODS)


def parse_cut(text: str) -> tuple[str, float]:
    """``METHOD:RATIO``, ``width:W`` or ``depth:D`` (argparse's ``type``: a bad one is a
    one-line error)."""
    kind, sep, value = text.partition(":")
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not sep or kind not in _KINDS:
        raise argparse.ArgumentTypeError(f"{text!r}: expected one of {'|'.join(_KINDS)}:VALUE")
    if kind in _WHOLE and not (number >= 1 and number.is_integer()):
        raise argparse.ArgumentTypeError(f"{text!r}: a {kind} is a positive whole number")
    if kind == "depth" and number > DEPTH:
        raise argparse.ArgumentTypeError(f"{text!r}: the geometry has {DEPTH} blocks")
    if kind not in _WHOLE and not 0.0 < number < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: a ratio is in (0, 1)")
    return kind, number


def label(cut: tuple[str, float]) -> str:
    kind, value = cut
    return f"{kind}:{int(value)}" if kind in _WHOLE else f"{kind}:{value:g}"


def build(cut: tuple[str, float], folder: Path) -> tuple[Path, int]:
    """The geometry cut ``cut`` ways, exported; its path and MACs."""
    import timm
    import torch

    from plugins.families.vit import VIT
    from plugins.pruning import prune_model

    kind, value = cut
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=IMAGE,
        patch_size=PATCH,
        num_classes=10,
        mlp_ratio=(value if kind == "width" else MLP_WIDTH) / WIDTH,
        depth=int(value) if kind == "depth" else DEPTH,
    ).eval()
    if kind == "width":
        built = {block.mlp.fc1.out_features for block in model.blocks}
        if built != {int(value)}:
            raise SystemExit(f"--cuts {label(cut)}: timm built hidden widths {sorted(built)}")
    elif kind != "depth":
        prune_model(model, VIT, method=kind, ratio=value, example=torch.randn(*SHAPE))
    name = label(cut).replace(":", "_").replace("+", "_")
    path = export_onnx(model.eval(), torch.randn(*SHAPE), folder / f"{name}.onnx")
    return path, count_macs(model, SHAPE)


def fixed_fraction(points: list[tuple[float, float]]) -> float | None:
    """F in Amdahl's ``1 / s = (1 - F) / r + F`` for (MAC reduction r, speedup s) points, by
    least squares on ``1 / s - 1 / r = F (1 - 1 / r)``; None when no point has r != 1."""
    xs = [1.0 - 1.0 / r for r, _ in points]
    ys = [1.0 / s - 1.0 / r for r, s in points]
    norm = sum(x * x for x in xs)
    return sum(x * y for x, y in zip(xs, ys, strict=True)) / norm if norm else None


def amdahl(reduction: float, fixed: float) -> float:
    return 1.0 / ((1.0 - fixed) / reduction + fixed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cuts",
        type=parse_cut,
        nargs="+",
        default=[parse_cut(cut) for cut in CUTS],
        metavar="CUT",
        help=f"METHOD:RATIO ({', '.join(_METHODS)}), width:W or depth:D "
        f"(default: {' '.join(CUTS)})",
    )
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--block-ms", type=float, default=100.0)
    args = parser.parse_args()
    if args.rounds < 2 or args.block_ms <= 0:
        parser.error("--rounds: 2 or more; --block-ms: positive")
    cuts = list(dict.fromkeys(cut for cut in args.cuts if cut not in _SAME))
    if not cuts:
        parser.error("--cuts: at least one cut besides the uncut geometry")

    with tempfile.TemporaryDirectory(prefix="vitopt-cuts-") as folder:
        uncut_path, uncut_macs = build(UNCUT, Path(folder))
        built = {cut: build(cut, Path(folder)) for cut in cuts}
        log(f"timing {len(cuts)} cuts against the uncut geometry, {args.rounds} rounds")
        timed = remeasure(
            uncut_path,
            {label(cut): path for cut, (path, _) in built.items()},
            args.rounds,
            args.block_ms,
            seed=0,
            hold=host_measuring(),
        )
    reductions = {label(cut): uncut_macs / macs for cut, (_, macs) in built.items()}
    narrowed = [label(cut) for cut in cuts if cut[0] != "depth"]
    fixed = fixed_fraction([(reductions[name], timed[name]["speedup"]) for name in narrowed])
    per_cut: dict[str, Any] = {}
    for name, result in timed.items():
        reduction = reductions[name]
        per_cut[name] = {
            "speedup": round(result["speedup"], 4),
            "speedup_ci": [round(bound, 4) for bound in result["speedup_ci"]],
            "mac_reduction": round(reduction, 4),
            "speedup_per_mac": round(result["speedup"] / reduction, 4),
            "amdahl_speedup": None if fixed is None else round(amdahl(reduction, fixed), 4),
        }
    # None: no fixed time fitted (F <= 0), so no depth of cut falls below the target
    deepest = (1.0 / MAC_EFFICIENCY - 1.0 + fixed) / fixed if fixed and fixed > 0 else None
    print(
        json.dumps(
            {
                "bench": "cut_efficiency",
                "rounds": args.rounds,
                "block_ms": args.block_ms,
                "uncut_macs": uncut_macs,
                "cuts": per_cut,
                "fixed_fraction": None if fixed is None else round(fixed, 4),
                "deepest_mac_reduction_at_target": deepest and round(deepest, 3),
                "speedup_per_mac_target": MAC_EFFICIENCY,
                "machine": {"cpus": os.cpu_count(), "load_avg": list(os.getloadavg())},
            }
        )
    )


if __name__ == "__main__":
    sys.exit(main())
