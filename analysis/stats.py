"""Small-sample statistics for seeds: the median with a percentile-bootstrap 95% CI, and paired
differences between two arms run on the same seeds (same data order, same initial head), which
remove the seed-to-seed variation both arms share. Resampling is seeded, so a report is
reproducible from the same records. scipy.stats.bootstrap is not used: with 2-5 seeds its BCa
interval is undefined for ties, and the plain percentile interval of the median is what is reported."""

from __future__ import annotations

import numpy as np

RESAMPLES = 10_000
LEVEL = 0.95


def median_ci(values, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0) -> tuple[float, float, float]:
    """(median, low, high): the median of `values` and the percentile bootstrap interval of the
    median. One value gives (v, v, v); no values give NaNs."""
    data = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if data.size == 0:
        return float("nan"), float("nan"), float("nan")
    if data.size == 1:
        return float(data[0]), float(data[0]), float(data[0])
    rng = np.random.default_rng(seed)
    medians = np.median(data[rng.integers(0, data.size, size=(resamples, data.size))], axis=1)
    tail = (1.0 - level) / 2.0
    return float(np.median(data)), float(np.quantile(medians, tail)), float(np.quantile(medians, 1.0 - tail))


def paired(a: dict, b: dict, **kwargs) -> tuple[float, float, float, int]:
    """Median and CI of a[seed] - b[seed] over the seeds both have; and how many pairs."""
    seeds = sorted(set(a) & set(b))
    median, low, high = median_ci([a[s] - b[s] for s in seeds], **kwargs)
    return median, low, high, len(seeds)
