"""One candidate, start to finish, in whatever process runs it (a Ray worker or the driver).

load baseline → prune → export + quantize + measure (latency first: a candidate already slower
than the best feasible one stops here, before any fine-tuning) → train → export → quantize →
evaluate the deployable ONNX → measure it → an outcome the driver records. Nothing here touches
the study: the driver is its only writer.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import logging
import shutil
import socket
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from optimizer.config import Campaign
from optimizer.device import colocation
from optimizer.device.client import MeasurementFailed, Reference
from optimizer.device.pool import PooledMeasurement
from optimizer.plugin_api.model_stats import (
    count_macs,
    count_params,
    example_input,
    onnx_size_bytes,
)
from optimizer.plugin_api.task import SCORE
from optimizer.plugin_api.technique import OnnxArtifact, StageContext, TrialPruned
from optimizer.plugin_host.registry import Registry, plugin_registry
from optimizer.trial.baseline import baseline_path, build_model, load_model, load_teacher
from optimizer.trial.evaluation import device_outputs, scores, test_inputs
from optimizer.trial.export import export_onnx
from optimizer.trial.log import LOG_NAME, LOG_TAIL_ATTR, TrialLog
from optimizer.trial.outcome import (
    CONTENDED_ATTR,
    REFERENCE_JOBS_ATTR,
    UNUSED_PARAMS_ATTR,
    ShouldPrune,
    TrialOutcome,
    TrialRequest,
)
from optimizer.trial.stages import (
    TechniqueFailed,
    apply_technique,
    check_leaves_unchanged,
    fingerprint,
)


@functools.cache
def _splits(data_json: str, disable: tuple[str, ...]) -> Any:
    from optimizer.config import DataConfig

    data = DataConfig.model_validate_json(data_json)
    return plugin_registry(disable).data_source(data.source).load(data)


def load_splits(campaign: Campaign) -> Any:
    """The campaign's data, loaded once per process, from the data source its enabled plugins
    register (``plugins.disable`` applies: a disabled plugin is not even imported)."""
    return _splits(campaign.data.model_dump_json(), tuple(campaign.plugins.disable))


def trial_context(
    campaign: Campaign,
    splits: Any,
    registry: Registry,
    device_info: dict[str, Any],
    work: Path,
    *,
    number: int,
    checkpoint: Path,
    log: logging.Logger,
    report: Callable[[int, float], None] | None = None,
) -> StageContext:
    """What the techniques of trial ``number`` are given (seeded by the campaign's seed plus
    the trial number). The teacher is loaded only when a technique asks for it (the baseline
    at ``checkpoint`` unless the campaign names another)."""
    seed = campaign.search.seed + number
    extra = {"report": report} if report is not None else {}
    return StageContext(
        input_shape=(1, *splits.input_shape),
        num_classes=splits.num_classes,
        # Each batch is a step that never overlaps a measurement by a co-located agent.
        train_loader=colocation.PacedLoader(
            DataLoader(
                splits.train,
                batch_size=campaign.data.batch_size,
                shuffle=True,
                generator=torch.Generator().manual_seed(seed),
            )
        ),
        val_loader=DataLoader(splits.val, batch_size=256),
        task=registry.task(campaign.task.name),
        load_teacher=functools.cache(
            lambda: load_teacher(campaign, splits.num_classes, checkpoint)
        ),
        device_info=device_info,
        work_dir=work,
        seed=seed,
        calibration_size=campaign.data.calibration_size,
        calibration_method=campaign.data.calibration_method,
        trial_number=number,
        log=log,
        model_name=campaign.model.name,
        model_family=registry.model_family(campaign.model.name),
        **extra,
    )


def check_defaults(
    campaign: Campaign,
    registry: Registry,
    checkpoint: Path,
    device_info: dict[str, Any],
    defaults: dict[str, Any],
    work: Path,
) -> None:
    """The default rule, on the campaign's baseline: every technique at ``defaults`` (each
    parameter's declared default: what the baseline trial runs) must leave it as it is
    (:func:`~optimizer.trial.stages.check_leaves_unchanged`).

    Why: the baseline is "every technique at its default" (docs/architecture.md); a default
    that prunes or retrains would silently replace the user's model by a worse one, and the
    campaign would report candidates against it."""
    splits = load_splits(campaign)
    model = load_model(campaign, splits.num_classes, checkpoint)
    torch.manual_seed(campaign.search.seed)
    log = logging.getLogger("vitopt.defaults")
    ctx = trial_context(
        campaign, splits, registry, device_info, work, number=0, checkpoint=checkpoint, log=log
    )
    check_leaves_unchanged(registry.techniques, model, defaults, ctx, work)


def preflight_subject(
    campaign: Campaign, registry: Registry, device_info: dict[str, Any], work: Path
) -> tuple[torch.nn.Module, StageContext]:
    """The model and context each technique's optional ``model_choices`` and ``preflight``
    (:mod:`optimizer.trial.stages`) are called with: the campaign's model *before* its
    baseline is trained, since what they check (which pruning methods find something to
    remove, feature KD pairing the student's blocks with the teacher's) is the architecture,
    and a campaign every trial of which would fail should not first spend the baseline's
    training. The teacher is the one the campaign names, or else this same untrained model."""
    splits = load_splits(campaign)
    torch.manual_seed(campaign.search.seed)
    model = build_model(campaign, campaign.model, splits.num_classes).eval()
    log = logging.getLogger("vitopt.preflight")
    ctx = trial_context(
        campaign,
        splits,
        registry,
        device_info,
        work,
        number=0,
        checkpoint=baseline_path(campaign),
        log=log,
    )
    if campaign.teacher.name is None:  # the baseline, whose architecture this is
        ctx = dataclasses.replace(ctx, load_teacher=lambda: copy.deepcopy(model))
    return model, ctx


class _Measurer:
    """Every job paired with the campaign's reference (the baseline's deployable model; for
    the baseline itself, its own model: an A/A job whose interval shows the noise left).

    Pairing cancels a slowdown that hits both models alike, not one that hits them unequally:
    on a busy host (another process on the core's sibling, say) an int8 candidate slows more
    than the fp32 reference, and its speedup reads up to 30 % low. A job whose reference ran
    slower than the campaign's quiet reference latency by more than ``contention_limit`` is
    timed again, ``contention_retries`` times at most, and the job whose reference ran
    fastest is kept."""

    def __init__(self, request: TrialRequest):
        agents = request.campaign.agents
        self.pooled = PooledMeasurement(request.agents, request.agent_token, agents.wait_healthy_s)
        self.spec = agents.measure.spec()
        self.reference = request.reference
        self.metric = request.campaign.objective.metric
        limit = agents.measure.contention_limit
        quiet = request.quiet_reference_ms
        self.busy_above = quiet * (1 + limit) if limit is not None and quiet else None
        self.retries = agents.measure.contention_retries
        self.contended: list[float] = []  # reference latency of each job timed again

    def reference_ms(self, result: dict[str, Any]) -> float:
        return result["paired"]["reference"]["latency_ms"][self.metric]

    def reference_job(self, result: dict[str, Any]) -> dict[str, float]:
        """One job's reference timing, for the campaign's reference latency and its drift."""
        return {"at": result["measured_at"], "latency_ms": self.reference_ms(result)}

    def _busy(self, result: dict[str, Any]) -> bool:
        return self.busy_above is not None and self.reference_ms(result) > self.busy_above

    def __call__(self, artifact: OnnxArtifact) -> dict[str, Any]:
        reference = self.reference or Reference(artifact.path, artifact.precision)
        spec = dict(self.spec, precision=artifact.precision)
        jobs = [self.pooled(artifact.path, spec, reference)]
        while self._busy(jobs[-1]) and len(jobs) <= self.retries:
            self.contended.append(self.reference_ms(jobs[-1]))
            # Timed afresh: the agent's result cache would hand back the busy job itself.
            jobs.append(self.pooled(artifact.path, dict(spec, use_cache=False), reference))
        return min(jobs, key=self.reference_ms)


def _latency_attrs(result: dict[str, Any]) -> dict[str, Any]:
    """The candidate's absolute figures, as its job timed them (the search uses the speedup)."""
    latency = result["latency_ms"]
    attrs = {f"latency_{k}_ms": latency[k] for k in ("p50", "p90", "p99", "mean", "std")}
    attrs["latency_cv"] = latency["cv"]
    return attrs


def _paired_attrs(result: dict[str, Any]) -> dict[str, Any]:
    """What the search acts on: the paired speedup, its interval, and how it was reached."""
    paired = result["paired"]
    return {
        "speedup": paired["speedup"],
        "speedup_ci": paired["speedup_ci"],
        "speedup_ci_met": paired["target_met"],
        "speedup_rounds": paired["rounds"],
    }


def run_trial(request: TrialRequest, should_prune: ShouldPrune | None = None) -> TrialOutcome:
    """Run one trial; never raises (a failure is a FAIL outcome with its reason). What its
    techniques log, and how it ended, is its ``trial.log`` (an artifact whatever the outcome)."""
    outcome = TrialOutcome(request.number, "FAIL")
    started = time.monotonic()
    measure = _Measurer(request)
    colocation.share_device(request.quiet_lock)
    request.work_dir.mkdir(parents=True, exist_ok=True)
    with TrialLog(request.work_dir, request.number) as log:
        try:
            _run(request, outcome, should_prune, measure, log.logger)
        except TrialPruned:
            outcome.state = "PRUNED"
            outcome.attrs.setdefault("pruned_reason", "a technique stopped it (TrialPruned)")
        except MeasurementFailed as exc:
            outcome.state = "FAIL"
            outcome.attrs["fail_reason"] = f"agent: {exc}"
            outcome.attrs["fail_status"] = exc.status
            outcome.attrs["candidate_fault"] = exc.candidate_fault
        except TechniqueFailed as exc:
            outcome.state = "FAIL"
            outcome.attrs["fail_reason"] = str(exc)
            cause = exc.__cause__ or exc  # the plugin's own frames, not the check's
            lines = traceback.format_exception(type(cause), cause, cause.__traceback__)
            outcome.attrs["traceback"] = "".join(lines)[-4000:]
        except Exception as exc:
            outcome.state = "FAIL"
            outcome.attrs["fail_reason"] = f"{type(exc).__name__}: {exc}"
            outcome.attrs["traceback"] = traceback.format_exc()[-4000:]
        outcome.attrs["trial_wall_s"] = time.monotonic() - started
        outcome.attrs["agent_jobs"] = measure.pooled.log
        if measure.contended:
            outcome.attrs[CONTENDED_ATTR] = {
                "quiet_reference_ms": request.quiet_reference_ms,
                "retimed_reference_ms": measure.contended,
            }
        _log_ending(log.logger, outcome)
        outcome.attrs[LOG_TAIL_ATTR] = log.tail
    outcome.artifacts[LOG_NAME] = str(log.path)
    return outcome


def _log_ending(log: logging.Logger, outcome: TrialOutcome) -> None:
    attrs = outcome.attrs
    if outcome.state == "FAIL":
        log.error("trial %d failed: %s", outcome.number, attrs.get("fail_reason"))
        if attrs.get("traceback"):
            log.error("%s", attrs["traceback"].rstrip())
    elif outcome.state == "PRUNED":
        log.info("trial %d pruned: %s", outcome.number, attrs.get("pruned_reason"))
    else:
        log.info(
            "trial %d complete: accuracy %.4f, speedup %.3f×, %.0f s",
            outcome.number,
            outcome.accuracy,
            attrs.get("speedup", float("nan")),
            attrs["trial_wall_s"],
        )


def _run(
    request: TrialRequest,
    outcome: TrialOutcome,
    should_prune: ShouldPrune | None,
    measure: _Measurer,
    log: logging.Logger,
) -> None:
    campaign = request.campaign
    torch.set_num_threads(campaign.execution.torch_threads)
    seed = campaign.search.seed + request.number
    torch.manual_seed(seed)
    work = request.work_dir
    work.mkdir(parents=True, exist_ok=True)

    registry = plugin_registry(campaign.plugins.disable)
    stages = registry.by_stage()
    declared = registry.declared()
    unknown = sorted(set(request.params) - {spec.name for spec in declared})
    if unknown:  # the driver has a plugin this process lacks: never run without it silently
        raise TechniqueFailed(
            f"no technique on {socket.gethostname()} declares {', '.join(unknown)}: install the "
            "plugin that does on every node that runs trials (at the driver's version)"
        )
    # Every declared parameter, those the trial does not set at their declared defaults: a
    # technique reads params[name], never a fallback of its own.
    params = {spec.name: request.params.get(spec.name, spec.default) for spec in declared}
    splits = load_splits(campaign)
    model = load_model(campaign, splits.num_classes, request.checkpoint)

    def report(step: int, value: float) -> None:
        outcome.intermediate.append((step, value))
        if should_prune is not None and should_prune(step, value):
            raise TrialPruned(f"pruned at epoch {step} with validation accuracy {value:.4f}")

    ctx = trial_context(
        campaign,
        splits,
        registry,
        request.device_info,
        work,
        number=request.number,
        checkpoint=request.checkpoint,
        report=report,
        log=log,
    )
    example = example_input(ctx.input_shape)

    baseline_macs = count_macs(model, ctx.input_shape)
    with colocation.step():
        for technique in stages["prune"]:
            model = apply_technique(technique, model, params, ctx)
    outcome.attrs["params_count"] = count_params(model)
    outcome.attrs["macs"] = count_macs(model, ctx.input_shape)
    ctx.macs_kept = outcome.attrs["macs"] / baseline_macs

    def deployable(name: str) -> OnnxArtifact:
        with colocation.step():
            artifact = OnnxArtifact(
                export_onnx(model, example, work / f"{name}.onnx", family=ctx.model_family)
            )
            for technique in stages["quantize"]:
                artifact = apply_technique(technique, artifact, params, ctx)
        return artifact

    artifact = deployable("architecture")
    result = measure(artifact)
    reference_jobs = [measure.reference_job(result)]
    outcome.attrs[REFERENCE_JOBS_ATTR] = reference_jobs
    probe = _paired_attrs(result)
    outcome.attrs["probe_speedup"] = probe["speedup"]
    outcome.attrs["probe_speedup_ci"] = probe["speedup_ci"]
    cut = request.cut_speedup
    if cut is not None and slower_than_best(probe["speedup_ci"], cut):
        outcome.state = "PRUNED"
        outcome.attrs.update(probe)
        low, high = probe["speedup_ci"]
        outcome.attrs["pruned_reason"] = (
            f"latency first: its speedup, {probe['speedup']:.3f}× [{low:.3f}, {high:.3f}], is "
            f"below the best feasible {cut:.3f}×, so no fine-tuning was spent on it"
        )
        _keep(outcome, artifact, result, work)  # what was cut, as it was timed
        return
    before = fingerprint(model)
    for technique in stages["train"]:
        model = apply_technique(technique, model, params, ctx)
    if fingerprint(model) != before:  # retrained: the deployable file and its timing change
        artifact = deployable("candidate")
        result = measure(artifact)
        reference_jobs.append(measure.reference_job(result))
    else:  # nothing was fine-tuned: the train stage's parameters did not shape this candidate
        unused = [
            spec.name
            for entry in stages["train"]
            for spec in entry.technique.search_space()
            if spec.name in request.params
        ]
        if unused:
            outcome.attrs[UNUSED_PARAMS_ATTR] = sorted(unused)

    if request.save_weights is not None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, request.save_weights)
    # A task may report more than its score (segmentation: per-class IoU, pixel accuracy):
    # ``evaluate_onnx_metrics`` returns them with the score under SCORE.
    with colocation.step():
        host = dict(ctx.task.evaluate_onnx_metrics(artifact.path, splits.test))
    device = None
    if request.evaluate_on == "device":
        limit = int(request.device_info["limits"]["max_upload_bytes"])
        inputs = test_inputs(splits.test)
        outputs = device_outputs(measure.pooled.evaluate, artifact, inputs, limit)
        device = dict(ctx.task.evaluate_outputs(outputs, splits.test))
    scored = scores(host, device)
    extra = {key: value for key, value in (device or host).items() if key != SCORE}
    accuracy = scored["accuracy"]
    outcome.state = "COMPLETE"
    outcome.accuracy = accuracy
    outcome.attrs.update(_latency_attrs(result))
    outcome.attrs.update(_paired_attrs(result))
    outcome.attrs.update(
        {
            "precision": artifact.precision,
            "model_size_bytes": onnx_size_bytes(artifact.path),
            "peak_memory_mb": result.get("peak_memory_mb"),
            "energy_per_inference_mj": (result.get("power") or {}).get("energy_per_inference_mj"),
            "remeasured": result.get("remeasured"),
            "device": result.get("device"),
            "device_type": result.get("device_type"),
            "agent_url": result["agent_url"],
            "backend": result["backend"]["name"],
            "backend_version": result["backend"]["version"],
        }
    )
    outcome.attrs["accuracy_metric"] = ctx.task.metric_name  # what "accuracy" means
    outcome.attrs.update(scored)
    outcome.attrs.update(extra)
    if request.baseline is not None:
        outcome.attrs["accuracy_drop"] = request.baseline["accuracy"] - accuracy
    else:
        # Timed against itself: the speedup is 1 by definition; its interval (the A/A job's)
        # says how much noise a candidate's interval carries.
        outcome.attrs["speedup"] = 1.0
        outcome.attrs["accuracy_drop"] = 0.0
    _keep(outcome, artifact, result, work)


def _keep(
    outcome: TrialOutcome, artifact: OnnxArtifact, result: dict[str, Any], work: Path
) -> None:
    """The files a reviewer downloads: the model as timed (under one name, whatever stage wrote
    it) and its measurement report."""
    deployed = work / "model.onnx"
    shutil.copyfile(artifact.path, deployed)
    report_path = work / "measurement.json"
    report_path.write_text(json.dumps(result, indent=1))
    outcome.artifacts = {"model.onnx": str(deployed), "measurement.json": str(report_path)}


def slower_than_best(interval: list[float], best_speedup: float) -> bool:
    """The latency-first cut: a candidate stops before fine-tuning only when its whole
    interval lies below the best feasible speedup (a point estimate below it may be noise)."""
    return interval[1] < best_speedup
