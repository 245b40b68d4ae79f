"""A tiny real campaign for end-to-end tests, and ways to run and watch it as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from optimizer.campaign.storage import open_storage

# Small enough for CI's 2 cores: 16 px digits, a 2-block ViT with 4 heads.
TINY = {
    "name": "tiny",
    "model": {
        "name": "vit_tiny_patch16_224",
        "kwargs": {"patch_size": 4, "depth": 2, "embed_dim": 64, "num_heads": 4},
        "train": {"epochs": 12, "lr": 0.003},
    },
    "data": {"source": "digits", "image_size": 16, "calibration_size": 16},
    "objective": {"max_accuracy_drop": 0.15},
    "search": {
        "seed": 0,
        "trials": 5,
        "space": {"train.epochs": {"low": 1, "high": 1}, "prune.ratio": {"low": 0.4, "high": 0.7}},
    },
    "execution": {"workers": 2},
    # Paired jobs, short: >= 6 rounds of >= 5 ms blocks, until +-5 %, 3 s at most.
    "agents": {
        "measure": {
            "warmup": 5,
            "repeats": 6,
            "min_repeat_ms": 5,
            "ratio_ci": 0.05,
            "max_time_s": 3,
        }
    },
}
STORAGE = "sqlite:///runs/tiny/study.db"
#: The trials of a shortened shipped campaign: the baseline and one candidate.
TRIALS = 2


def write_campaign(folder: Path, **changes: object) -> Path:
    """TINY with dotted-key changes, written to ``folder/campaign.yaml``."""
    data = json.loads(json.dumps(TINY))
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    path = folder / "campaign.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def start_run(
    folder: Path, campaign: Path, *args: str, env: dict | None = None
) -> subprocess.Popen:
    """``vitopt run`` as a separate process, as a user starts it."""
    return subprocess.Popen(
        [sys.executable, "-m", "optimizer", "run", str(campaign), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=folder,
        env=env,
    )


def run_to_the_end(campaign: Path, folder: Path, timeout: float = 900) -> dict:
    """``vitopt run CAMPAIGN --json`` in ``folder`` until it ends (exit 0 asserted, with its
    stderr's end shown otherwise): the summary it prints."""
    done = subprocess.run(
        [sys.executable, "-m", "optimizer", "run", str(campaign), "--json"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def load(folder: Path) -> optuna.Study | None:
    if not (folder / "runs" / "tiny" / "study.db").exists():
        return None
    try:
        # Through vitopt's storage: polling while the driver creates the tables is a race that
        # the plain RDBStorage can lose with an IntegrityError.
        url = f"sqlite:///{folder}/runs/tiny/study.db"
        return optuna.load_study(study_name="tiny", storage=open_storage(url, retry_s=30))
    except KeyError:
        return None


def wait_until(
    process: subprocess.Popen,
    folder: Path,
    ready: Callable[[list[FrozenTrial]], bool],
    timeout_s: float = 300,
) -> list[FrozenTrial]:
    """Poll the study until ``ready(trials)``; fail with the run's stderr if it ends first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the run ended early: {process.communicate()[1][-3000:]}")
        study = load(folder)
        if study is not None:
            trials = study.get_trials(deepcopy=False)
            if ready(trials):
                return trials
        time.sleep(0.5)
    process.kill()
    raise AssertionError(f"timed out: {process.communicate()[1][-3000:]}")


def counted(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Finished trials that count towards the target (as
    ``optimizer.campaign.study.counted_trials``)."""
    return [
        t
        for t in trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        and not (t.user_attrs.get("interrupted") or t.user_attrs.get("retried"))
    ]


def shortened(path: Path, folder: Path) -> Path:
    """The campaign with a short baseline training, two in-process trials (the baseline and a
    candidate that prunes: ``prune.method`` without ``none``) run to the end, one fine-tuning
    epoch, and short paired jobs."""
    data = yaml.safe_load(path.read_text())
    data["model"]["train"]["epochs"] = 2
    data["data"]["calibration_size"] = 16
    # Feasibility and the latency-first cut are not what this checks: every candidate runs.
    data["objective"].update(max_accuracy_drop=1.0, latency_first_cut=False)
    space = data["search"]["space"]
    methods = space.get("prune.method", {}).get("choices", ["heads", "mlp", "heads+mlp"])
    space["prune.method"] = {"choices": [m for m in methods if m != "none"]}
    space["train.epochs"] = {"low": 1, "high": 1}
    data["search"]["trials"] = TRIALS
    data["execution"] = {"workers": 0}
    data["agents"]["measure"] = {
        "warmup": 5,
        "repeats": 6,
        "min_repeat_ms": 5,
        "ratio_ci": 0.05,
        "max_time_s": 3,
    }
    out = folder / path.name
    out.write_text(yaml.safe_dump(data))
    return out
