"""Measurement fidelity: how steady and how well ranked speedups are, paired vs unpaired.

Part (a), the measurement itself. Ten demo-size timm ViTs shaped like a campaign's candidates
(``vit_tiny_patch16_224`` at img 32, patch 4: the demo baseline's 4 blocks, width 128 and 4
heads, with MLP ratios 4 down to 1, so neighbouring speedups are a few percent apart; random
weights) and one larger one (depth 10, width 256: about 7 ms at p50 on one thread here), each
exported with ``optimizer.trial.export.export_onnx`` and measured against the unpruned geometry
(MLP ratio 4) by a real loopback agent (onnxruntime, ``JETSON_AGENT_ORT_THREADS=1``),
``use_cache: false`` throughout, two ways in one run:

* after, the paired job: ``AgentClient.measure(model, spec, reference=Reference(ref))``, with
  the agent's paired defaults (``ratio_ci`` 0.02, 10 rounds at least, 50 ms blocks) but
  ``max_time_s`` capped (``--max-time-s``) to keep the run short; the speedup is the job's
  ``paired.speedup`` (reference / candidate);
* before, the old campaign default: the reference and the model as two separate unpaired jobs
  (warmup 20, 100 iterations, 3 repeats), ratio = reference p50 / model p50.

Per model in a pass the paired job runs first, then the two unpaired jobs (A B A B ..., so
both methods see the same conditions), and the models' order is shuffled per pass (seeded) so
that drift within a pass does not line up with model size. Passes, in this order: quiet, quiet,
``loaded``, quiet, ``loaded_quiet_lock``, quiet, quiet (``--quiet-jobs`` quiet ones in all).
``loaded``: two training processes (timm ViT depth 4 width 128 at img 32, batch 16, SGD,
``torch.set_num_threads(1)``) started before the pass and stopped after it. ``loaded_quiet_lock``:
the same trainers with every step inside ``DeviceLock(dir).working()`` and an agent started with
``--quiet-lock dir``, so they pause while a job times. Before each loaded pass the trainers run
alone for ``--trainer-alone-s`` seconds, which gives their undisturbed throughput.

    .venv/bin/python bench/fidelity.py [--part a] [--quick] [--quiet-jobs 5] [--max-time-s 5]
        [--trainer-alone-s 10] [--seed 0]

Part (b), a whole campaign: ``vitopt run search_spaces/demo_digits.yaml`` as README command 1
runs it (``--campaign-dir DIR`` reads one already run there, ``--code CHECKOUT`` runs another
checkout's code), then every completed candidate and every one the latency-first cut stopped
is re-measured against the baseline's model, quiet, by onnxruntime in this process (no agent
code), ``--rounds`` rounds of ``--block-ms`` blocks. Cut candidates of a run that kept no
model for them are rebuilt from their recorded parameters (MACs checked). ``parts.b.summary``:
Kendall's tau of recorded vs re-measured speedups, the recorded errors, the winner's error and
its gap to the re-measured best feasible candidate, and cut candidates faster than the winner.

    .venv/bin/python bench/fidelity.py --part b [--campaign-dir DIR --campaign FILE --code DIR]

How to read the JSON (``parts.a``): ``models[*]`` has each model's MACs (and ``mac_ratio`` =
reference MACs / model MACs), and for ``paired`` and ``unpaired`` the quiet speedups (``quiet``,
one per job, with ``median``, ``cv`` = stdev / mean across the quiet jobs, ``min``, ``max``)
and the speedup under each loaded condition. ``summary.paired`` / ``summary.unpaired`` give
the max and median of those CVs (target <= 2 %), Kendall's tau of each loaded condition's
speedups against the quiet medians (target >= 0.9) and the median / max relative error of the
loaded speedups against the quiet medians. ``summary.exceeds_mac_ratio`` lists models whose
quiet median speedup is above their MAC ratio: expected for models larger than the reference
(fixed per-run costs weigh less in them), suspicious for smaller ones (listed in
``suspicious``). ``trainers`` has steps/s of the two trainers alone and during each loaded pass
(and, under the lock, how long their steps waited for it): the throughput the quiet lock costs.
``load_avg`` is the machine's 1/5/15-minute load average at start and end, and each pass
(``passes[*]``) has its own, with ``cpu.foreign_cores``: the machine's busy CPU time over the
pass less this run's own (this process, the agent and its job processes, the trainers), per
second of the pass. On a shared 2-core machine, a pass with foreign load above zero was not
what its condition says (the trainers' ``alone_cpu`` says the same of their alone window).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

UNPAIRED_SPEC = {"warmup": 20, "iterations": 100, "repeats": 3, "use_cache": False}
CV_TARGET = 0.02
TAU_TARGET = 0.9
QUIET, LOADED, LOADED_LOCK = "quiet", "loaded", "loaded_quiet_lock"
LOADED_CONDITIONS = (LOADED, LOADED_LOCK)
IMG_SIZE = 32
PATCH_SIZE = 4
TRAINER_BATCH = 16


@dataclass(frozen=True)
class Arch:
    name: str
    depth: int
    embed_dim: int
    num_heads: int
    mlp_ratio: float

    def build(self) -> Any:
        import timm

        return timm.create_model(
            "vit_tiny_patch16_224",
            pretrained=False,
            img_size=IMG_SIZE,
            patch_size=PATCH_SIZE,
            depth=self.depth,
            embed_dim=self.embed_dim,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            num_classes=10,
        )


# Ten demo-size architectures as a campaign's candidates are: the demo baseline's geometry
# (4 blocks, width 128, 4 heads) with its MLPs pruned step by step, so neighbouring speedups
# are a few percent apart and a ranking error shows in Kendall's tau; and a larger model
# (about 7 ms). The reference is the unpruned one, as in a campaign.
DEMO_ARCHS = [
    Arch(f"d4-e128-m{ratio:g}", 4, 128, 4, ratio)
    for ratio in (4.0, 3.5, 3.0, 2.75, 2.5, 2.25, 2.0, 1.75, 1.5, 1.0)
]
LARGE_ARCH = Arch("d10-e256-m4", 10, 256, 8, 4)
REFERENCE_ARCH = Arch("ref-d4-e128-m4", 4, 128, 4, 4)
TRAINER_ARCH = Arch("trainer-d4-e128-m4", 4, 128, 4, 4)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all cores; idle and iowait left out)."""
    with open("/proc/stat") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def process_cpu_s(pid: int) -> float:
    """CPU seconds of a live process and of its children it has waited for."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / CLOCK_TICKS


class ForeignCpu:
    """CPU the rest of the machine used over a window: the machine's busy time less this
    process's, the agent's (its job processes included, as it waits for them) and the trainers'.
    None of these may be reaped inside the window (their time would move to this process)."""

    def __init__(self, pids: list[int]):
        self.pids = pids
        self.start = self._read()

    def _read(self) -> tuple[float, float, float]:
        mine = sum(os.times()[:4]) + sum(process_cpu_s(pid) for pid in self.pids)
        return time.monotonic(), machine_busy_s(), mine

    def stop(self) -> dict[str, float]:
        wall0, busy0, mine0 = self.start
        wall1, busy1, mine1 = self._read()
        foreign = max(0.0, (busy1 - busy0) - (mine1 - mine0))
        return {
            "own_cpu_s": round(mine1 - mine0, 2),
            "foreign_cpu_s": round(foreign, 2),
            "foreign_cores": round(foreign / (wall1 - wall0), 3),
        }


def export_arch(arch: Arch, folder: Path, seed: int) -> dict[str, Any]:
    """Export one architecture (seeded random weights) and count its MACs and parameters."""
    import torch

    from optimizer.plugin_api.model_stats import count_macs, count_params
    from optimizer.trial.export import export_onnx

    torch.manual_seed(seed)
    model = arch.build()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's tracer warnings
        path = export_onnx(
            model, torch.randn(1, 3, IMG_SIZE, IMG_SIZE), folder / f"{arch.name}.onnx"
        )
    return {
        "name": arch.name,
        "arch": {
            "depth": arch.depth,
            "embed_dim": arch.embed_dim,
            "num_heads": arch.num_heads,
            "mlp_ratio": arch.mlp_ratio,
            "img_size": IMG_SIZE,
            "patch_size": PATCH_SIZE,
        },
        "macs": count_macs(model, (3, IMG_SIZE, IMG_SIZE)),
        "params": count_params(model),
        "path": path,
    }


# -- co-located trainers ------------------------------------------------------------------------


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: Any) -> None:
    raise _Stop


def trainer_main(lock_dir: str | None) -> None:
    """A training process: SGD steps on random data until SIGTERM, then one JSON line on stdout
    with the (system-wide monotonic) end time of every step and, under the lock, how long each
    step waited for it. Prints ``ready`` once the first step is done."""
    import torch

    from jetson_agent.quiet import DeviceLock

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    model = TRAINER_ARCH.build().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(TRAINER_BATCH, 3, IMG_SIZE, IMG_SIZE)
    y = torch.randint(0, 10, (TRAINER_BATCH,))
    lock = DeviceLock(lock_dir) if lock_dir else None

    def step() -> None:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    ends: list[float] = []
    waits: list[float] = []
    signal.signal(signal.SIGTERM, _raise_stop)
    try:
        step()
        print("ready", flush=True)
        while True:
            if lock is None:
                step()
            else:
                asked = time.monotonic()
                with lock.working():
                    waits.append(time.monotonic() - asked)
                    step()
            ends.append(time.monotonic())
    except _Stop:
        pass
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(json.dumps({"ends": ends, "lock_wait_s": waits}), flush=True)


class Trainers:
    """``count`` trainer processes of this script; :meth:`stop` returns their step logs."""

    def __init__(self, count: int, lock_dir: Path | None):
        command = [sys.executable, str(Path(__file__).resolve()), "--trainer"]
        if lock_dir is not None:
            command += ["--trainer-lock", str(lock_dir)]
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.processes = [
            subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
            for _ in range(count)
        ]
        for process in self.processes:
            assert process.stdout is not None
            line = process.stdout.readline()
            if line.strip() != "ready":
                self.kill()
                raise RuntimeError(f"a trainer did not start: {line!r}")

    def stop(self) -> list[dict[str, list[float]]]:
        logs = []
        for process in self.processes:
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            out, _ = process.communicate(timeout=60)
            logs.append(json.loads(out.strip().splitlines()[-1]))
        return logs

    def kill(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


@contextmanager
def trainers_running(count: int, lock_dir: Path | None) -> Iterator[Trainers]:
    trainers = Trainers(count, lock_dir)
    try:
        yield trainers
    finally:
        trainers.kill()


def steps_per_s(logs: list[dict[str, list[float]]], start: float, end: float) -> dict[str, Any]:
    """Steps each trainer finished in [start, end] per second, and their sum."""
    per = [sum(start <= t <= end for t in log["ends"]) / (end - start) for log in logs]
    return {"per_trainer": [round(x, 3) for x in per], "total": round(sum(per), 3)}


# -- measurement passes ------------------------------------------------------------------------


def measure_pass(
    client: Any,
    models: list[dict[str, Any]],
    reference: dict[str, Any],
    paired_spec: dict[str, Any],
    order_seed: int,
    label: str,
) -> dict[str, dict[str, Any]]:
    """One pass over the models: per model the paired job, then the reference and the model as
    unpaired jobs. Returns per model name the paired and unpaired figures."""
    from optimizer.device.client import Reference

    order = list(models)
    random.Random(order_seed).shuffle(order)
    ref = Reference(reference["path"], "fp32")
    out: dict[str, dict[str, Any]] = {}
    for model in order:
        started = time.perf_counter()
        result = client.measure(model["path"], paired_spec, reference=ref)
        paired = result["paired"]
        paired_s = time.perf_counter() - started
        started = time.perf_counter()
        ref_result = client.measure(reference["path"], UNPAIRED_SPEC)
        model_result = client.measure(model["path"], UNPAIRED_SPEC)
        unpaired_s = time.perf_counter() - started
        ref_p50 = ref_result["latency_ms"]["p50"]
        model_p50 = model_result["latency_ms"]["p50"]
        out[model["name"]] = {
            "paired": {
                "speedup": paired["speedup"],
                "halfwidth": paired["halfwidth"],
                "rounds": paired["rounds"],
                "stopped_by": paired["stopped_by"],
                "target_met": paired["target_met"],
                "timed_s": paired["timed_s"],
                "candidate_p50_ms": result["latency_ms"]["p50"],
                "reference_p50_ms": paired["reference"]["latency_ms"]["p50"],
                "quiet_lock_wait_s": result.get("quiet_lock_wait_s"),
                "job_wall_s": paired_s,
            },
            "unpaired": {
                "speedup": ref_p50 / model_p50,
                "reference_p50_ms": ref_p50,
                "model_p50_ms": model_p50,
                "reference_cv": ref_result["latency_ms"]["cv"],
                "model_cv": model_result["latency_ms"]["cv"],
                "jobs_wall_s": unpaired_s,
            },
        }
        log(
            f"  {label} {model['name']:<14} paired {paired['speedup']:.4f} "
            f"(±{paired['halfwidth']:.3f}, {paired['rounds']} rounds, {paired['stopped_by']}, "
            f"{paired_s:.1f} s)  unpaired {ref_p50 / model_p50:.4f} ({unpaired_s:.1f} s)"
        )
    return out


def pass_plan(quiet_jobs: int) -> list[str]:
    """Condition of each pass: the loaded ones after the second and the third quiet pass (or as
    early as the quiet count allows), so drift over the run does not fall on one condition."""
    plan = [QUIET] * quiet_jobs
    plan.insert(min(2, len(plan)), LOADED)
    plan.insert(min(4, len(plan)), LOADED_LOCK)
    return plan


# -- figures -----------------------------------------------------------------------------------


def spread(values: list[float]) -> dict[str, Any]:
    mean = statistics.mean(values)
    return {
        "quiet": [round(v, 5) for v in values],
        "median": round(statistics.median(values), 5),
        "cv": round(statistics.stdev(values) / mean, 5) if len(values) > 1 else None,
        "min": round(min(values), 5),
        "max": round(max(values), 5),
    }


def kendall_tau(a: list[float], b: list[float]) -> float | None:
    from scipy.stats import kendalltau

    if len(a) < 2:
        return None
    return round(float(kendalltau(a, b).statistic), 4)


def method_summary(per_model: list[dict[str, Any]], method: str) -> dict[str, Any]:
    cvs = [m[method]["cv"] for m in per_model if m[method]["cv"] is not None]
    quiet = [m[method]["median"] for m in per_model]
    out: dict[str, Any] = {
        "cv_max": round(max(cvs), 5) if cvs else None,
        "cv_median": round(statistics.median(cvs), 5) if cvs else None,
        "cv_target": CV_TARGET,
        "cv_target_met": bool(cvs) and max(cvs) <= CV_TARGET,
    }
    for condition in LOADED_CONDITIONS:
        loaded = [m[method][condition] for m in per_model]
        errors = [abs(x / q - 1) for x, q in zip(loaded, quiet, strict=True)]
        tau = kendall_tau(loaded, quiet)
        out[condition] = {
            "kendall_tau_vs_quiet_median": tau,
            "tau_target_met": tau is not None and tau >= TAU_TARGET,
            "rel_error_median": round(statistics.median(errors), 5),
            "rel_error_max": round(max(errors), 5),
        }
    return out


def summarize_part_a(
    models: list[dict[str, Any]],
    reference: dict[str, Any],
    passes: list[tuple[str, dict[str, dict[str, Any]]]],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    per_model = []
    for model in models:
        name = model["name"]
        entry: dict[str, Any] = {
            "name": name,
            "arch": model["arch"],
            "macs": model["macs"],
            "params": model["params"],
            "mac_ratio": round(reference["macs"] / model["macs"], 5),
        }
        for method in ("paired", "unpaired"):
            quiet = [p[name][method]["speedup"] for c, p in passes if c == QUIET]
            figures = spread(quiet)
            for condition in LOADED_CONDITIONS:
                figures[condition] = next(
                    round(p[name][method]["speedup"], 5) for c, p in passes if c == condition
                )
            entry[method] = figures
        jobs = [p[name]["paired"] for _, p in passes]
        entry["paired"]["halfwidth_max"] = round(max(j["halfwidth"] for j in jobs), 5)
        entry["paired"]["rounds"] = [j["rounds"] for j in jobs]
        entry["paired"]["stopped_by"] = [j["stopped_by"] for j in jobs]
        quiet_jobs = [p[name] for c, p in passes if c == QUIET]
        entry["p50_ms_quiet_median"] = round(
            statistics.median(j["paired"]["candidate_p50_ms"] for j in quiet_jobs), 4
        )
        entry["unpaired"]["model_p50_ms_quiet_cv"] = round(
            _cv([j["unpaired"]["model_p50_ms"] for j in quiet_jobs]) or 0.0, 5
        )
        entry["exceeds_mac_ratio"] = entry["paired"]["median"] > entry["mac_ratio"]
        per_model.append(entry)
    exceeds = [m["name"] for m in per_model if m["exceeds_mac_ratio"]]
    suspicious = [m["name"] for m in per_model if m["exceeds_mac_ratio"] and m["mac_ratio"] > 1]
    summary = {
        "paired": method_summary(per_model, "paired"),
        "unpaired": method_summary(per_model, "unpaired"),
        "exceeds_mac_ratio": exceeds,
        "suspicious": suspicious,
    }
    return per_model, summary


def _cv(values: list[float]) -> float | None:
    return statistics.stdev(values) / statistics.mean(values) if len(values) > 1 else None


# -- part (a) ----------------------------------------------------------------------------------


def part_a(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    from optimizer.device.client import AgentClient
    from optimizer.device.local_agent import start_local_agent, stop_local_agent

    archs = [*DEMO_ARCHS[: args.models], LARGE_ARCH]
    log(f"part a: exporting {len(archs)} models and the reference …")
    reference = export_arch(REFERENCE_ARCH, folder, args.seed)
    models = [export_arch(arch, folder, args.seed + 1 + i) for i, arch in enumerate(archs)]
    paired_spec = {"warmup": 20, "max_time_s": args.max_time_s, "use_cache": False}
    env = dict(os.environ, JETSON_AGENT_ORT_THREADS="1")
    lock_dir = folder / "quiet-lock"
    plan = pass_plan(args.quiet_jobs)
    passes: list[tuple[str, dict[str, dict[str, Any]]]] = []
    pass_info: list[dict[str, Any]] = []
    trainers: dict[str, Any] = {}
    for number, condition in enumerate(plan):
        agent_args = ["--backend", "onnxruntime", "--log-level", "WARNING"]
        if condition == LOADED_LOCK:
            agent_args += ["--quiet-lock", str(lock_dir)]
        log(f"pass {number + 1}/{len(plan)}: {condition} (load {load_avg()})")
        agent, url = start_local_agent(folder / "agent-cache", *agent_args, env=env)
        try:
            figures, info, trainer_info = run_condition(
                condition,
                Pass(AgentClient(url), models, reference, paired_spec, args.seed * 1000 + number),
                [agent.pid],
                lock_dir if condition == LOADED_LOCK else None,
                args.trainer_alone_s,
            )
        finally:
            stop_local_agent(agent)
        passes.append((condition, figures))
        pass_info.append(info)
        if trainer_info is not None:
            trainers[condition] = trainer_info
    per_model, summary = summarize_part_a(models, reference, passes)
    return {
        "reference": {
            "name": reference["name"],
            "arch": reference["arch"],
            "macs": reference["macs"],
            "params": reference["params"],
        },
        "paired_spec": paired_spec,
        "paired_defaults": "ratio_ci 0.02, repeats (least rounds) 10, iterations 10, "
        "min_repeat_ms 50 (the agent's)",
        "unpaired_spec": UNPAIRED_SPEC,
        "passes": pass_info,
        "summary": summary,
        "trainers": trainers,
        "models": per_model,
        "jobs": [{"condition": c, "models": p} for c, p in passes],
    }


@dataclass
class Pass:
    """What one pass measures, and with which agent."""

    client: Any
    models: list[dict[str, Any]]
    reference: dict[str, Any]
    paired_spec: dict[str, Any]
    order_seed: int

    def run(self, label: str) -> dict[str, dict[str, Any]]:
        return measure_pass(
            self.client, self.models, self.reference, self.paired_spec, self.order_seed, label
        )


def run_condition(
    condition: str,
    measure: Pass,
    agent_pids: list[int],
    lock_dir: Path | None,
    alone_s: float,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any], dict[str, Any] | None]:
    """One pass under ``condition``: its figures, its wall time, load and foreign CPU, and for
    a loaded condition the trainers' throughput alone (for ``alone_s`` before the pass, with
    the agent idle) and during the pass."""
    info: dict[str, Any] = {"condition": condition, "load_avg_before": load_avg()}
    if condition == QUIET:
        meter = ForeignCpu(agent_pids)
        figures = measure.run(condition)
        info["cpu"] = meter.stop()
        ended = time.monotonic()
        trainer_info = None
    else:
        with trainers_running(2, lock_dir) as trainers:
            pids = agent_pids + [p.pid for p in trainers.processes]
            meter = ForeignCpu(pids)
            alone_start = time.monotonic()
            time.sleep(alone_s)
            alone_end = time.monotonic()
            alone_cpu = meter.stop()
            meter = ForeignCpu(pids)
            figures = measure.run(condition)
            info["cpu"] = meter.stop()
            ended = time.monotonic()
            logs = trainers.stop()
        trainer_info = trainer_throughput(
            logs, (alone_start, alone_end), (meter.start[0], ended), lock_dir
        )
        trainer_info["alone_cpu"] = alone_cpu
    info["wall_s"] = round(ended - meter.start[0], 2)
    info["load_avg_after"] = load_avg()
    return figures, info, trainer_info


def trainer_throughput(
    logs: list[dict[str, list[float]]],
    alone: tuple[float, float],
    during: tuple[float, float],
    lock_dir: Path | None,
) -> dict[str, Any]:
    """The trainers' steps/s in both windows, and under the lock how long their steps waited."""
    steps_alone = steps_per_s(logs, *alone)
    steps_during = steps_per_s(logs, *during)
    info: dict[str, Any] = {
        "alone_s": round(alone[1] - alone[0], 2),
        "steps_per_s_alone": steps_alone,
        "steps_per_s_during_pass": steps_during,
        "throughput_retained": round(steps_during["total"] / steps_alone["total"], 4),
    }
    if lock_dir is not None:
        pass_s = during[1] - during[0]
        waited = [sum(log["lock_wait_s"]) for log in logs]
        info["lock_wait_s"] = [round(w, 2) for w in waited]
        info["lock_wait_fraction_of_pass"] = [round(w / pass_s, 4) for w in waited]
    log(
        f"  trainers: {steps_alone['total']:.2f} steps/s alone, {steps_during['total']:.2f} "
        f"during the pass ({info['throughput_retained']:.0%})"
    )
    return info


