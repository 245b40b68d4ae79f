"""What kind of int8 runtime the target device has, read from the agent's ``GET /v1/info``.

Each int8 recipe is offered for the runtimes that accelerate it (``plugins/quantization.py``):

``tensorrt``
    TensorRT builds the engine: the ``tensorrt`` and ``trtexec`` backends, and onnxruntime with
    the TensorRT execution provider (its version string lists the provider). TensorRT runs
    explicitly quantized (Q/DQ) graphs with symmetric, signed quantizers.
``gpu``
    onnxruntime with the CUDA execution provider: it runs Q/DQ graphs on the GPU, while the CPU
    recipes' integer ops (``DynamicQuantizeLinear``, ``MatMulInteger``) have no fast CUDA kernel.
``cpu``
    onnxruntime on the CPU, or a device that says nothing about itself (no agent info).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Runtime = Literal["tensorrt", "gpu", "cpu"]


@dataclass(frozen=True)
class Int8Target:
    """The device's int8 runtime, and TensorRT's version where the agent reports it (the
    ``tensorrt`` and ``trtexec`` backends do; onnxruntime's TensorRT provider does not)."""

    runtime: Runtime
    trt_version: tuple[int, ...] | None = None

    @property
    def tensorrt(self) -> bool:
        return self.runtime == "tensorrt"


def _version_tuple(text: Any) -> tuple[int, ...] | None:
    match = re.search(r"\d+(?:\.\d+)*", str(text or ""))
    return tuple(int(n) for n in match.group(0).split(".")) if match else None


def int8_target(device_info: Mapping[str, Any]) -> Int8Target:
    """The :class:`Int8Target` of a device, from the ``backend`` entry of its info (``{"name":
    "tensorrt", "version": "8.2.1.8"}``, ``{"name": "onnxruntime", "version": "onnxruntime
    1.32.0 (CUDAExecutionProvider,CPUExecutionProvider)"}``)."""
    backend = device_info.get("backend")
    if not isinstance(backend, Mapping):
        return Int8Target("cpu")
    name = str(backend.get("name", "")).lower()
    version = str(backend.get("version", ""))
    if "tensorrt" in name or "trtexec" in name:
        return Int8Target("tensorrt", _version_tuple(version))
    if "tensorrt" in version.lower():
        return Int8Target("tensorrt")
    if "cuda" in version.lower():
        return Int8Target("gpu")
    return Int8Target("cpu")
