"""Where a pruned candidate's time goes: per operator type, against the baseline's model.

    .venv/bin/python bench/op_profile.py RUN_DIR --trials 12 31 [--rounds 20] [--block-ms 50]

``RUN_DIR`` is a campaign's ``runs/NAME/`` (its ``study.db`` and ``trials/NNNNN/model.onnx``).
Each listed trial's model and the baseline trial's run in onnxruntime in this process, one
thread, with onnxruntime's profiler on, in interleaved blocks (``bench/fidelity.py``'s timer:
``rounds`` rounds of ``block_ms`` each, order alternating), so both profiles see the same
machine. Per model and operator type: the kernel time per inference. Per candidate:

- ``speedup``: the baseline's mean ``model_run`` time over the candidate's (the profiler adds a
  little per node to both, so this is close to, not equal to, the unprofiled paired speedup);
- ``mac_reduction``: the baseline's MACs over the candidate's (the study's record);
- ``macs_op_speedup``: the MAC-carrying kernels' time (MatMul, Gemm, Conv and their fused or
  integer forms), baseline over candidate: how well the narrower matrix products turn fewer
  MACs into less time;
- ``other_ms``: the other kernels' time per inference (normalisation, softmax, activations,
  reshapes, residual adds) and ``run_overhead_ms``: ``model_run`` minus all kernels, both for
  the baseline and the candidate: work that pruning MLP width or heads does not shrink;
- ``amdahl_speedup``: what the candidate would run at if only its MAC-carrying time scaled with
  its MACs and the rest stayed the baseline's: the ceiling that the fixed cost leaves.

Prints one JSON object on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
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


def profile_models(models: dict[str, Path], rounds: int, block_ms: float) -> dict[str, Any]:
    """Every model's profile from one interleaved run: each round a block of every model, the
    order reversed every other round, holding this host's measurement lock (campaigns' trials
    pause meanwhile)."""
    with tempfile.TemporaryDirectory(prefix="vitopt-opprof-") as folder:
        timers = {
            name: OrtTimer(path, block_ms, profile_prefix=str(Path(folder) / name))
            for name, path in models.items()
        }
        order, hold = list(timers), host_measuring()
        for round_number in range(rounds):
            with hold():
                for name in order if round_number % 2 == 0 else reversed(order):
                    timers[name].block()
            if round_number % 5 == 4:
                log(f"  profiled {round_number + 1}/{rounds} rounds")
        return {
            name: per_inference(Path(timer.session.end_profiling()))
            for name, timer in timers.items()
        }


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    return value


def compare(base: dict[str, Any], cand: dict[str, Any], mac_reduction: float) -> dict[str, Any]:
    fixed_ms = base["run_ms"] - base["mac_ops_ms"]
    return {
        "speedup": base["run_ms"] / cand["run_ms"],
        "mac_reduction": mac_reduction,
        "speedup_per_mac": base["run_ms"] / cand["run_ms"] / mac_reduction,
        "macs_op_speedup": base["mac_ops_ms"] / cand["mac_ops_ms"],
        "amdahl_speedup": base["run_ms"] / (base["mac_ops_ms"] / mac_reduction + fixed_ms),
        "fixed_share_of_baseline": fixed_ms / base["run_ms"],
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
    profiles = profile_models(models, args.rounds, args.block_ms)
    trials = {t.number: t for t in study.trials}
    candidates = {}
    for number in args.trials:
        attrs = trials[number].user_attrs
        candidates[str(number)] = {
            "params": trials[number].params,
            "recorded_speedup": attrs.get("speedup"),
            **compare(
                profiles["baseline"], profiles[str(number)], base.user_attrs["macs"] / attrs["macs"]
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
