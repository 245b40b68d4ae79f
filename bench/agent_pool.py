"""Agent pool throughput: measurement jobs per minute with 1 and with 2 loopback agents.

What it measures: real agents (``python -m jetson_agent serve``, onnxruntime backend, one
intra-op thread each via JETSON_AGENT_ORT_THREADS=1) started on 127.0.0.1, and the same job
list sent to them through one shared ``AgentPool`` by ``--clients`` threads, each measuring
through ``PooledMeasurement`` as trials do. The jobs are ``--rounds`` passes over ``--models``
distinct tiny ViT ONNX files (same architecture, different random weights, so different
sha256), with ``use_cache: false`` and a fixed spec (fp32, warmup 10, 200 iterations, 1
repeat). Each agent count gets fresh agents with empty caches, so both upload every model once
per agent; agent start-up is outside the timed part.

    .venv/bin/python bench/agent_pool.py [--quick] [--models 8] [--rounds 3] [--clients 4]

How to read the JSON: ``runs[*].jobs_per_min`` for 1 and 2 agents and ``speedup`` (2 over 1;
2.0 is perfect scaling). ``agent_jobs`` is each agent's job count from ``pool.snapshot()``:
least-busy leasing should split them evenly. ``service_s_mean`` is the agent-side time per job
(started to finished: the job's own subprocess starting, the session build, ``build_s_mean``,
and the timed iterations): if it grows with 2 agents, they contend for the cores (each agent
needs one, plus the clients and HTTP threads), which caps the speedup on a 2-core machine.
``load_avg_1m_before`` says how busy the machine already was.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from optimizer.device.client import sha256_file
from optimizer.device.local_agent import start_local_agent, stop_local_agent
from optimizer.device.pool import AgentPool, PooledMeasurement, probe_agents

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # not a package
from model_factory import export_tiny_vit

SPEC = {"warmup": 10, "iterations": 200, "repeats": 1, "precision": "fp32", "use_cache": False}


def export_models(folder: Path, count: int, img_size: int) -> list[Path]:
    """``count`` ViTs of one architecture with different seeded weights: equal cost per job,
    distinct sha256 (so the agent never mistakes one for another)."""
    import torch

    paths = []
    for seed in range(count):
        torch.manual_seed(seed)
        paths.append(export_tiny_vit(folder / f"vit-{seed}.onnx", img_size=img_size))
    if len({sha256_file(p) for p in paths}) != count:
        raise RuntimeError("two exported models have the same sha256")
    return paths


def run_jobs(urls: list[str], jobs: list[Path], clients: int) -> dict[str, Any]:
    """All ``jobs`` through one pool over ``urls`` from ``clients`` threads; wall and counts."""
    plan = probe_agents(urls, None, None)
    pool = AgentPool(urls, plan.device_type, None, 10.0, plan.silent)

    def measure(model: Path) -> dict[str, Any]:
        return PooledMeasurement(pool, None, wait_healthy_s=60.0)(model, SPEC)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as threads:
        results = list(threads.map(measure, jobs))
    wall_s = time.perf_counter() - started
    snapshot = pool.snapshot()
    service = [r["job"]["finished_at"] - r["job"]["started_at"] for r in results]
    return {
        "agents": len(urls),
        "jobs": len(results),
        "wall_s": round(wall_s, 3),
        "jobs_per_min": round(len(results) * 60 / wall_s, 3),
        "agent_jobs": [s["jobs"] for s in snapshot],
        "agent_failures": sum(s["failures"] for s in snapshot),
        "service_s_mean": round(statistics.mean(service), 4),
        "build_s_mean": round(statistics.mean(r["build"]["time_s"] for r in results), 4),
        "latency_p50_ms_median": round(
            statistics.median(r["latency_ms"]["p50"] for r in results), 4
        ),
    }


def with_agents(count: int, folder: Path, jobs: list[Path], clients: int) -> dict[str, Any]:
    """Start ``count`` fresh agents, run the jobs, stop the agents whatever happens."""
    env = dict(os.environ, JETSON_AGENT_ORT_THREADS="1")
    processes: list[subprocess.Popen] = []
    try:
        urls = []
        for index in range(count):
            process, url = start_local_agent(
                folder / f"agents{count}-cache{index}",
                "--backend",
                "onnxruntime",
                "--log-level",
                "WARNING",
                env=env,
            )
            processes.append(process)
            urls.append(url)
        return run_jobs(urls, jobs, clients)
    finally:
        for process in processes:
            stop_local_agent(process)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=int, default=8, help="distinct models (default 8)")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the models (3)")
    parser.add_argument("--clients", type=int, default=4, help="client threads (default 4)")
    parser.add_argument("--img-size", type=int, default=32, help="ViT input size (default 32)")
    parser.add_argument("--quick", action="store_true", help="2 models, 2 rounds (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.models, args.rounds = 2, 2
    load_before = os.getloadavg()[0]  # other work on the machine skews the figures
    with tempfile.TemporaryDirectory(prefix="vitopt-bench-") as tmp:
        folder = Path(tmp)
        print(f"exporting {args.models} models …", file=sys.stderr)
        models = export_models(folder, args.models, args.img_size)
        jobs = models * args.rounds
        runs = []
        for count in (1, 2):
            print(f"{count} agent(s), {len(jobs)} jobs …", file=sys.stderr)
            runs.append(with_agents(count, folder, jobs, args.clients))
    print(
        json.dumps(
            {
                "bench": "agent_pool",
                "machine": {
                    "cpus": os.cpu_count(),
                    "load_avg_1m_before": round(load_before, 2),
                    "python": sys.version.split()[0],
                },
                "model": f"vit_tiny depth=2 img={args.img_size} patch=4",
                "models": args.models,
                "rounds": args.rounds,
                "clients": args.clients,
                "spec": SPEC,
                "ort_threads_per_agent": 1,
                "runs": runs,
                "speedup": round(runs[1]["jobs_per_min"] / runs[0]["jobs_per_min"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
