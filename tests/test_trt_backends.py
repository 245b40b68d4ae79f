"""The two TensorRT backends, timing and evaluating.

trtexec: its real subprocess path runs against a fake ``trtexec`` (a script this file writes) that
replays recorded trtexec output from ``tests/fixtures/trtexec`` (see the README there), writes the
fixture ``--exportTimes`` JSON where it is asked to, and records every argv it was given.

tensorrt (Python API): TensorRT cannot be installed here, so only its version-dependent pure logic
and its buffer/timing code (against stand-in engine, context and CUDA objects) are tested; the
full build-and-run path is not exercised by this file.
"""

import json
import os
import stat
import sys
import time
from pathlib import Path

import pytest

from jetson_agent.backends import trt_common
from jetson_agent.backends.base import ModelInputs
from jetson_agent.backends.tensorrt_backend import (
    IOBuffers,
    TensorRTBackend,
    TensorRTSession,
    apply_workspace,
    build_failure,
    dtype_itemsize,
    execute_api,
    fill_byte,
    invalid_model_from_parser,
    network_flags,
    workspace_api,
)
from jetson_agent.backends.trtexec import (
    TrtexecBackend,
    find_trtexec,
    parse_export_times,
    parse_performance_summary,
    parse_prolog,
)
from jetson_agent.errors import (
    BuildFailed,
    BuildTimeout,
    InfraError,
    InvalidModel,
    OutOfMemory,
    UnsupportedPrecision,
)
from jetson_agent.paired import time_paired
from jetson_agent.spec import MeasureSpec
from jetson_agent.stats import median

FIXTURES = Path(__file__).parent / "fixtures" / "trtexec"

NANO = "NVIDIA Jetson Nano Developer Kit"
ORIN = "NVIDIA Jetson AGX Orin Developer Kit"

STATIC = ModelInputs([("input", [1, 3, 32, 32], 1)], opset=13)
DYNAMIC = ModelInputs([("input", [None, 3, 32, 32], 1)], opset=13)

FAKE_TRTEXEC = """\
#!{python}
import json, os, shutil, signal, sys, time

config = json.load(open(os.environ["FAKE_TRTEXEC_CONFIG"]))
args = sys.argv[1:]
with open(config["argv_log"], "a") as log:
    log.write(json.dumps(args) + "\\n")


def option(name):
    for arg in args:
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


mode = "help" if "--help" in args else ("build" if option("--onnx") else "run")
step = config[mode]
if mode == "run":  # a paired job runs two engines: each may replay its own recording
    step = config.get("run_by_engine", {{}}).get(option("--loadEngine"), step)
with open(config["pid_file"], "w") as handle:
    handle.write(str(os.getpid()))
sys.stdout.write(open(step["stdout"]).read())
sys.stdout.flush()
if step.get("sleep"):
    time.sleep(step["sleep"])
if step.get("signal"):
    os.kill(os.getpid(), step["signal"])
rc = step.get("rc", 0)
if rc == 0 and mode == "build":
    with open(option("--saveEngine"), "wb") as handle:
        handle.write(b"serialized engine")
if rc == 0 and mode == "run" and step.get("times") and option("--exportTimes"):
    shutil.copy(step["times"], option("--exportTimes"))
if rc == 0 and mode == "run" and step.get("outputs") and option("--exportOutput"):
    shutil.copy(step["outputs"], option("--exportOutput"))
if option("--loadInputs"):  # kept for the test to read: what the engine was fed
    shutil.copy(option("--loadInputs").rsplit(":", 1)[1], config["last_input"])
sys.exit(rc)
"""


class FakeTrtexec:
    """A fake trtexec on disk plus its configuration: what it prints, exits with, writes."""

    def __init__(self, tmp_path, version_fixture):
        self.dir = tmp_path / "fake"
        self.dir.mkdir()
        self.binary = self.dir / "trtexec"
        self.binary.write_text(FAKE_TRTEXEC.format(python=sys.executable))
        self.binary.chmod(self.binary.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        self.argv_log = self.dir / "argv.jsonl"
        self.pid_file = self.dir / "pid"
        self.config_path = self.dir / "config.json"
        self.config = {
            "argv_log": str(self.argv_log),
            "pid_file": str(self.pid_file),
            "last_input": str(self.dir / "last_input.bin"),
            "help": {"stdout": str(FIXTURES / version_fixture)},
        }
        self.save()

    def on(self, mode, stdout, **extra):
        step = {"stdout": str(FIXTURES / stdout)}
        for key, value in extra.items():
            step[key] = str(FIXTURES / value) if key in ("times", "outputs") else value
        self.config[mode] = step
        self.save()

    def on_engine(self, engine_path, stdout, times):
        """Runs of this engine replay their own recording (the other engines' stay as set)."""
        step = {"stdout": str(FIXTURES / stdout), "times": str(FIXTURES / times)}
        self.config.setdefault("run_by_engine", {})[str(engine_path)] = step
        self.save()

    def save(self):
        self.config_path.write_text(json.dumps(self.config))

    def environ(self):
        env = dict(os.environ)
        env["FAKE_TRTEXEC_CONFIG"] = str(self.config_path)
        env["JETSON_AGENT_TRTEXEC"] = str(self.binary)
        return env

    def calls(self):
        if not self.argv_log.exists():
            return []
        return [json.loads(line) for line in self.argv_log.read_text().splitlines()]

    def calls_of(self, mode):
        result = []
        for argv in self.calls():
            is_help = "--help" in argv
            is_build = any(a.startswith("--onnx=") for a in argv)
            kind = "help" if is_help else ("build" if is_build else "run")
            if kind == mode:
                result.append(argv)
        return result


def device_root(tmp_path, model):
    root = tmp_path / "root"
    (root / "proc" / "device-tree").mkdir(parents=True)
    (root / "proc" / "device-tree" / "model").write_bytes(model.encode() + b"\x00")
    return str(root)


def fixture_computes(name):
    return [record["computeMs"] for record in json.loads((FIXTURES / name).read_text())]


def spec(**fields):
    return MeasureSpec.from_dict(fields)


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"onnx bytes (the fake trtexec never reads them)")
    return str(path)