# -- part (b): a whole campaign, then a quiet paired re-measurement of what it recorded --------

REPO = Path(__file__).resolve().parent.parent
WINNER_ERROR_TARGET = 0.05
WINNER_GAP_TARGET = 0.03


def run_campaign_once(args: argparse.Namespace, folder: Path) -> tuple[Path, float | None]:
    """``vitopt run CAMPAIGN`` as README command 1 runs it, from ``folder`` (where ``runs/``
    lands), with the code of ``--code`` (this checkout by default: another one, e.g. an older
    commit's worktree, measures its recorded speedups the same way). With ``--campaign-dir``
    an earlier run is read instead. Returns the folder holding ``runs/`` and the wall time."""
    if args.campaign_dir is not None:
        return Path(args.campaign_dir).resolve(), None
    folder.mkdir(parents=True, exist_ok=True)
    code = Path(args.code).resolve()
    env = dict(os.environ, PYTHONPATH=str(code))
    command = [sys.executable, "-m", "optimizer", "run", str(Path(args.campaign).resolve())]
    log(f"part b: {' '.join(command)} (code {code}, in {folder}) …")
    started = time.monotonic()
    with open(folder / "campaign.log", "w") as output:
        done = subprocess.run(command, cwd=folder, env=env, stdout=output, stderr=subprocess.STDOUT)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(
            f"the campaign failed ({done.returncode}): see {folder / 'campaign.log'}"
        )
    log(f"  campaign done in {wall:.0f} s")
    return folder, wall


