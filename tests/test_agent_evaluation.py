"""Evaluation jobs on the real agent (onnxruntime backend, 127.0.0.1): the device's outputs are
the host's, fp32 and int8; bad input files are clear 4xx answers and the agent stays up; a
backend that only times says so."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from agent_helpers import RunningAgent, start_agent
from campaign_helpers import write_campaign
from click.testing import CliRunner

from jetson_agent import multipart, npy
from optimizer.cli import main
from optimizer.device.client import AgentClient, AgentRequestError
from optimizer.plugin_testing import tiny_onnx
from plugins.int8_onnxruntime import ort_quantization

ROWS = 12


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> RunningAgent:
    running = start_agent(tmp_path_factory.mktemp("evaluation"), "--max-upload-mb", "2")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    fp32 = tiny_onnx(folder).path
    int8 = folder / "int8.onnx"
    with ort_quantization() as quantization:
        quantization.quantize_dynamic(str(fp32), str(int8))
    return {"fp32": fp32, "int8": int8}


def rows(count: int = ROWS, dtype: str = "float32", shape: tuple = (3, 16, 16)) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((count, *shape)).astype(dtype)


def host_outputs(model: Path, inputs: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: row[None]})[0] for row in inputs])


@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_the_devices_outputs_are_the_hosts(agent: RunningAgent, models: dict, kind: str) -> None:
    inputs = rows()
    (device,) = AgentClient(agent.url).evaluate(models[kind], kind, inputs)
    host = host_outputs(models[kind], inputs)
    assert device.shape == host.shape == (ROWS, 10)
    np.testing.assert_allclose(device, host, rtol=1e-5, atol=1e-6)
    assert np.array_equal(device.argmax(axis=1), host.argmax(axis=1))  # the same top-1


def post(agent: RunningAgent, fields: dict[str, bytes]) -> tuple[int, dict | None]:
    boundary = uuid.uuid4().hex.encode()
    parts = {name: (name, "application/octet-stream", value) for name, value in fields.items()}
    body = multipart.build(parts, boundary)
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary.decode()}"}
    status, payload, _ = agent.request("POST", "/v1/evaluations", body, headers)
    return status, payload


def good_fields(models: dict, inputs: bytes | None = None) -> dict[str, bytes]:
    return {
        "spec": json.dumps({"precision": "fp32"}).encode(),
        "model": models["fp32"].read_bytes(),
        "inputs": npy.dump_numpy(rows(2)) if inputs is None else inputs,
    }


def saved(array: np.ndarray, **options: object) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, **options)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("inputs", "status", "code", "message"),
    [
        (b"not an npy file", 400, "bad_inputs", "not an .npy file"),
        (saved(rows(2))[:-5], 400, "bad_inputs", "data is"),
        (
            saved(np.array([{"a": 1}], dtype=object), allow_pickle=True),
            400,
            "bad_inputs",
            "pickles",
        ),
        (saved(rows(2, "float64")), 422, "input_mismatch", "takes float32; the inputs are float64"),
        (
            saved(rows(2, shape=(3, 32, 32))),
            422,
            "input_mismatch",
            "rows of the inputs are 3x32x32",
        ),
        (saved(rows(2, shape=(16, 16))), 422, "input_mismatch", "which is not rows of it"),
        (saved(np.zeros((0, 3, 16, 16), np.float32)), 422, "input_mismatch", "no row"),
    ],
)
def test_bad_inputs_are_refused_with_what_is_wrong(
    agent: RunningAgent, models: dict, inputs: bytes, status: int, code: str, message: str
) -> None:
    got, payload = post(agent, good_fields(models, inputs))
    assert got == status, payload
    assert payload["error"]["code"] == code
    assert message in payload["error"]["message"]
    assert agent.alive()


def test_oversized_fields_and_bad_specs_are_refused_and_a_good_job_still_runs(
    agent: RunningAgent, models: dict
) -> None:
    big = saved(rows(1200))  # 1200 x 3 x 16 x 16 float32: 3.7 MB over the 2 MB cap
    status, payload = post(agent, good_fields(models, big))
    assert status == 413 and payload["error"]["code"] == "payload_too_large"
    fields = good_fields(models)
    status, payload = post(agent, {**fields, "spec": b'{"precision": "fp32", "warmup": 3}'})
    assert (
        status == 400 and "unknown evaluation spec field(s) warmup" in payload["error"]["message"]
    )
    status, payload = post(agent, {"spec": fields["spec"], "model": fields["model"]})
    assert (
        status == 400
        and "exactly the fields 'spec', 'model' and 'inputs'" in (payload["error"]["message"])
    )
    assert agent.alive()
    (outputs,) = AgentClient(agent.url).evaluate(models["fp32"], "fp32", rows(3))
    assert outputs.shape == (3, 10)


def test_outputs_of_what_is_not_a_finished_evaluation_are_refused(
    agent: RunningAgent, models: dict
) -> None:
    client = AgentClient(agent.url)
    measured = client.submit(models["fp32"], {"iterations": 5, "repeats": 1, "warmup": 1})
    client.wait(measured["job_id"])
    with pytest.raises(AgentRequestError, match="is a measurement: it has no outputs"):
        client._request("GET", f"/v1/jobs/{measured['job_id']}/outputs/0", binary=True)
    status, submitted = post(agent, good_fields(models))
    assert status == 202 and submitted["kind"] == "evaluate"
    job = agent.wait_done(submitted["job_id"])
    assert job["result"]["status"] == "ok" and job["result"]["inferences"] == 2
    assert job["result"]["outputs"] == [{"index": 0, "shape": [2, 10], "dtype": "float32"}]
    for index, code in (("1", "unknown_output"), ("x", "unknown_output")):
        status, payload, _ = agent.request("GET", f"/v1/jobs/{submitted['job_id']}/outputs/{index}")
        assert status == 404 and payload["error"]["code"] == code


def test_a_backend_that_only_times_says_so(tmp_path: Path, models: dict) -> None:
    agent = start_agent(tmp_path, "--backend", "fault_backends:TimingOnlyBackend")
    try:
        assert agent.request("GET", "/v1/info")[1]["evaluates"] is False
        status, payload = post(agent, good_fields(models))
        assert status == 501 and payload["error"]["code"] == "evaluation_unsupported"
        assert "times models but does not evaluate them" in payload["error"]["message"]
    finally:
        agent.stop()


def test_vitopt_agent_evaluate_writes_outputs_and_scores_a_campaigns_split(
    agent: RunningAgent, models: dict, tmp_path: Path
) -> None:
    inputs, out = tmp_path / "inputs.npy", tmp_path / "outputs.npy"
    inputs.write_bytes(npy.dump_numpy(rows(4)))
    runner = CliRunner()
    model = str(models["fp32"])
    result = runner.invoke(
        main, ["agent", "evaluate", agent.url, model, "--inputs", str(inputs), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert np.array_equal(
        np.load(out), AgentClient(agent.url).evaluate(models["fp32"], "fp32", rows(4))[0]
    )

    campaign = write_campaign(tmp_path)  # digits at 16 px, 10 classes: the tiny model's input
    result = runner.invoke(
        main, ["agent", "evaluate", agent.url, model, "--campaign", str(campaign)]
    )
    assert result.exit_code == 0, result.output
    device, host = (line.rsplit(" ", 1)[1] for line in result.output.strip().splitlines()[-2:])
    assert result.output.count("top-1 on") == 2 and device == host

    refused = runner.invoke(main, ["agent", "evaluate", agent.url, model, "--inputs", str(inputs)])
    assert refused.exit_code == 2 and "--inputs needs --out" in refused.output


@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_a_segmentation_model_scores_the_same_miou_from_the_devices_outputs(
    agent: RunningAgent, tmp_path: Path, kind: str
) -> None:
    import torch
    from torch.utils.data import Subset

    from optimizer.config import ModelConfig
    from optimizer.trial.evaluation import test_inputs
    from optimizer.trial.export import export_onnx
    from plugins.families.vit import VIT
    from plugins.segmentation import Segmentation
    from plugins.uav_data import load_synthetic_splits

    task = Segmentation()
    torch.manual_seed(0)
    kwargs = {"patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 4, "head_width": 32}
    model = task.build_model(ModelConfig(name="vit_tiny_patch16_224", kwargs=kwargs), 6, 32, VIT)
    path = export_onnx(model.eval(), torch.randn(1, 3, 32, 32), tmp_path / "seg.onnx")
    if kind == "int8":
        with ort_quantization() as quantization:
            quantization.quantize_dynamic(str(path), str(tmp_path / "seg-int8.onnx"))
        path = tmp_path / "seg-int8.onnx"
    test = Subset(load_synthetic_splits(32).test, range(6))
    outputs = AgentClient(agent.url).evaluate(path, kind, test_inputs(test))
    assert outputs[0].shape == (6, 6, 32, 32)
    device = task.evaluate_outputs(outputs, test)
    host = task.evaluate_onnx_metrics(path, test)
    assert device["score"] == host["score"] and device["per_class_iou"] == host["per_class_iou"]


def test_an_evaluation_runs_the_engine_its_timing_job_built(tmp_path: Path, models: dict) -> None:
    agent = start_agent(tmp_path)
    try:
        client = AgentClient(agent.url)
        timed = client.measure(models["fp32"], {"iterations": 5, "repeats": 1, "warmup": 1})
        assert timed["build"]["engine_cache_hit"] is False
        status, submitted = post(agent, good_fields(models))
        assert status == 202, submitted
        job = agent.wait_done(submitted["job_id"])
        assert job["spec"]["input_shape"] is None  # the model's own static shape, as timed
        assert job["result"]["build"]["engine_cache_hit"] is True
    finally:
        agent.stop()
