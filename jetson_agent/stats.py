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


def median_interval(values, confidence=0.95):
    # type: (Sequence[float], float) -> Tuple[float, float, float]
    """A distribution-free confidence interval of the median of ``values`` from order statistics:
    ``(low, high, coverage)``.

    For n independent values the number below the true median is Binomial(n, 1/2), so the k-th
    smallest and k-th largest values bracket it with probability ``1 - 2 P(B <= k - 1)``; k is
    the largest rank that keeps this at least ``confidence``. ``coverage`` is that probability
    (at least ``confidence``, or under it for fewer than 6 values at 95 %, when the interval is
    the whole range). No resampling, so the host re-derives it exactly from the samples."""
    ordered = sorted(values)
    count = len(ordered)
    if not count:
        raise ValueError("interval of no values")
    tail = (1.0 - confidence) / 2.0
    mass = 0.5**count  # P(B = 0)
    cumulative = 0.0  # P(B <= k - 1) for the current k
    k = 0
    for j in range(count // 2):
        if cumulative + mass > tail:
            break
        cumulative += mass
        k = j + 1
        mass = mass * (count - j) / (j + 1)  # P(B = j + 1)
    if k == 0:
        return ordered[0], ordered[-1], 1.0 - 2.0 * 0.5**count
    return ordered[k - 1], ordered[count - k], 1.0 - 2.0 * cumulative


def median(values):
    # type: (Sequence[float]) -> float
    return percentile(sorted(values), 50)