class OrtTimer:
    """One model in onnxruntime in this process, one thread, timed run by run: the
    re-measurement shares no code with the agent's timing. ``disabled_optimizers``: graph
    optimizations (by name) the session skips; ``profile_prefix``: onnxruntime's profiler on,
    writing there (``session.end_profiling()`` names the file)."""

    def __init__(
        self,
        path: Path,
        block_ms: float,
        disabled_optimizers: Sequence[str] = (),
        profile_prefix: str | None = None,
    ):
        import numpy as np
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        if profile_prefix is not None:
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
        self.session = ort.InferenceSession(
            str(path),
            options,
            providers=["CPUExecutionProvider"],
            disabled_optimizers=list(disabled_optimizers),
        )
        feed = self.session.get_inputs()[0]
        shape = [d if isinstance(d, int) else 1 for d in feed.shape]
        self.feeds = {feed.name: np.random.default_rng(0).standard_normal(shape, np.float32)}
        for _ in range(20):  # warm-up
            self.session.run(None, self.feeds)
        per_run_ms = statistics.median(self.block(5))
        self.runs = max(10, math.ceil(block_ms / max(per_run_ms, 1e-3)))

    def block(self, runs: int | None = None) -> list[float]:
        samples = []
        for _ in range(runs or self.runs):
            start = time.perf_counter()
            self.session.run(None, self.feeds)
            samples.append((time.perf_counter() - start) * 1000.0)
        return samples


