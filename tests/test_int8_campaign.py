"""A campaign on the embedded CPU agent: int8 candidates are offered the recipes onnxruntime
accelerates, and each one records a paired speedup over the fp32 baseline of the same
architecture (the two timed side by side in every job, so the check is a ratio from one run)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import optuna
import pytest
from campaign_helpers import STORAGE, write_campaign
from click.testing import CliRunner
from optuna.trial import TrialState

from optimizer.campaign.study import RESOLVED_PARAMS_ATTR
from optimizer.cli import main
from optimizer.trial.log import LOG_TAIL_ATTR

# timm formats traced sizes into assertion messages while the campaign exports the model.
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor to a Python number")

# On the demo's geometry (64 tokens of width 128, 4 blocks) the CPU recipes ran 1.4-1.7x fp32
# (bench/quantization.py); the bounds below leave room for a loaded CI machine.
DYNAMIC_AT_LEAST = 1.2


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dynamic", "dynamic_per_channel", "static"])
def test_int8_candidates_on_the_cpu_agent_are_faster_than_their_fp32_baseline(
    method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    campaign = write_campaign(
        tmp_path,
        **{
            "model.kwargs": {"patch_size": 4, "depth": 4, "embed_dim": 128, "num_heads": 4},
            "model.train.epochs": 1,
            "data.image_size": 32,
            "objective.max_accuracy_drop": 1.0,
            "objective.latency_first_cut": False,  # every candidate measured to the end
            "search.trials": 2,
            "execution.workers": 0,
            # Every candidate is the baseline's architecture, only quantized.
            "search.space": {
                "prune.method": {"fixed": "none"},
                "train.epochs": {"fixed": 0},
                "quantize.precision": {"fixed": "int8"},
                "quantize.method": {"fixed": method},
            },
        },
    )
    result = CliRunner().invoke(main, ["run", str(campaign), "--json"])
    assert result.exit_code == 0, result.output
    assert "quantize.method: removed qdq" in result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["trials"]["complete"] == 2, summary
    # The in-process trials imported onnxruntime.quantization and left sys.path as it was.
    assert not [p for p in sys.path if p.endswith("onnxruntime/transformers")]

    study = optuna.load_study(study_name="tiny", storage=STORAGE)
    baseline, trial = study.get_trials(states=(TrialState.COMPLETE,))
    assert baseline.params == {}
    attrs = trial.user_attrs
    assert attrs[RESOLVED_PARAMS_ATTR]["quantize.method"] == method
    assert attrs["macs"] == baseline.user_attrs["macs"]  # the same architecture
    low, high = attrs["speedup_ci"]
    print(f"\ntrial {trial.number} {method}: {attrs['speedup']:.2f}x [{low:.2f}, {high:.2f}]")
    assert low > 1.0, (method, attrs["speedup"], attrs["speedup_ci"])
    if method == "dynamic":
        assert attrs["speedup"] >= DYNAMIC_AT_LEAST, attrs["speedup"]
    assert any(f"int8 ({method}): onnxruntime" in line for line in attrs[LOG_TAIL_ATTR])