def make_backend(tmp_path, board, version_fixture):
    fake = FakeTrtexec(tmp_path, version_fixture)
    backend = TrtexecBackend(proc_root=device_root(tmp_path, board), environ=fake.environ())
    return fake, backend


# ------------------------------------------------------------------------------------------------
# Versions, binary discovery, shapes


@pytest.mark.parametrize(
    "number, expected",
    [
        (7103, (7, 1, 3)),
        (8201, (8, 2, 1)),
        (8401, (8, 4, 1)),
        (8502, (8, 5, 2)),
        (8601, (8, 6, 1)),
        (100300, (10, 3, 0)),
        (101303, (10, 13, 3)),
        (101602, (10, 16, 2)),
        (110201, (11, 2, 1)),
    ],
)
def test_banner_version_numbers_decode_like_nv_tensorrt_version(number, expected):
    assert trt_common.decode_version_number(number) == expected


def test_versions_are_read_from_recorded_banners():
    read = trt_common.parse_trtexec_version
    assert read((FIXTURES / "trt82_nano_version.txt").read_text()) == (8, 2, 1)
    assert read((FIXTURES / "trt10_orin_version.txt").read_text()) == (10, 3, 0)
    assert read((FIXTURES / "trt10_run.txt").read_text()) == (10, 9, 0)  # "[b34]" build tag
    assert read("[I] TensorRT version: 8.5.2\n") == (8, 5, 2)
    assert read("no version here") is None


def test_trtexec_is_found_by_env_var_then_path(tmp_path):
    binary = tmp_path / "bin" / "trtexec"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    assert find_trtexec({"PATH": str(binary.parent)}) == str(binary)
    assert find_trtexec({"JETSON_AGENT_TRTEXEC": str(binary), "PATH": ""}) == str(binary)
    not_executable = tmp_path / "plain"
    not_executable.write_text("")
    assert (
        find_trtexec({"JETSON_AGENT_TRTEXEC": str(not_executable), "PATH": str(binary.parent)})
        is None
    )
    with pytest.raises(InfraError, match="JETSON_AGENT_TRTEXEC"):
        TrtexecBackend(environ={"JETSON_AGENT_TRTEXEC": str(not_executable)}).binary()


def test_shape_strings_follow_trtexec_grammar():
    assert trt_common.shape_spec([("input", [1, 3, 32, 32])]) == "input:1x3x32x32"
    assert trt_common.shape_spec([("a", [2, 8]), ("Input:0", [1])]) == "a:2x8,'Input:0':1"
    resolved = trt_common.resolve_shapes(DYNAMIC, spec(batch_size=4))
    assert resolved == [("input", [4, 3, 32, 32])]
    with pytest.raises(InvalidModel, match="static"):
        trt_common.resolve_shapes(STATIC, spec(input_shape=[1, 3, 64, 64]))


# ------------------------------------------------------------------------------------------------
# Precisions by device


@pytest.mark.parametrize(
    "board, expected",
    [
        (NANO, ["fp32", "fp16"]),
        ("NVIDIA Jetson Nano 2GB Developer Kit", ["fp32", "fp16"]),
        ("quill", ["fp32", "fp16"]),  # TX2 (sm_62): FP16, no INT8
        ("NVIDIA Jetson Xavier NX Developer Kit", ["fp32", "fp16", "int8"]),
        (ORIN, ["fp32", "fp16", "int8"]),
        ("NVIDIA Jetson Orin Nano Developer Kit", ["fp32", "fp16", "int8"]),  # not a Nano
    ],
)
def test_precisions_come_from_the_jetson_board(tmp_path, board, expected):
    root = device_root(tmp_path, board)
    assert TrtexecBackend(proc_root=root, environ={}).precisions() == expected
    assert TensorRTBackend(proc_root=root, environ={}).precisions() == expected


def test_compute_capability_table_matches_nvidia_support_matrix():
    table = trt_common.precisions_for_compute_capability
    assert table((5, 3)) == ["fp32", "fp16"]  # Maxwell Tegra X1
    assert table((6, 1)) == ["fp32", "int8"]  # GTX 10xx: DP4A, no fast FP16
    assert table((6, 2)) == ["fp32", "fp16"]
    assert table((8, 6)) == ["fp32", "fp16", "int8"]
    assert table(None) == ["fp32"]


def test_int8_on_a_nano_is_refused_before_trtexec_runs(tmp_path, model_file):
    fake, backend = make_backend(tmp_path, NANO, "trt82_nano_version.txt")
    fake.on("build", "trt82_nano_build.txt")
    with pytest.raises(UnsupportedPrecision, match="int8"):
        backend.prepare(model_file, STATIC, spec(precision="int8"), str(tmp_path / "e.engine"))
    assert fake.calls_of("build") == []


