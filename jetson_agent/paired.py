"""Paired timing: a candidate and a reference model timed in alternating blocks, one process.

A speedup is a ratio, and on a shared or throttling device the absolute latency drifts by tens
of percent between two jobs; timed side by side, the two models see the same drift, so the
ratio is steady where each latency is not. A job with a ``reference`` runs in rounds: each
round times one block of each model, in alternating order (candidate first in even rounds,
reference first in odd ones, so neither always runs on a warmer device), and gives one ratio,
``median(reference block) / median(candidate block)``.

The speedup is the median of the round ratios; its interval is the distribution-free 95 %
interval of that median from order statistics (:func:`jetson_agent.stats.median_interval`),
computed from the returned samples alone, so the host can re-derive it. Rounds go on, after
the least number asked, until the interval's half-width is within ``ratio_ci`` of the speedup
or ``max_time_s`` of rounds have passed; the result says which (``stopped_by``).

Blocks: at least ``iterations`` runs and at least ``min_repeat_ms`` long (like TVM's runner:
sub-millisecond models get enough iterations per block for its median to mean something),
sized per model from a calibration run after the warm-up. A backend whose every ``time`` call
starts cold (trtexec runs one process per call: the closest honest scheme is alternating
trtexec runs of the two engines) is given the spec's warm-up in every block.
"""

import math
import time

from .spec import MAX_ITERATIONS, MAX_ROUNDS
from .stats import median, median_interval, summarize

CONFIDENCE = 0.95
CALIBRATION_ITERATIONS = 5
MODELS = ("candidate", "reference")


def block_iterations(calibration_ms, spec):
    """Iterations per block: ``spec.iterations`` at least, and enough to last
    ``spec.min_repeat_ms`` at the calibrated per-iteration latency."""
    per_iteration = max(median(calibration_ms), 1e-6)
    needed = math.ceil(spec.min_repeat_ms / per_iteration) if spec.min_repeat_ms else 0
    return max(spec.iterations, min(needed, MAX_ITERATIONS))


def ratio_summary(candidate_blocks, reference_blocks):
    """Speedup (reference / candidate), its interval and the per-round ratios, from the blocks'
    samples (lists of ms, round by round): everything the interval rests on is in the result."""
    ratios = [median(ref) / median(cand) for cand, ref in zip(candidate_blocks, reference_blocks)]
    low, high, coverage = median_interval(ratios, CONFIDENCE)
    speedup = median(ratios)
    return {
        "speedup": speedup,
        "speedup_ci": [low, high],
        "confidence": coverage,
        "halfwidth": (high - low) / 2.0 / speedup,
        "round_ratios": ratios,
    }


class _Model(object):
    def __init__(self, name, session, cold):
        self.name = name
        self.session = session
        self.cold = cold
        self.iterations = None
        self.blocks = []


def time_paired(candidate, reference, spec, clock=time.time):
    """Time two ready sessions as ``spec`` says; returns the candidate's blocks (lists of ms),
    and the ``paired`` section of the result."""
    models = [
        _Model(name, session, getattr(session, "cold_start", False))
        for name, session in zip(MODELS, (candidate, reference))
    ]
    for model in models:
        calibration = model.session.time(spec.warmup, CALIBRATION_ITERATIONS, None)
        model.iterations = block_iterations(calibration, spec)
    timeline = []
    started = time.monotonic()
    stopped_by = "rounds"
    summary = None
    for number in range(spec.repeats if not spec.ratio_ci else MAX_ROUNDS):
        for model in models if number % 2 == 0 else models[::-1]:
            warmup = spec.warmup if model.cold else 0
            begin = clock()
            samples = model.session.time(warmup, model.iterations, None)
            timeline.append(
                {
                    "round": number,
                    "model": model.name,
                    "started_at": begin,
                    "ended_at": clock(),
                    "count": len(samples),
                }
            )
            model.blocks.append(samples)
        rounds = number + 1
        if rounds < spec.repeats:
            continue
        summary = ratio_summary(models[0].blocks, models[1].blocks)
        if spec.ratio_ci and summary["halfwidth"] <= spec.ratio_ci:
            stopped_by = "target"
            break
        if spec.ratio_ci and time.monotonic() - started >= spec.max_time_s:
            stopped_by = "time_cap"
            break
    cand, ref = models
    reference_samples = [x for block in ref.blocks for x in block]
    paired = {
        "reference": {
            "model_sha256": spec.reference["model_sha256"],
            "precision": spec.reference["precision"],
            "latency_ms": summarize(reference_samples),
            "samples_ms": ref.blocks,
        },
        "rounds": len(cand.blocks),
        "block_iterations": {"candidate": cand.iterations, "reference": ref.iterations},
        "interval_method": "order statistics: distribution-free interval of the median of the "
        "round ratios",
        "target_halfwidth": spec.ratio_ci,
        "target_met": bool(spec.ratio_ci) and summary["halfwidth"] <= spec.ratio_ci,
        "stopped_by": stopped_by,
        "timed_s": time.monotonic() - started,
        "blocks": timeline,
    }
    paired.update(summary)
    return cand.blocks, paired
