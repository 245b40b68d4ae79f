"""Where a pruned candidate's time goes: per operator type, against the baseline's model.

    .venv/bin/python bench/op_profile.py RUN_DIR --trials 12 31 [--rounds 20] [--block-ms 50]

``RUN_DIR`` is a campaign's ``runs/NAME/`` (its ``study.db`` and ``trials/NNNNN/model.onnx``).
Each listed trial's model and the baseline trial's run in onnxruntime in this process, one
thread, in interleaved blocks (``bench/fidelity.py``'s timer: ``rounds`` rounds, in each a
``block_ms`` block of every model twice, once plain and once with onnxruntime's profiler on,
the order reversed every other round), holding this host's measurement lock. The profiler
costs a roughly fixed time per node (here about 2-3 ms of a 5-10 ms run), which dilutes
ratios: read the profiled figures per operator type, and the speedup from the plain timer.
Per model and operator type: the profiled kernel time per inference. Per candidate:

- ``speedup``: the plain paired speedup (median of the rounds' ratios of block medians);
- ``mac_reduction``: the baseline's MACs over the candidate's (the study's record), and
  ``speedup_per_mac``;
- ``macs_op_speedup``: the MAC-carrying kernels' profiled time (MatMul, Gemm, Conv and their
  fused or integer forms), baseline over candidate, and ``macs_op_per_mac``: how well the
  narrower matrix products turn fewer MACs into less time (big kernels: the profiler's cost
  is small beside them);
- ``unshrunk_ms``: per operator type outside those, the candidate's time minus the
  baseline's, beside the baseline's (normalisation, softmax, activations, reshapes, residual
  adds): the work the cut did not remove.

Prints one JSON object on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import optuna
from fidelity import OrtTimer, host_measuring, log

from optimizer.campaign.study import baseline_trial

# Operator types whose time grows with the MACs a pruned layer keeps.
MAC_OPS = {
    "MatMul",
    "Gemm",
    "Conv",
    "FusedMatMul",
    "FusedGemm",
    "FusedConv",
    "MatMulInteger",
    "ConvInteger",
    "QLinearMatMul",
    "QLinearConv",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "QGemm",
}
WARMUP_RUNS = 25  # OrtTimer's warm-up (20) and its block sizing (5): left out of the profile


def per_inference(profile: Path) -> dict[str, Any]:
    """Kernel time per operator type and ``model_run`` time, means per inference in ms, from
    one onnxruntime profile, the warm-up runs left out. Node events precede the ``model_run``
    event of the run they belong to."""
    events = json.loads(profile.read_text())
    kernels: dict[str, float] = defaultdict(float)
    pending: dict[str, float] = defaultdict(float)
    runs, run_us = 0, 0.0
    seen = 0
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            pending[event["args"]["op_name"]] += event["dur"]
        elif event.get("cat") == "Session" and event["name"] == "model_run":
            seen += 1
            if seen > WARMUP_RUNS:
                runs += 1
                run_us += event["dur"]
                for op, us in pending.items():
                    kernels[op] += us
            pending.clear()
    ms = {op: us / runs / 1000.0 for op, us in sorted(kernels.items(), key=lambda kv: -kv[1])}
    mac_ms = sum(v for op, v in ms.items() if op in MAC_OPS)
    kernel_ms = sum(ms.values())
    run_ms = run_us / runs / 1000.0
    return {
        "runs": runs,
        "run_ms": run_ms,
        "mac_ops_ms": mac_ms,
        "other_ms": kernel_ms - mac_ms,
        "run_overhead_ms": run_ms - kernel_ms,
        "by_op_ms": ms,
    }


def profile_models(
    models: dict[str, Path], rounds: int, block_ms: float
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Every model's profile and its plain block medians per round, from one interleaved run."""
    with tempfile.TemporaryDirectory(prefix="vitopt-opprof-") as folder:
        plain = {name: OrtTimer(path, block_ms) for name, path in models.items()}
        profiled = {
            name: OrtTimer(path, block_ms, profile_prefix=str(Path(folder) / name))
            for name, path in models.items()
        }
        medians: dict[str, list[float]] = {name: [] for name in models}
        order, hold = list(models), host_measuring()
        for round_number in range(rounds):
            with hold():
                for name in order if round_number % 2 == 0 else reversed(order):
                    medians[name].append(statistics.median(plain[name].block()))
                    profiled[name].block()
            if round_number % 5 == 4:
                log(f"  profiled {round_number + 1}/{rounds} rounds")
        profiles = {
            name: per_inference(Path(timer.session.end_profiling()))
            for name, timer in profiled.items()
        }
    return profiles, medians


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    return value