# ------------------------------------------------------------------------------------------------
# trtexec, TensorRT 8.2 (JetPack 4.6, Jetson Nano)


def test_trt82_build_flags_and_timed_run(tmp_path, model_file):
    fake, backend = make_backend(tmp_path, NANO, "trt82_nano_version.txt")
    fake.on("build", "trt82_nano_build.txt")
    fake.on("run", "trt82_nano_run.txt", times="trt82_nano_times.json")
    engine = tmp_path / "engines" / "model.engine"

    assert backend.version() == "8.2.1"
    session, info = backend.prepare(
        model_file, STATIC, spec(precision="fp16", warmup=5, iterations=30), str(engine)
    )
    try:
        (build,) = fake.calls_of("build")
        assert build == [
            f"--onnx={model_file}",
            f"--saveEngine={engine}.partial",
            f"--timingCacheFile={engine.parent / 'trtexec-8.2.1.timing-cache'}",
            "--workspace=1024",
            "--buildOnly",
            "--fp16",
        ]
        assert engine.read_bytes() == b"serialized engine"
        assert not Path(str(engine) + ".partial").exists()
        assert info.engine_cache_hit is False
        assert info.build_time_s > 0
        assert "--buildOnly" in info.command and "--warmUp=0" in info.command

        latencies = session.time(5, 30, None)
        (run,) = fake.calls_of("run")
        export = run[-1]
        assert run == [
            f"--loadEngine={engine}",
            "--warmUp=0",
            "--iterations=35",
            "--duration=0",
            "--avgRuns=1",
            "--noDataTransfers",
            export,
        ]
        assert export.startswith("--exportTimes=") and export.endswith(".json")
        # 8.2 exports trtexec's 2 warm-up queries too: the 35 timed ones are the last 35;
        # the spec's 5 warm-up iterations are the first 5 of those.
        timed = fixture_computes("trt82_nano_times.json")[2:]
        assert len(timed) == 35
        assert latencies == timed[5:35]
        gpu = session.last_summary["GPU Compute Time"]
        assert gpu["mean"] == 90.1061 and gpu["percentiles"] == {99.0: 91.2045}
        assert session.last_prolog["timed_queries"] == 35
    finally:
        workdir = session.workdir
        session.close()
    assert not os.path.exists(workdir)


def test_trtexec_evaluation_feeds_a_row_and_reads_the_exported_outputs(tmp_path, model_file):
    import numpy as np

    fake, backend = make_backend(tmp_path, NANO, "trt82_nano_version.txt")
    fake.on("build", "trt82_nano_build.txt")
    fake.on("run", "trt82_nano_run.txt", outputs="trt82_output.json")
    engine = tmp_path / "engines" / "model.engine"
    assert backend.evaluates
    session, _ = backend.prepare(model_file, STATIC, spec(precision="fp16"), str(engine))
    try:
        row = np.arange(3 * 32 * 32, dtype=np.float32).reshape(1, 3, 32, 32)
        (logits,) = session.infer(row)
        (run,) = fake.calls_of("run")
        fed = run[5]
        assert run[:5] == [
            f"--loadEngine={engine}",
            "--warmUp=0",
            "--iterations=1",
            "--duration=0",
            "--avgRuns=1",
        ]
        assert fed.startswith("--loadInputs=input:") and fed.endswith(".bin")
        assert run[6].startswith("--exportOutput=") and len(run) == 7  # a static model
        assert (fake.dir / "last_input.bin").read_bytes() == row.tobytes()
        recorded = json.loads((FIXTURES / "trt82_output.json").read_text())[0]
        assert logits.dtype == np.float32 and logits.shape == (1, 10)
        assert logits.ravel().tolist() == pytest.approx(recorded["values"], rel=1e-6)
        assert int(logits.argmax()) == 3
    finally:
        session.close()


def test_an_export_that_does_not_fill_its_dimensions_is_an_infra_error():
    from jetson_agent.backends.trtexec import parse_export_output

    record = {"name": "output", "dimensions": "1x10", "values": [1.0, 2.0]}
    with pytest.raises(InfraError, match="exported 2 values for output output of dimensions 1x10"):
        parse_export_output([record])
    (two_by_three,) = parse_export_output([dict(record, dimensions="2x3", values=list(range(6)))])
    assert two_by_three.shape == (2, 3)


def test_engine_cache_hit_skips_the_build(tmp_path, model_file):
    fake, backend = make_backend(tmp_path, NANO, "trt82_nano_version.txt")
    fake.on("run", "trt82_nano_run.txt", times="trt82_nano_times.json")
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"built earlier")
    session, info = backend.prepare(model_file, STATIC, spec(warmup=0, iterations=35), str(engine))
    try:
        assert info.engine_cache_hit is True and info.build_time_s == 0.0
        assert "engine reused" in info.command
        assert fake.calls_of("build") == []
        assert session.time(0, 35, None) == fixture_computes("trt82_nano_times.json")[2:]
        assert fake.calls_of("run")[0][0] == f"--loadEngine={engine}"
    finally:
        session.close()


