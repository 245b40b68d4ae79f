"""What the driver sends a trial and what comes back: plain data, cheap to import (no torch),
so that the study can record outcomes without loading a model library."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optimizer.config import Campaign
from optimizer.device.client import Reference
from optimizer.device.pool import AgentLease

ShouldPrune = Callable[[int, float], bool]
# Each job's reference timing, a trial attribute: [{"at": when, "latency_ms": the reference's
# own objective.metric (p50 by default)}].
REFERENCE_JOBS_ATTR = "reference_jobs"
# A trial scored on the device and on the host, the two further apart than DISAGREEMENT (0.5
# points of a fraction score): flagged in this attribute, the study note and vitopt status.
DISAGREEMENT = 0.005
DISAGREEMENT_ATTR = "accuracy_disagreement"
# The parameters that had no effect on the candidate: the train stage's, when it left the
# weights as they were (nothing to fine-tune). Shown apart from the recipe in every view.
UNUSED_PARAMS_ATTR = "unused_params"
# The jobs of a trial timed again because the device was busy (their reference ran slower
# than the campaign's quiet reference latency by more than agents.measure.contention_limit).
CONTENDED_ATTR = "contended_jobs"


@dataclass
class TrialRequest:
    campaign: Campaign
    number: int
    params: dict[str, Any]
    checkpoint: Path
    agents: AgentLease  # the campaign's pool (a Ray actor handle when trials run on Ray)
    agent_token: str | None
    device_info: dict[str, Any]
    work_dir: Path
    baseline: dict[str, float] | None = None  # its accuracy; None for the baseline itself
    # The baseline's deployable model, which every job is timed against (None: this trial is
    # the baseline, timed against itself).
    reference: Reference | None = None
    cut_speedup: float | None = None  # best feasible speedup so far (latency-first cut)
    # The reference's latency on a quiet device so far (None: too few jobs to tell): a job
    # whose reference ran slower than this by more than the campaign's contention limit is
    # timed again.
    quiet_reference_ms: float | None = None
    quiet_lock: Path | None = None  # the embedded agent's lock folder, on the driver's host
    save_weights: Path | None = None  # write the final torch weights here (safetensors)
    # Where the accuracy is measured: "host" (onnxruntime here) or "device" (the agent runs the
    # deployable engine on the test inputs), as the driver decided for the campaign.
    evaluate_on: str = "host"


@dataclass
class TrialOutcome:
    number: int
    state: str  # COMPLETE, PRUNED or FAIL
    accuracy: float | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    intermediate: list[tuple[int, float]] = field(default_factory=list)
