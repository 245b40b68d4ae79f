"""``vitopt agent ping|measure`` as a user runs them."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from agent_helpers import RunningAgent
from click.testing import CliRunner

from optimizer.cli import main


def test_ping_prints_the_device_table(agent: RunningAgent) -> None:
    result = CliRunner().invoke(main, ["agent", "ping", agent.url])
    assert result.exit_code == 0, result.output
    assert "onnxruntime" in result.output
    assert "fp32, int8" in result.output
    assert "null" not in result.output  # unknown clocks and power mode read as a dash


def test_measure_json_and_table(agent: RunningAgent, vit_onnx: Path) -> None:
    args = ["agent", "measure", agent.url, str(vit_onnx), "--iterations", "10", "--repeats", "2"]
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["status"] == "ok"
    assert payload["latency_ms"]["count"] == 20
    table = CliRunner().invoke(main, args)
    assert table.exit_code == 0, table.output
    assert "p50 (ms)" in table.output
    assert "result hit" in table.output  # same spec again: answered from the agent's cache


@pytest.mark.slow
def test_measure_against_a_reference_prints_the_speedup(
    agent: RunningAgent, vit_onnx: Path, vit_reference_onnx: Path
) -> None:
    args = ["agent", "measure", agent.url, str(vit_onnx), "--reference", str(vit_reference_onnx)]
    args += ["--warmup", "2", "--iterations", "3", "--min-repeat-ms", "20", "--repeats", "8"]
    result = CliRunner().invoke(main, [*args, "--ratio-ci", "0", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    paired = payload["paired"]
    assert paired["rounds"] == 8 and paired["stopped_by"] == "rounds"
    assert paired["reference"]["precision"] == "fp32"
    assert len(payload["samples_ms"]) == len(paired["reference"]["samples_ms"]) == 8
    low, high = paired["speedup_ci"]
    assert low <= paired["speedup"] <= high

    table = CliRunner().invoke(main, [*args, "--ratio-ci", "0"])  # the same job: a cache hit
    assert table.exit_code == 0, table.output
    assert "p50 (ms)" in table.output and "reference p50 (ms), fp32" in table.output
    line = (
        f"speedup {paired['speedup']:.2f}× [{low:.2f}–{high:.2f}] "
        f"({paired['confidence'] * 100:.1f} % interval, 8 rounds, no target)"
    )
    assert line in table.output

    targeted = CliRunner().invoke(main, [*args, "--ratio-ci", "1", "--max-time-s", "20"])
    assert targeted.exit_code == 0, targeted.output
    assert "8 rounds, target ±100 % met)" in targeted.output


def test_paired_options_need_a_reference(agent: RunningAgent, vit_onnx: Path) -> None:
    result = CliRunner().invoke(
        main, ["agent", "measure", agent.url, str(vit_onnx), "--ratio-ci", "0.02"]
    )
    assert result.exit_code == 2
    assert "--ratio-ci applies to paired jobs: give --reference too" in result.output


def test_measure_reports_a_typed_failure_in_one_line(agent: RunningAgent, vit_onnx: Path) -> None:
    result = CliRunner().invoke(
        main, ["agent", "measure", agent.url, str(vit_onnx), "--precision", "fp16"]
    )
    assert result.exit_code == 1
    assert "measurement failed: unsupported_precision" in result.output
    assert "Traceback" not in result.output


def test_unreachable_agent_is_a_clear_error(vit_onnx: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket closes
    result = CliRunner().invoke(main, ["agent", "ping", f"http://127.0.0.1:{port}"])
    assert result.exit_code == 1
    assert "did not answer" in result.output
    assert "Connection refused" in result.output


def test_bad_input_shape_is_a_usage_error(agent: RunningAgent, vit_onnx: Path) -> None:
    result = CliRunner().invoke(
        main, ["agent", "measure", agent.url, str(vit_onnx), "--input-shape", "1by3"]
    )
    assert result.exit_code == 2
    assert "--input-shape" in result.output
