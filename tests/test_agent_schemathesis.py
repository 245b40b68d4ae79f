"""The agent's OpenAPI document is a valid OpenAPI 3.0 document, and a bounded schemathesis run
against the live agent (generated requests, every check: no 5xx, answers that match the document,
valid requests accepted, invalid ones refused, authentication enforced) finds nothing.

Two runs, because schemathesis 4.32's coverage phase cannot judge a multipart body with a binary
part against a schema with conditionals (it stops with "Unsupported type: 'Binary'"): the first
covers every operation but job submission with the examples, coverage and fuzzing phases; the
second fuzzes job submission, and follows its link to the job, in the fuzzing and stateful phases.
Evaluation submission is in neither: whether its ``inputs`` part is acceptable depends on bytes
no schema describes (an ``.npy`` header, rows of the model sent beside it), so schemathesis
would count every refusal of random bytes as a valid request refused;
``tests/test_agent_evaluation.py`` covers it with real files, good and bad.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from agent_helpers import start_agent
from openapi_spec_validator import validate

from jetson_agent.openapi import openapi_document

TOKEN = "schemathesis-token"
SEED = "20261201"
MAX_EXAMPLES = "60"
RUNS = {
    "every operation but submission": [
        "--phases",
        "examples,coverage,fuzzing",
        "--exclude-operation-id",
        "submitJob",
        "--exclude-operation-id",
        "submitEvaluation",
    ],
    "submission and its job": [
        "--phases",
        "examples,fuzzing,stateful",
        "--include-operation-id",
        "submitJob",
        "--include-operation-id",
        "getJob",
    ],
}


def test_the_document_is_valid_openapi_3() -> None:
    validate(openapi_document())


@pytest.mark.slow
@pytest.mark.parametrize("selection", RUNS.values(), ids=RUNS.keys())
def test_schemathesis_finds_nothing(tmp_path: Path, selection: list[str]) -> None:
    agent = start_agent(
        tmp_path,
        "--backend",
        "onnxruntime",
        "--max-upload-mb",
        "1",
        "--cache-max-mb",
        "16",
        token=TOKEN,
    )
    command = [
        str(Path(sys.executable).parent / "st"),
        "run",
        f"{agent.url}/v1/openapi.json",
        "--checks",
        "all",
        "--header",
        f"Authorization: Bearer {TOKEN}",
        "--seed",
        SEED,
        "--max-examples",
        MAX_EXAMPLES,
        "--workers",
        "1",
        # A long-poll may wait 30 s for a job behind a queue of generated ones.
        "--request-timeout",
        "40",
        "--max-response-time",
        "40",
        "--no-color",
        *selection,
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path)
        assert agent.alive()
    finally:
        agent.stop()
    output = done.stdout + done.stderr
    generated = re.search(r"(\d+) generated", output)
    assert done.returncode == 0 and generated, output[-6000:]
    print(f"schemathesis: {generated.group(0)} ({' '.join(selection)})")