def host_measuring() -> Callable[[], AbstractContextManager[Any]]:
    """This host's measurement lock, the one campaigns' trials pause for, as ``remeasure``'s
    ``hold``; nothing to hold where no campaign has made the lock's folder."""
    from jetson_agent.quiet import DeviceLock
    from optimizer.device.colocation import host_lock_folder

    folder = host_lock_folder()
    return DeviceLock(str(folder)).measuring if folder.is_dir() else nullcontext


def remeasure(
    baseline: Path,
    models: dict[int, Path],
    rounds: int,
    block_ms: float,
    seed: int,
    hold: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> dict[int, dict[str, Any]]:
    """Every model against the baseline's, quiet, in one process: each round times a block of
    the baseline and one of the model, in alternating order, for every model in a shuffled
    order, inside ``hold()`` (a host's measurement lock, say); a model's speedup is the median
    of its round ratios, with the order-statistics 95 % interval."""
    from jetson_agent.stats import median_interval

    base = OrtTimer(baseline, block_ms)
    timers = {number: OrtTimer(path, block_ms) for number, path in models.items()}
    ratios: dict[int, list[float]] = {number: [] for number in timers}
    order = list(timers)
    shuffle = random.Random(seed)
    for round_number in range(rounds):
        shuffle.shuffle(order)
        with hold():
            for number in order:
                if round_number % 2 == 0:
                    ref, cand = base.block(), timers[number].block()
                else:
                    cand, ref = timers[number].block(), base.block()
                ratios[number].append(statistics.median(ref) / statistics.median(cand))
        if round_number % 10 == 9:
            log(f"  re-measured {round_number + 1}/{rounds} rounds")
    result = {}
    for number, values in ratios.items():
        low, high, coverage = median_interval(values)
        result[number] = {
            "speedup": statistics.median(values),
            "speedup_ci": [low, high],
            "confidence": coverage,
        }
    return result


def recorded_speedup(trial: Any, base: Any) -> float:
    """The speedup the search acted on. Before paired jobs a trial cut after its probe kept
    only the probe's absolute latency, to be read against the baseline's."""
    attrs = trial.user_attrs
    if "speedup" in attrs:
        return attrs["speedup"]
    return base.user_attrs["latency_ms"] / attrs["probe_latency_ms"]


def rebuild_cut_models(
    campaign: Any, where: Path, base: Any, trials: list[Any], folder: Path
) -> dict[int, Path]:
    """The models of cut trials whose run kept none (before cut trials kept theirs), rebuilt by
    this checkout's pipeline from their recorded parameters: pruned from the campaign's cached
    baseline, exported and quantized as the trial did, then cut after the probe (a cut no
    candidate passes), so nothing is trained. Their MACs are checked against the record."""
    from rich.console import Console

    from optimizer.campaign.driver import against_baseline, agent_endpoint, prepare
    from optimizer.device.pool import AgentPool
    from optimizer.trial.outcome import TrialRequest
    from optimizer.trial.pipeline import run_trial

    console = Console(stderr=True, quiet=True)
    models: dict[int, Path] = {}
    previous = Path.cwd()
    # The campaign's runs/ (its cached baseline) are relative to the working directory; not
    # ``where`` itself, whose own jetson_agent/ (a checkout's) would start as the agent.
    (folder / "runs").mkdir(parents=True, exist_ok=True)
    (folder / "runs" / campaign.name).symlink_to(where / "runs" / campaign.name)
    os.chdir(folder)
    try:
        with agent_endpoint(campaign, console) as endpoint:
            setup = prepare(campaign, console, endpoint)
            against = against_baseline(campaign, base)
            for trial in trials:
                log(f"  rebuilding cut trial {trial.number}")
                outcome = run_trial(
                    TrialRequest(
                        campaign=campaign,
                        number=trial.number,
                        params=dict(trial.user_attrs["resolved_params"]),
                        checkpoint=setup.checkpoint,
                        agents=AgentPool(*setup.pool_args()),
                        agent_token=None,
                        device_info=setup.device_info,
                        work_dir=folder / f"rebuilt-{trial.number:05d}",
                        **against,
                        cut_speedup=math.inf,
                    )
                )
                if outcome.attrs.get("macs") != trial.user_attrs.get("macs"):
                    raise RuntimeError(
                        f"trial {trial.number} rebuilt with {outcome.attrs.get('macs')} MACs, "
                        f"recorded {trial.user_attrs.get('macs')}: not the model it timed"
                    )
                models[trial.number] = Path(outcome.artifacts["model.onnx"])
    finally:
        os.chdir(previous)
    return models


def part_b(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    import optuna
    from optuna.trial import TrialState

    from optimizer.campaign.study import best_feasible
    from optimizer.config import load_campaign

    campaign = load_campaign(args.campaign)
    where, wall = run_campaign_once(args, folder / "campaign")
    runs = where / "runs" / campaign.name
    study = optuna.load_study(study_name=campaign.name, storage=f"sqlite:///{runs / 'study.db'}")
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    base = next(t for t in complete if t.user_attrs.get("baseline"))
    cut = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
        if str(t.user_attrs.get("pruned_reason", "")).startswith("latency first")
    ]
    candidates = [t for t in complete if t.number != base.number] + cut
    model = runs / "trials" / "{:05d}" / "model.onnx"
    models = {t.number: Path(str(model).format(t.number)) for t in candidates}
    missing = [t for t in cut if not models[t.number].exists()]
    rebuilt = rebuild_cut_models(campaign, where, base, missing, folder) if missing else {}
    models.update(rebuilt)
    log(
        f"part b: re-measuring {len(candidates)} candidates ({len(cut)} cut after their probe, "
        f"{len(rebuilt)} rebuilt) against trial {base.number}"
    )
    meter = ForeignCpu([])
    again = remeasure(
        Path(str(model).format(base.number)), models, args.rounds, args.block_ms, args.seed
    )
    cpu = meter.stop()
    rows = []
    for trial in candidates:
        attrs = trial.user_attrs
        measured = again[trial.number]
        recorded = recorded_speedup(trial, base)
        rows.append(
            {
                "trial": trial.number,
                "state": trial.state.name,
                "feasible": bool(attrs.get("feasible")),
                "params": dict(trial.params),
                "mac_ratio": base.user_attrs["macs"] / attrs["macs"],
                "recorded_speedup": recorded,
                "recorded_speedup_ci": attrs.get("speedup_ci"),  # absent before paired jobs
                "remeasured_speedup": measured["speedup"],
                "remeasured_speedup_ci": measured["speedup_ci"],
                "recorded_error": recorded / measured["speedup"] - 1.0,
                "rebuilt": trial.number in rebuilt,
            }
        )
    winner = best_feasible(study)
    feasible = [r for r in rows if r["feasible"]]
    best_again = max(feasible, key=lambda r: r["remeasured_speedup"], default=None)
    done = [r for r in rows if r["state"] == "COMPLETE"]
    summary: dict[str, Any] = {
        "complete_candidates": len(done),
        "cut_candidates": len(cut),
        "feasible_candidates": len(feasible),
        "kendall_tau_recorded_vs_remeasured": kendall_tau(
            [r["recorded_speedup"] for r in rows], [r["remeasured_speedup"] for r in rows]
        ),
        "kendall_tau_complete_only": kendall_tau(
            [r["recorded_speedup"] for r in done], [r["remeasured_speedup"] for r in done]
        ),
        "median_abs_recorded_error": statistics.median(abs(r["recorded_error"]) for r in rows)
        if rows
        else None,
        "max_abs_recorded_error": max((abs(r["recorded_error"]) for r in rows), default=None),
        "above_mac_ratio": [
            r["trial"] for r in rows if r["remeasured_speedup_ci"][0] > r["mac_ratio"]
        ],
        "winner": None,
        "remeasured_best_feasible": best_again["trial"] if best_again else None,
    }
    if winner is not None and winner.number != base.number:
        row = next(r for r in rows if r["trial"] == winner.number)
        gap = row["remeasured_speedup"] / best_again["remeasured_speedup"] - 1.0
        summary["winner"] = {
            "trial": winner.number,
            "recorded_speedup": row["recorded_speedup"],
            "remeasured_speedup": row["remeasured_speedup"],
            "error": row["recorded_error"],
            "within_5pct": abs(row["recorded_error"]) <= WINNER_ERROR_TARGET,
            "is_remeasured_best_feasible": winner.number == best_again["trial"],
            "gap_to_remeasured_best_feasible": gap,
            "within_3pct_of_best": gap >= -WINNER_GAP_TARGET,
        }
        # A cut candidate is lost for good: it was wrongly cut when it is in fact faster than
        # the winner (whether it would have kept its accuracy is unknown: it was never trained).
        summary["cut_but_faster_than_winner"] = [
            r["trial"]
            for r in rows
            if r["state"] == "PRUNED" and r["remeasured_speedup"] > row["remeasured_speedup"]
        ]
    return {
        "campaign": str(args.campaign),
        "code": str(Path(args.code).resolve()),
        "campaign_wall_s": None if wall is None else round(wall, 1),
        "runs": str(runs),
        "baseline_trial": base.number,
        "remeasure": {
            "rounds": args.rounds,
            "block_ms": args.block_ms,
            "ort_threads": 1,
            "cpu": cpu,
            "how": "onnxruntime in the bench's own process (not the agent), each model's "
            "blocks interleaved with the baseline model's, order alternating per round",
        },
        "summary": summary,
        "trials": rows,
    }


PARTS: dict[str, Callable[[argparse.Namespace, Path], dict[str, Any]]] = {
    "a": part_a,
    "b": part_b,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--part",
        choices=[*sorted(PARTS), "all"],
        default="all",
        help="which part to run (default: all of them)",
    )
    parser.add_argument("--quiet-jobs", type=int, default=5, help="quiet passes (default 5)")
    parser.add_argument(
        "--models", type=int, default=len(DEMO_ARCHS), help="demo architectures (default 10)"
    )
    parser.add_argument(
        "--max-time-s", type=float, default=5.0, help="paired jobs' max_time_s (default 5)"
    )
    parser.add_argument(
        "--trainer-alone-s",
        type=float,
        default=10.0,
        help="seconds the trainers run alone before each loaded pass (default 10)",
    )
    parser.add_argument("--seed", type=int, default=0, help="weights and pass order (default 0)")
    parser.add_argument(
        "--quick", action="store_true", help="3 demo models, 2 quiet passes (a smoke run)"
    )
    parser.add_argument(
        "--campaign",
        default=str(REPO / "search_spaces" / "demo_digits.yaml"),
        help="part b: the campaign to run (default the demo)",
    )
    parser.add_argument(
        "--code",
        default=str(REPO),
        help="part b: the checkout whose vitopt runs the campaign (default this one)",
    )
    parser.add_argument(
        "--campaign-dir", help="part b: read the campaign already run in DIR (DIR/runs/NAME)"
    )
    parser.add_argument(
        "--rounds", type=int, default=30, help="part b: re-measurement rounds (default 30)"
    )
    parser.add_argument(
        "--block-ms", type=float, default=50.0, help="part b: least ms of a block (default 50)"
    )
    parser.add_argument("--trainer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--trainer-lock", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trainer:
        trainer_main(args.trainer_lock)
        return
    if args.quick:
        args.models, args.quiet_jobs, args.max_time_s, args.trainer_alone_s = 3, 2, 2.0, 3.0
    if args.quiet_jobs < 2:
        parser.error("--quiet-jobs must be at least 2 (a CV needs two)")
    started = time.monotonic()
    load_start = load_avg()
    parts = sorted(PARTS) if args.part == "all" else [args.part]
    results = {}
    with tempfile.TemporaryDirectory(prefix="vitopt-fidelity-") as tmp:
        for name in parts:
            results[name] = PARTS[name](args, Path(tmp) / name)
    print(
        json.dumps(
            {
                "bench": "fidelity",
                "machine": {
                    "cpus": os.cpu_count(),
                    "cpu": platform.processor() or platform.machine(),
                    "python": sys.version.split()[0],
                },
                "load_avg": {"start": load_start, "end": load_avg()},
                "options": {
                    key: getattr(args, key)
                    for key in (
                        "quiet_jobs",
                        "models",
                        "max_time_s",
                        "trainer_alone_s",
                        "seed",
                        "campaign",
                        "code",
                        "rounds",
                        "block_ms",
                    )
                },
                "ort_threads": 1,
                "wall_s": round(time.monotonic() - started, 1),
                "parts": results,
            },
            default=str,
        )
    )


if __name__ == "__main__":
    main()