def test_duration_mode_keeps_iterations_started_within_the_duration(tmp_path, model_file):
    fake, backend = make_backend(tmp_path, NANO, "trt82_nano_version.txt")
    fake.on("run", "trt82_nano_run.txt", times="trt82_nano_times.json")
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"built earlier")
    session, _info = backend.prepare(
        model_file, STATIC, spec(warmup=2, duration_s=1.0), str(engine)
    )
    try:
        latencies = session.time(2, None, 1.0)
        run = fake.calls_of("run")[0]
        assert "--iterations=3" in run and "--duration=2" in run
        records = json.loads((FIXTURES / "trt82_nano_times.json").read_text())[2:][2:]
        first = records[0]["startComputeMs"]
        expected = [r["computeMs"] for r in records if r["startComputeMs"] < first + 1000.0]
        assert latencies == expected
        assert 10 <= len(latencies) <= 12  # ~90 ms iterations in one second
    finally:
        session.close()


# ------------------------------------------------------------------------------------------------
# trtexec, TensorRT 10 (JetPack 6, Orin)


def test_trt10_build_flags_dynamic_shapes_int8_and_timed_run(tmp_path, model_file):
    fake, backend = make_backend(tmp_path, ORIN, "trt10_orin_version.txt")
    fake.on("build", "trt10_build.txt")
    fake.on("run", "trt10_run.txt", times="trt10_times.json")
    engine = tmp_path / "model.engine"

    assert backend.version() == "10.3.0"
    measure = spec(precision="int8", batch_size=4, warmup=4, iterations=20)
    session, _info = backend.prepare(model_file, DYNAMIC, measure, str(engine))
    try:
        (build,) = fake.calls_of("build")
        assert build == [
            f"--onnx={model_file}",
            f"--saveEngine={engine}.partial",
            f"--timingCacheFile={tmp_path / 'trtexec-10.3.0.timing-cache'}",
            "--memPoolSize=workspace:1024",
            "--skipInference",
            "--int8",
            "--fp16",
            "--minShapes=input:4x3x32x32",
            "--optShapes=input:4x3x32x32",
            "--maxShapes=input:4x3x32x32",
        ]
        assert not any(arg.startswith(("--workspace", "--buildOnly")) for arg in build)

        latencies = session.time(4, 20, None)
        (run,) = fake.calls_of("run")
        assert run[:6] == [
            f"--loadEngine={engine}",
            "--warmUp=0",
            "--iterations=24",
            "--duration=0",
            "--avgRuns=1",
            "--noDataTransfers",
        ]
        assert run[7] == "--shapes=input:4x3x32x32"
        # TensorRT 10 exports only the timed queries (29 here).
        assert latencies == fixture_computes("trt10_times.json")[4:24]
        gpu = session.last_summary["GPU Compute Time"]
        assert gpu["percentiles"] == {90.0: 113.02, 95.0: 114.115, 99.0: 114.185}
    finally:
        session.close()


@pytest.mark.parametrize(
    "version, workspace, build_only",
    [
        ((8, 2, 1), "--workspace=512", "--buildOnly"),
        ((8, 4, 1), "--memPoolSize=workspace:512", "--buildOnly"),
        ((8, 5, 2), "--memPoolSize=workspace:512", "--buildOnly"),
        ((8, 6, 1), "--memPoolSize=workspace:512", "--skipInference"),
        ((10, 3, 0), "--memPoolSize=workspace:512", "--skipInference"),
    ],
)
def test_version_dependent_trtexec_flags(version, workspace, build_only):
    from jetson_agent.backends.trtexec import build_only_flag, workspace_flag

    assert workspace_flag(version, 512) == workspace
    assert build_only_flag(version) == build_only


# ------------------------------------------------------------------------------------------------
# trtexec output parsing


def test_summary_parsing_covers_the_single_and_three_percentile_formats():
    nano = parse_performance_summary((FIXTURES / "trt82_nano_run.txt").read_text())
    assert nano["Throughput"] == {"qps": 11.0613}
    assert nano["End-to-End Host Latency"]["median"] == 90.3167
    assert nano["Total GPU Compute Time"] == {"s": 3.15371}
    orin = parse_performance_summary((FIXTURES / "trt10_orin_summary.txt").read_text())
    assert orin["GPU Compute Time"] == {
        "min": 3.12671,
        "max": 3.15479,
        "mean": 3.14068,
        "median": 3.14062,
        "percentiles": {90.0: 3.14587, 95.0: 3.14771, 99.0: 3.15039},
    }
    assert orin["H2D Latency"]["max"] == 0.0  # --noDataTransfers
    assert parse_prolog((FIXTURES / "trt10_run.txt").read_text()) == {
        "warmup_queries": 2,
        "warmup_ms": 200.0,
        "timed_queries": 29,
        "timed_s": 3.34555,
    }


def test_export_parsing_trims_trtexec_warmups_and_needs_compute_times():
    records = json.loads((FIXTURES / "trt82_nano_times.json").read_text())
    assert len(records) == 37 and "endToEndMs" in records[0]
    computes, starts = parse_export_times(records, timed_queries=35)
    assert computes == [r["computeMs"] for r in records[2:]]
    assert starts[0] == records[2]["startComputeMs"] >= 200.0
    ten = json.loads((FIXTURES / "trt10_times.json").read_text())
    assert "endToEndMs" not in ten[0]
    assert parse_export_times(ten, timed_queries=29)[0] == [r["computeMs"] for r in ten]
    derived, _ = parse_export_times([{"startComputeMs": 1.5, "endComputeMs": 4.0}])
    assert derived == [2.5]
    with pytest.raises(InfraError, match="no GPU compute time"):
        parse_export_times([{"latencyMs": 1.0}])


