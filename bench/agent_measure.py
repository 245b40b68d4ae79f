"""Agent measurement stability and cache speed, on this machine, through real HTTP.

Starts the real agent (onnxruntime backend) on a loopback port, measures one timm ViT exported to
ONNX in N fresh jobs (``use_cache: false``), then asks for an identical cached job and times the
whole client round trip. Prints one JSON line.

    .venv/bin/python bench/agent_measure.py [--jobs 5] [--img-size 64] [--depth 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import timm
import torch

from optimizer.device.client import AgentClient
from optimizer.device.local_agent import local_agent
from optimizer.trial.export import export_onnx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = timm.create_model(
            "vit_tiny_patch16_224",
            pretrained=False,
            img_size=args.img_size,
            patch_size=8,
            depth=args.depth,
            num_classes=10,
        )
        onnx_path = export_onnx(
            model, torch.randn(1, 3, args.img_size, args.img_size), Path(tmp) / "vit.onnx"
        )
        with local_agent(Path(tmp) / "cache", "--backend", "onnxruntime") as url:
            client = AgentClient(url)
            spec = {"warmup": 20, "iterations": args.iterations, "repeats": args.repeats}
            jobs = []
            for _ in range(args.jobs):
                started = time.perf_counter()
                result = client.measure(onnx_path, dict(spec, use_cache=False))
                jobs.append((result, time.perf_counter() - started))
            started = time.perf_counter()
            cached = client.measure(onnx_path, dict(spec, use_cache=True))
            cache_hit_s = time.perf_counter() - started
    p50s = [r["latency_ms"]["p50"] for r, _ in jobs]
    print(
        json.dumps(
            {
                "bench": "agent_measure",
                "machine": {
                    "cpus": os.cpu_count(),
                    "cpu": platform.processor() or platform.machine(),
                },
                "model": f"vit_tiny depth={args.depth} img={args.img_size} patch=8",
                "backend": jobs[0][0]["backend"]["version"],
                "ort_threads": os.environ.get("JETSON_AGENT_ORT_THREADS", "onnxruntime default"),
                "spec": spec,
                "jobs": args.jobs,
                "p50_ms": [round(x, 4) for x in p50s],
                "cv": [round(r["latency_ms"]["cv"], 4) for r, _ in jobs],
                "remeasured": [r["remeasured"] for r, _ in jobs],
                "p50_across_jobs_cv": (
                    round(statistics.stdev(p50s) / statistics.mean(p50s), 4)
                    if len(p50s) > 1
                    else None
                ),
                "job_wall_s": [round(s, 3) for _, s in jobs],
                "cache_hit": cached["cache"]["result_hit"],
                "cache_hit_round_trip_ms": round(cache_hit_s * 1000, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
