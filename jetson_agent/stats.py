"""Latency statistics over per-iteration samples.

Percentiles use linear interpolation between closest ranks (numpy's default), so the agent's
numbers can be re-derived on the host from the raw samples it also returns.
"""

import math


def percentile(sorted_values, q):
    # type: (Sequence[float], float) -> float
    if not sorted_values:
        raise ValueError("percentile of no samples")
    rank = (len(sorted_values) - 1) * q / 100.0
    low = int(rank)  # rank >= 0, so int() floors
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def summarize(samples_ms):
    # type: (List[float]) -> Dict[str, float]
    """p50/p90/p99, mean, sample standard deviation (n-1), CV = std/mean, count, min, max."""
    ordered = sorted(samples_ms)
    count = len(ordered)
    mean = sum(ordered) / count
    variance = sum((x - mean) ** 2 for x in ordered) / (count - 1) if count > 1 else 0.0
    std = math.sqrt(variance)
    return {
        "count": count,
        "mean": mean,
        "std": std,
        "cv": std / mean if mean > 0 else 0.0,
        "min": ordered[0],
        "max": ordered[-1],
        "p50": percentile(ordered, 50),
        "p90": percentile(ordered, 90),
        "p99": percentile(ordered, 99),
    }