def test_export_that_disagrees_with_the_log_is_an_infra_error(tmp_path, model_file):
    fake, backend = make_backend(tmp_path, NANO, "trt82_nano_version.txt")
    fake.on("run", "trt82_nano_run.txt", times="trt10_times.json")  # the wrong export
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"built earlier")
    session, _ = backend.prepare(model_file, STATIC, spec(warmup=0, iterations=20), str(engine))
    try:
        with pytest.raises(InfraError, match="disagree"):
            session.time(0, 20, None)
    finally:
        session.close()


def test_paired_job_alternates_trtexec_runs_of_the_two_engines(tmp_path, model_file):
    """A paired job over trtexec: alternating trtexec runs, one process per block, each given
    the spec's warm-up (trtexec starts cold every time). The candidate's engine replays the
    Nano recording (~90 ms), the reference's the TensorRT 10 one (~111 ms)."""
    fake, backend = make_backend(tmp_path, ORIN, "trt10_orin_version.txt")
    fake.on("run", "trt82_nano_run.txt", times="trt82_nano_times.json")
    engines = {name: tmp_path / f"{name}.engine" for name in ("candidate", "reference")}
    for engine in engines.values():
        engine.write_bytes(b"built earlier")
    fake.on_engine(engines["reference"], "trt10_run.txt", times="trt10_times.json")
    measure = spec(
        reference={"model_sha256": "b" * 64},
        warmup=4,
        iterations=20,
        repeats=4,
        ratio_ci=0,
        min_repeat_ms=0,
    )
    candidate, _ = backend.prepare(model_file, STATIC, measure, str(engines["candidate"]))
    reference, _ = backend.prepare(
        model_file, STATIC, measure.for_reference(), str(engines["reference"])
    )
    assert candidate.cold_start is True
    try:
        blocks, paired = time_paired(candidate, reference, measure)
    finally:
        candidate.close()
        reference.close()
    assert fake.calls_of("build") == []
    runs = fake.calls_of("run")
    loaded = [argv[0].split("=", 1)[1] for argv in runs]
    c, r = str(engines["candidate"]), str(engines["reference"])
    # Calibration of each, then rounds: C R | R C | C R | R C.
    assert loaded == [c, r, c, r, r, c, c, r, r, c]
    assert [argv[2] for argv in runs[:2]] == ["--iterations=9"] * 2  # warm-up + 5
    assert all(argv[1:3] == ["--warmUp=0", "--iterations=24"] for argv in runs[2:])
    nano = fixture_computes("trt82_nano_times.json")[2:][4:24]  # 8.2 exports 2 warm-ups too
    ten = fixture_computes("trt10_times.json")[4:24]
    assert blocks == [nano] * 4
    assert paired["reference"]["samples_ms"] == [ten] * 4
    expected = median(ten) / median(nano)
    assert 1.2 < expected < 1.3  # ~111 ms against ~90 ms
    assert paired["round_ratios"] == [expected] * 4
    assert paired["speedup"] == expected and paired["speedup_ci"] == [expected, expected]
    rounds = [("candidate", "reference"), ("reference", "candidate")] * 2
    assert [b["model"] for b in paired["blocks"]] == [name for pair in rounds for name in pair]


# ------------------------------------------------------------------------------------------------
# trtexec failures -> typed errors


@pytest.mark.parametrize(
    "fixture, error, words",
    [
        ("trt84_parse_error.txt", InvalidModel, "Invalid Node - Pad_13"),
        ("trt10_orin_parse_error.txt", InvalidModel, "Failed to parse onnx file"),
        ("trt84_build_error.txt", BuildFailed, "Could not find any implementation"),
        ("trt86_build_error.txt", BuildFailed, "Engine could not be created"),
        ("jetson_build_oom.txt", OutOfMemory, "272573440 bytes"),
        ("deepstream_tactic_oom.txt", OutOfMemory, "OutOfMemory"),
    ],
)
def test_failed_builds_map_to_typed_errors(tmp_path, model_file, fixture, error, words):
    fake, backend = make_backend(tmp_path, ORIN, "trt10_orin_version.txt")
    fake.on("build", fixture, rc=1)
    engine = tmp_path / "model.engine"
    with pytest.raises(error) as caught:
        backend.prepare(model_file, STATIC, spec(precision="fp16"), str(engine))
    assert type(caught.value) is error
    assert words in caught.value.message
    assert not engine.exists() and not Path(str(engine) + ".partial").exists()


def test_failed_run_maps_to_out_of_memory(tmp_path, model_file):
    fake, backend = make_backend(tmp_path, ORIN, "trt10_orin_version.txt")
    fake.on("run", "orin_nx_context_oom.txt", rc=1)
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"built earlier")
    session, _ = backend.prepare(model_file, STATIC, spec(), str(engine))
    try:
        with pytest.raises(OutOfMemory, match="150732800"):
            session.time(1, 5, None)
    finally:
        session.close()


def test_trtexec_killed_by_the_oom_killer_is_out_of_memory(tmp_path, model_file):
    fake, backend = make_backend(tmp_path, NANO, "trt82_nano_version.txt")
    fake.on("build", "trt82_nano_version.txt", signal=9)
    engine = tmp_path / "model.engine"
    with pytest.raises(OutOfMemory, match="SIGKILL"):
        backend.prepare(model_file, STATIC, spec(), str(engine))
    assert not engine.exists()