def compare(
    base: dict[str, Any],
    cand: dict[str, Any],
    ratios: list[float],
    mac_reduction: float,
) -> dict[str, Any]:
    from jetson_agent.stats import median_interval

    speedup = statistics.median(ratios)
    low, high, _ = median_interval(ratios)
    macs_op = base["mac_ops_ms"] / cand["mac_ops_ms"]
    ops = set(base["by_op_ms"]) | set(cand["by_op_ms"])
    unshrunk = {
        op: {
            "baseline_ms": base["by_op_ms"].get(op, 0.0),
            "delta_ms": cand["by_op_ms"].get(op, 0.0) - base["by_op_ms"].get(op, 0.0),
        }
        for op in sorted(ops - MAC_OPS, key=lambda op: -base["by_op_ms"].get(op, 0.0))
    }
    return {
        "speedup": speedup,
        "speedup_ci": [low, high],
        "mac_reduction": mac_reduction,
        "speedup_per_mac": speedup / mac_reduction,
        "macs_op_speedup": macs_op,
        "macs_op_per_mac": macs_op / mac_reduction,
        "unshrunk_ms": unshrunk,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a campaign's runs/NAME/")
    parser.add_argument("--trials", type=int, nargs="+", required=True)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--block-ms", type=float, default=50.0)
    args = parser.parse_args()
    storage = args.run_dir / "study.db"
    if not storage.exists():
        raise SystemExit(f"{args.run_dir}: no study.db (not a campaign's run folder)")
    (name,) = sqlite3.connect(storage).execute("select study_name from studies").fetchone()
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{storage}")
    base = baseline_trial(study)
    if base is None:
        raise SystemExit(f"{args.run_dir}: the study has no baseline trial")

    def model(number: int) -> Path:
        path = args.run_dir / "trials" / f"{number:05d}" / "model.onnx"
        if not path.exists():
            raise SystemExit(f"trial {number}: no model at {path}")
        return path

    models = {"baseline": model(base.number)}
    models.update({str(n): model(n) for n in args.trials})
    log(f"profiling {len(models)} models, {args.rounds} rounds of {args.block_ms:.0f} ms each")
    profiles, medians = profile_models(models, args.rounds, args.block_ms)
    trials = {t.number: t for t in study.trials}
    candidates = {}
    for number in args.trials:
        attrs = trials[number].user_attrs
        candidates[str(number)] = {
            "params": trials[number].params,
            "recorded_speedup": attrs.get("speedup"),
            **compare(
                profiles["baseline"],
                profiles[str(number)],
                [b / c for b, c in zip(medians["baseline"], medians[str(number)], strict=True)],
                base.user_attrs["macs"] / attrs["macs"],
            ),
            "profile": profiles[str(number)],
        }
    print(
        json.dumps(
            _round(
                {
                    "bench": "op_profile",
                    "run_dir": str(args.run_dir),
                    "rounds": args.rounds,
                    "baseline": profiles["baseline"],
                    "candidates": candidates,
                    "machine": {"cpus": os.cpu_count(), "load_avg": list(os.getloadavg())},
                }
            )
        )
    )


if __name__ == "__main__":
    sys.exit(main())
