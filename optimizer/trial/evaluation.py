"""Scoring the deployable model: on the host (onnxruntime here) and, with ``objective.evaluate_on:
device``, on the outputs the device's engine returns for the test inputs (an evaluation job on
the agent; the labels never leave this process). Where both run, both are recorded and a
disagreement is flagged: a reduced-precision engine can score far from its ONNX file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from optimizer.plugin_api.task import SCORE
from optimizer.plugin_api.technique import OnnxArtifact
from optimizer.trial.outcome import DISAGREEMENT, DISAGREEMENT_ATTR

# Room left in an upload for the multipart framing and the spec.
_UPLOAD_MARGIN_BYTES = 64 * 1024


def test_inputs(dataset: Any) -> np.ndarray:
    """The inputs of ``dataset``, stacked: the rows an evaluation job runs."""
    return np.stack([np.asarray(dataset[i][0], dtype=np.float32) for i in range(len(dataset))])


def chunks(inputs: np.ndarray, model_bytes: int, max_upload_bytes: int) -> list[np.ndarray]:
    """``inputs`` cut into batches that each fit one upload beside the model; ValueError when
    the agent's cap cannot hold the model and one row."""
    room = max_upload_bytes - model_bytes - _UPLOAD_MARGIN_BYTES
    row_bytes = int(inputs[0].nbytes) if len(inputs) else 1
    if room < row_bytes:
        raise ValueError(
            f"the agent takes uploads of at most {max_upload_bytes / 2**20:.1f} MiB, too few for "
            f"the model ({model_bytes / 2**20:.1f} MiB) and one input: start it with a larger "
            "--max-upload-mb, or set objective.evaluate_on: host"
        )
    per = max(1, room // row_bytes)
    return [inputs[start : start + per] for start in range(0, len(inputs), per)]


def device_outputs(
    run: Callable[[Path, str, np.ndarray], list[np.ndarray]],
    artifact: OnnxArtifact,
    inputs: np.ndarray,
    max_upload_bytes: int,
) -> list[np.ndarray]:
    """The model's outputs on ``inputs`` as the device runs it at the artifact's precision
    (each output's rows stacked), through evaluation jobs that fit the agent's upload cap;
    ``run(model, precision, batch)`` is one job (:meth:`AgentClient.evaluate`, or a pool's)."""
    model_bytes = artifact.path.stat().st_size
    parts = [
        run(artifact.path, artifact.precision, batch)
        for batch in chunks(inputs, model_bytes, max_upload_bytes)
    ]
    return [np.concatenate([part[k] for part in parts]) for k in range(len(parts[0]))]


def scores(host: dict[str, Any], device: dict[str, Any] | None) -> dict[str, Any]:
    """The trial attributes of its scoring: ``accuracy`` (the device's where it evaluated, else
    the host's), ``host_accuracy``, ``device_accuracy``, ``evaluated_on`` and the flag."""
    host_score = float(host[SCORE])
    if device is None:
        return {"accuracy": host_score, "host_accuracy": host_score, "evaluated_on": "host"}
    device_score = float(device[SCORE])
    return {
        "accuracy": device_score,
        "host_accuracy": host_score,
        "device_accuracy": device_score,
        "evaluated_on": "device",
        DISAGREEMENT_ATTR: abs(device_score - host_score) > DISAGREEMENT,
    }