def test_build_timeout_kills_trtexec(tmp_path, model_file):
    fake, backend = make_backend(tmp_path, NANO, "trt82_nano_version.txt")
    fake.on("build", "trt82_nano_version.txt", sleep=60)
    started = time.time()
    with pytest.raises(BuildTimeout):
        backend.prepare(model_file, STATIC, spec(build_timeout_s=2.0), str(tmp_path / "m.engine"))
    assert time.time() - started < 30
    pid = int(fake.pid_file.read_text())
    with pytest.raises(OSError):  # killed and reaped: no such process any more
        os.kill(pid, 0)


def test_error_text_classification_order():
    classify = trt_common.classify_failure
    # trtexec.cpp prints this for a flag its version does not know: our fault, not the model's.
    unknown_flag = (
        "[E] Unknown option: --skipInference \n&&&& FAILED TensorRT.trtexec [TensorRT v8201]"
    )
    assert type(classify(unknown_flag, 1)) is InfraError
    # Allocation warnings in a build that failed for another reason are not blamed on memory...
    warned = "[W] [TRT] Requested amount of GPU memory (1024 bytes) could not be allocated.\n"
    assert type(classify(warned + "[E] Engine could not be created from network", 1)) is BuildFailed
    # ...unless the builder ran out of tactics because every allocation failed.
    starved = warned + (
        "[E] Error[10]: Error Code 10: Internal Error "
        "(Could not find any implementation for node x.)"
    )
    assert type(classify(starved, 1)) is OutOfMemory
    assert type(classify("garbage", 1)) is InfraError


# ------------------------------------------------------------------------------------------------
# TensorRT Python API backend: pure version logic


@pytest.mark.parametrize(
    "version, execute, workspace, flags",
    [
        ((8, 2, 1, 8), "v2", "max_workspace_size", 1),
        ((8, 4, 1, 5), "v2", "memory_pool_limit", 1),
        ((8, 5, 2, 2), "v3", "memory_pool_limit", 1),
        ((8, 6, 1, 6), "v3", "memory_pool_limit", 1),
        ((10, 3, 0, 30), "v3", "memory_pool_limit", 0),
    ],
)
def test_python_api_choices_by_version(version, execute, workspace, flags):
    assert execute_api(version) == execute
    assert workspace_api(version) == workspace
    assert network_flags(version, 0) == flags  # EXPLICIT_BATCH is bit 0


class _Obj:
    def __init__(self, **fields):
        self.__dict__.update(fields)


def test_workspace_is_set_through_the_api_of_the_version():
    calls = []
    config = _Obj(set_memory_pool_limit=lambda pool, size: calls.append((pool, size)))
    trt = _Obj(MemoryPoolType=_Obj(WORKSPACE="WORKSPACE"))
    apply_workspace(config, trt, (10, 3, 0), 1 << 30)
    assert calls == [("WORKSPACE", 1 << 30)]
    old = _Obj()
    apply_workspace(old, trt, (8, 2, 1), 1 << 28)
    assert old.max_workspace_size == 1 << 28


def test_dtype_sizes_and_fill_without_numpy():
    assert dtype_itemsize(_Obj(name="FLOAT")) == 4
    assert dtype_itemsize(_Obj(name="HALF")) == 2
    assert dtype_itemsize("DataType.INT64") == 8
    assert dtype_itemsize(_Obj(itemsize=1)) == 1
    assert fill_byte("DataType.HALF") == 0x3C and fill_byte("DataType.INT32") == 0
    with pytest.raises(InfraError):
        dtype_itemsize("DataType.MYSTERY")


def test_builder_and_parser_failures_map_to_typed_errors():
    oom = (FIXTURES / "jetson_build_oom.txt").read_text().splitlines()
    assert type(build_failure(["[E] [TRT] " + line for line in oom])) is OutOfMemory
    refused = (FIXTURES / "trt84_build_error.txt").read_text().splitlines()
    assert type(build_failure(refused)) is BuildFailed
    assert type(build_failure(["[E] [TRT] something nobody has seen"])) is BuildFailed
    assert type(build_failure([], MemoryError("std::bad_alloc"))) is OutOfMemory
    error = invalid_model_from_parser(
        ["In node 3 (importConv): UNSUPPORTED_NODE: Assertion failed"]
    )
    assert type(error) is InvalidModel and "importConv" in error.message


def test_tensorrt_backend_reports_a_missing_runtime_as_infra_error(tmp_path, model_file):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:  # pragma: no cover - only on a machine with TensorRT
        pytest.skip("TensorRT is installed here")
    assert TensorRTBackend.available() is False
    backend = TensorRTBackend(proc_root=device_root(tmp_path, ORIN), environ={})
    with pytest.raises(InfraError, match="tensorrt"):
        backend.prepare(model_file, STATIC, spec(), str(tmp_path / "e.engine"))


# ------------------------------------------------------------------------------------------------
# TensorRT Python API backend: buffers and the timing loop against stand-in objects


