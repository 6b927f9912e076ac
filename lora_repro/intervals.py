"""Intervals whose stated level is their true level, for the few values runs give (seeds, timing
rounds): the mean with its t-interval and the median with its exact order-statistic interval. The
library's benchmark and the analysis share them (analysis.stats builds the comparisons on top)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

LEVEL = 0.95


def clean(values) -> np.ndarray:
    return np.asarray([float(v) for v in values if v is not None and np.isfinite(float(v))], dtype=float)


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    level: float        # the achieved coverage (for the median: exact, may be below the asked level)
    n: int

    def fmt(self, digits: int = 1, signed: bool = False) -> str:
        sign = "+" if signed else ""
        if self.n == 0 or not np.isfinite(self.estimate):
            return "-"
        if self.n == 1:
            return f"{self.estimate:{sign}.{digits}f} (one seed: no interval)"
        return (f"{self.estimate:{sign}.{digits}f} [{self.low:{sign}.{digits}f}, {self.high:{sign}.{digits}f}] "
                f"({100 * self.level:.1f}%, n={self.n})")


def mean_ci(values, level: float = LEVEL) -> Interval:
    """The mean with its two-sided t-interval (exact for normal data)."""
    x = clean(values)
    if x.size == 0:
        return Interval(math.nan, math.nan, math.nan, level, 0)
    mean = float(x.mean())
    if x.size == 1:
        return Interval(mean, mean, mean, 0.0, 1)
    half = sps.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return Interval(mean, mean - half, mean + half, level, int(x.size))


def order_statistic_coverage(n: int, k: int) -> float:
    """P(x_(k) <= median <= x_(n+1-k)) for n continuous values: 1 - 2 P(Bin(n, 1/2) <= k-1)."""
    return float(1.0 - 2.0 * sps.binom.cdf(k - 1, n, 0.5))


def median_ci(values, level: float = LEVEL) -> Interval:
    """The median with the narrowest order-statistic interval [x_(k), x_(n+1-k)] whose exact
    coverage is at least `level`; when even [min, max] falls short (n <= 5 for 95%), that interval
    with its true, lower coverage. Distribution-free."""
    x = np.sort(clean(values))
    n = int(x.size)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, level, 0)
    median = float(np.median(x))
    if n == 1:
        return Interval(median, median, median, 0.0, 1)
    k = 1
    while k + 1 <= (n + 1) // 2 and order_statistic_coverage(n, k + 1) >= level:
        k += 1
    return Interval(median, float(x[k - 1]), float(x[n - k]), order_statistic_coverage(n, k), n)