class FakeCuda:
    name = "fake"

    def __init__(self):
        self.calls = []
        self.next_ptr = 0x1000
        self.elapsed = iter([1.25, 1.5, 1.75, 2.0, 2.25])

    def malloc(self, nbytes):
        self.next_ptr += 0x1000
        self.calls.append(("malloc", nbytes))
        return self.next_ptr

    def memset(self, ptr, value, nbytes):
        self.calls.append(("memset", ptr, value, nbytes))

    def free(self, ptr):
        self.calls.append(("free", ptr))

    def stream_create(self):
        return "stream"

    def stream_handle(self, stream):
        return 77

    def stream_sync(self, stream):
        self.calls.append(("sync",))

    def stream_destroy(self, stream):
        self.calls.append(("stream_destroy",))

    def event_create(self):
        return object()

    def event_record(self, event, stream):
        self.calls.append(("record",))

    def event_sync(self, event):
        self.calls.append(("event_sync",))

    def elapsed_ms(self, start, end):
        return next(self.elapsed)

    def event_destroy(self, event):
        pass

    def close(self):
        self.calls.append(("close",))


TRT_STANDIN = _Obj(TensorIOMode=_Obj(INPUT="in", OUTPUT="out"))


class V3Engine:
    num_io_tensors = 3

    def __init__(self):
        self.names = ["input", "ids", "logits"]
        self.modes = {"input": "in", "ids": "in", "logits": "out"}
        self.dtypes = {
            "input": "DataType.HALF",
            "ids": "DataType.INT32",
            "logits": "DataType.FLOAT",
        }

    def get_tensor_name(self, index):
        return self.names[index]

    def get_tensor_mode(self, name):
        return self.modes[name]

    def get_tensor_dtype(self, name):
        return self.dtypes[name]


class V3Context:
    def __init__(self):
        self.shapes = {"input": (-1, 3, 32, 32), "ids": (-1, 8), "logits": (-1, 10)}
        self.addresses = {}
        self.enqueued = []

    def set_input_shape(self, name, shape):
        self.shapes[name] = shape
        self.shapes["logits"] = (shape[0], 10)
        return True

    def get_tensor_shape(self, name):
        return self.shapes[name]

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream):
        self.enqueued.append(stream)
        return True


def test_v3_buffers_set_shapes_then_addresses():
    cuda, context = FakeCuda(), V3Context()
    buffers = IOBuffers(
        TRT_STANDIN, V3Engine(), context, cuda, {"input": [2, 3, 32, 32], "ids": [2, 8]}, "v3"
    )
    assert context.shapes["logits"] == (2, 10)
    assert sorted(context.addresses) == ["ids", "input", "logits"]
    assert ("malloc", 2 * 3 * 32 * 32 * 2) in cuda.calls and ("malloc", 2 * 10 * 4) in cuda.calls
    memsets = [c for c in cuda.calls if c[0] == "memset"]
    assert [(c[2], c[3]) for c in memsets] == [(0x3C, 2 * 3 * 32 * 32 * 2), (0, 2 * 8 * 4)]
    buffers.free()
    assert len([c for c in cuda.calls if c[0] == "free"]) == 3


class V2Engine:
    num_bindings = 2

    def binding_is_input(self, index):
        return index == 0

    def get_binding_name(self, index):
        return ["input", "output"][index]

    def get_binding_shape(self, index):
        return [(-1, 3, 32, 32), (-1, 10)][index]

    def get_binding_dtype(self, index):
        return "DataType.FLOAT"

    def create_execution_context(self):
        return V2Context()


class V2Context:
    all_binding_shapes_specified = True

    def __init__(self):
        self.shapes = {0: (-1, 3, 32, 32), 1: (-1, 10)}
        self.enqueued = []

    def set_binding_shape(self, index, shape):
        self.shapes[index] = shape
        self.shapes[1] = (shape[0], 10)
        return True

    def get_binding_shape(self, index):
        return self.shapes[index]

    def execute_async_v2(self, bindings, stream):
        self.enqueued.append((list(bindings), stream))
        return True


def test_v2_session_times_each_iteration_with_events():
    cuda = FakeCuda()
    logger = _Obj(lines=[])
    session = TensorRTSession(
        TRT_STANDIN, (8, 2, 1), V2Engine(), cuda, {"input": [4, 3, 32, 32]}, logger
    )
    try:
        assert session.api == "v2"
        assert len(session.buffers.bindings) == 2 and all(session.buffers.bindings)
        cuda.calls = []
        assert session.time(2, 3, None) == [1.25, 1.5, 1.75]
        enqueued = session.context.enqueued
        assert len(enqueued) == 5 and enqueued[0] == (session.buffers.bindings, 77)
        kinds = [c[0] for c in cuda.calls]
        assert kinds == ["sync", "sync"] + ["record", "record", "event_sync"] * 3
    finally:
        session.close()
    assert ("close",) in cuda.calls


class MemoryCuda(FakeCuda):
    """A stand-in CUDA runtime with device memory: each allocation is a bytearray, and the
    host-device copies move bytes in and out of it."""

    def __init__(self):
        FakeCuda.__init__(self)
        self.memory = {}

    def malloc(self, nbytes):
        ptr = FakeCuda.malloc(self, nbytes)
        self.memory[ptr] = bytearray(nbytes)
        return ptr

    def to_device(self, ptr, array):
        self.calls.append(("to_device", ptr, array.dtype.name))
        self.memory[ptr][:] = array.tobytes()

    def to_host(self, array, ptr):
        self.calls.append(("to_host", ptr))
        array.view("uint8").reshape(-1)[:] = memoryview(bytes(self.memory[ptr]))


class DoublingContext(V2Context):
    """Runs a stand-in model: the output is the first 10 input values doubled."""

    def __init__(self, cuda):
        V2Context.__init__(self)
        self.cuda = cuda

    def execute_async_v2(self, bindings, stream):
        import numpy as np

        source, target = bindings
        values = np.frombuffer(bytes(self.cuda.memory[source]), np.float32)
        self.cuda.memory[target][:] = (values[:10] * 2).tobytes()
        return V2Context.execute_async_v2(self, bindings, stream)


def test_python_api_evaluation_copies_the_row_in_and_the_outputs_out():
    import numpy as np

    cuda = MemoryCuda()
    engine = V2Engine()
    engine.create_execution_context = lambda: DoublingContext(cuda)
    session = TensorRTSession(
        TRT_STANDIN, (8, 2, 1), engine, cuda, {"input": [1, 3, 32, 32]}, _Obj(lines=[])
    )
    try:
        row = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float64)
        (output,) = session.infer(row)
        assert output.shape == (1, 10) and output.dtype == np.float32
        assert np.array_equal(output.ravel(), row.astype(np.float32).ravel()[:10] * 2)
        copies = [call for call in cuda.calls if call[0] in ("to_device", "to_host", "sync")]
        input_ptr, output_ptr = session.buffers.bindings
        # the row cast to the engine's float32 input, run, synchronized, then read back
        assert copies[:3] == [
            ("to_device", input_ptr, "float32"),
            ("sync",),
            ("to_host", output_ptr),
        ]
        with pytest.raises(InfraError, match="takes \\[1, 3, 32, 32\\]"):
            session.infer(np.zeros((1, 3, 16, 16), np.float32))
    finally:
        session.close()


class TaggedCuda(FakeCuda):
    """A stand-in CUDA runtime whose every timed iteration takes ``ms`` and is logged with
    the session's name, so that the order of two sessions' iterations can be read back."""

    def __init__(self, name, ms, log):
        FakeCuda.__init__(self)
        self.tag, self.ms, self.log = name, ms, log

    def elapsed_ms(self, start, end):
        self.log.append(self.tag)
        return self.ms


class V3EngineWithContexts(V3Engine):
    def create_execution_context(self):
        return V3Context()


def test_paired_job_holds_two_python_api_engines_at_once():
    log = []
    cudas = {"candidate": TaggedCuda("C", 1.5, log), "reference": TaggedCuda("R", 3.0, log)}
    sessions = {
        name: TensorRTSession(
            TRT_STANDIN,
            (10, 3, 0),
            V3EngineWithContexts(),
            cuda,
            {"input": [1, 3, 32, 32], "ids": [1, 8]},
            _Obj(lines=[]),
        )
        for name, cuda in cudas.items()
    }
    measure = spec(
        reference={"model_sha256": "b" * 64},
        warmup=2,
        iterations=4,
        repeats=4,
        ratio_ci=0,
        min_repeat_ms=0,
    )
    try:
        assert sessions["candidate"].cold_start is False
        blocks, paired = time_paired(sessions["candidate"], sessions["reference"], measure)
        # Both engines stayed loaded, with their buffers, through all the rounds.
        for cuda in cudas.values():
            assert not [call for call in cuda.calls if call[0] == "free"]
        # Warm-up only before the calibration (2 + 5), then 4 rounds of 4: a warm session
        # needs none per block.
        assert [len(s.context.enqueued) for s in sessions.values()] == [2 + 5 + 16] * 2
    finally:
        for session in sessions.values():
            session.close()
    rounds = ["CR", "RC", "CR", "RC"]
    assert log == list("C" * 5 + "R" * 5) + [
        tag for order in rounds for tag in order for _ in "1234"
    ]
    assert blocks == [[1.5] * 4] * 4
    assert paired["speedup"] == 2.0 and paired["speedup_ci"] == [2.0, 2.0]
    for cuda in cudas.values():
        assert len([c for c in cuda.calls if c[0] == "free"]) == 3  # freed at close, each


def test_unbuildable_shapes_are_reported_not_allocated():
    context = V3Context()
    context.set_input_shape = lambda name, shape: False
    with pytest.raises(InvalidModel, match="refused shape"):
        IOBuffers(
            TRT_STANDIN,
            V3Engine(),
            context,
            FakeCuda(),
            {"input": [1, 3, 32, 32], "ids": [1, 8]},
            "v3",
        )


def test_nothing_reaches_stdout(tmp_path, model_file, capfd):
    # stdout carries the job protocol: trtexec's output must go to its log file, not ours.
    fake, backend = make_backend(tmp_path, NANO, "trt82_nano_version.txt")
    fake.on("build", "trt82_nano_build.txt")
    fake.on("run", "trt82_nano_run.txt", times="trt82_nano_times.json")
    session, _ = backend.prepare(model_file, STATIC, spec(), str(tmp_path / "m.engine"))
    try:
        session.time(0, 35, None)
    finally:
        session.close()
    assert capfd.readouterr().out == ""


def test_explicit_quantization_skips_placeholder_ranges() -> None:
    from types import SimpleNamespace

    from jetson_agent.backends.tensorrt_backend import has_qdq_layers

    types = SimpleNamespace(QUANTIZE="Q", DEQUANTIZE="DQ", CONVOLUTION="C")

    def network(*kinds: str) -> SimpleNamespace:
        layers = [SimpleNamespace(type=kind) for kind in kinds]
        return SimpleNamespace(num_layers=len(layers), get_layer=layers.__getitem__)

    assert has_qdq_layers(network("C", "Q", "DQ", "C"), types)
    assert not has_qdq_layers(network("C", "C"), types)
