"""Small-sample statistics for seeds, with intervals whose stated level is the true one.

* Per arm: the mean with a t-interval, and the median with the exact distribution-free
  (order-statistic, sign-test) interval, which states its achieved coverage: with 5 seeds the widest
  one, [min, max], covers the median with probability 93.75%, never 95%, and that is what it says.
  (The earlier percentile bootstrap of the median returned [min, max] for n <= 5 and called it 95%.)
* Per comparison (two arms on the same seeds: same data order, same initial head): paired
  differences with a t-interval of their mean (the primary estimate), and as a robustness check the
  Wilcoxon signed-rank test with the Hodges-Lehmann estimate and its exact interval.
* Decisions against a stated margin delta: non-inferiority (one-sided lower 95% bound > -delta),
  superiority (one-sided lower 97.5% bound > 0), equivalence by TOST (90% interval inside
  +-delta); Holm's correction over a family of refutations (statsmodels).
* Validity: an arm counts only when it beats the constant predictor by a stated amount on most
  seeds; a comparison with an arm that did not learn is "not evaluable", never "supported".
* The dev set is a sample too: a two-way bootstrap over seeds and dev examples gives the interval
  of a paired difference that also covers dev-sample noise (from per-example predictions).

Everything is seeded or exact, so a report is reproducible from the same records."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
from scipy import stats as sps

from lora_repro.intervals import LEVEL, Interval, clean, mean_ci, median_ci, order_statistic_coverage  # noqa: F401


def min_seeds_for(level: float = LEVEL) -> int:
    """The fewest seeds for which an order-statistic interval of the median reaches `level` (6 for 95%)."""
    n = 2
    while order_statistic_coverage(n, 1) < level:
        n += 1
    return n


# ------------------------------------------------------------------------------ two arms, paired
@lru_cache(maxsize=64)
def signed_rank_cdf(n: int) -> np.ndarray:
    """P(T+ <= t) for t = 0..n(n+1)/2 under the null (exact, by counting subsets)."""
    top = n * (n + 1) // 2
    counts = np.zeros(top + 1)
    counts[0] = 1.0
    for i in range(1, n + 1):
        counts[i:] = counts[i:] + counts[:-i].copy()
    return np.cumsum(counts) / 2.0 ** n


def hodges_lehmann(diffs, level: float = LEVEL) -> Interval:
    """The Hodges-Lehmann estimate (median of the Walsh averages) with the exact distribution-free
    interval [W_(k), W_(N+1-k)], whose coverage is 1 - 2 P(T+ <= k-1) under the signed-rank null:
    the narrowest one reaching `level`, else the full range with its true, lower coverage."""
    d = clean(diffs)
    n = int(d.size)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, level, 0)
    walsh = np.sort([(d[i] + d[j]) / 2.0 for i in range(n) for j in range(i, n)])
    estimate = float(np.median(walsh))
    if n == 1:
        return Interval(estimate, estimate, estimate, 0.0, 1)
    cdf = signed_rank_cdf(n)

    def coverage(k: int) -> float:
        return float(1.0 - 2.0 * cdf[k - 1])

    k = 1
    while k + 1 <= (len(walsh) + 1) // 2 and coverage(k + 1) >= level:
        k += 1
    return Interval(estimate, float(walsh[k - 1]), float(walsh[len(walsh) - k]), coverage(k), n)


@dataclass(frozen=True)
class Paired:
    """A comparison of arm A against arm B over the seeds both have (differences A - B)."""

    n: int
    mean: Interval            # mean difference, two-sided t-interval at LEVEL
    lower_95: float           # one-sided lower 95% t-bound (non-inferiority)
    lower_975: float          # one-sided lower 97.5% t-bound (superiority)
    upper_95: float
    tost: tuple[float, float]  # 90% two-sided t-interval (equivalence by TOST at 5% per side)
    p_wilcoxon: float         # two-sided exact signed-rank p (nan when n < 2 or all differences are 0)
    hodges_lehmann: Interval  # at 90%: the robustness check of the one-sided 5% decisions
    diffs: tuple[float, ...]


def paired(a: dict, b: dict) -> Paired:
    """Paired differences a[seed] - b[seed] over the seeds both have."""
    seeds = sorted(s for s in set(a) & set(b) if a[s] is not None and b[s] is not None
                   and np.isfinite(a[s]) and np.isfinite(b[s]))
    d = np.asarray([float(a[s]) - float(b[s]) for s in seeds])
    n = int(d.size)
    mean = mean_ci(d)
    if n >= 2:
        se = d.std(ddof=1) / math.sqrt(n)
        t95, t975 = sps.t.ppf(0.95, n - 1), sps.t.ppf(0.975, n - 1)
        lower_95, upper_95, lower_975 = d.mean() - t95 * se, d.mean() + t95 * se, d.mean() - t975 * se
        tost = (d.mean() - t95 * se, d.mean() + t95 * se)
        nonzero = d[d != 0]
        p = float(sps.wilcoxon(d, zero_method="wilcox", method="exact").pvalue) if nonzero.size >= 1 and n >= 2 else math.nan
    else:
        lower_95 = upper_95 = lower_975 = float(d.mean()) if n else math.nan
        tost, p = (lower_95, upper_95), math.nan
    return Paired(n, mean, float(lower_95), float(lower_975), float(upper_95), (float(tost[0]), float(tost[1])), p,
                  hodges_lehmann(d, 0.90), tuple(float(x) for x in d))


# ------------------------------------------------------------------------------ decisions
SUPPORTED, REFUTED, UNDECIDED = "supported", "refuted", "undecided"
NOT_EVALUABLE, NOT_AS_SPECIFIED = "not evaluable", "not tested as specified"
MIN_SEEDS = 3  # fewer pairs: no decision at all


def decide(test: str, comparison: Paired, margin: float) -> tuple[str, str]:
    """(status, why) for the claim "A against B" with margin `margin` (score points), from the
    t-bounds of the mean paired difference:

    * noninferior (A is no worse than B by more than the margin): supported when the one-sided
      lower 95% bound > -margin; refuted when the one-sided upper 95% bound < -margin.
    * superior (A beats B): supported when the one-sided lower 97.5% bound > 0; refuted when the
      upper 95% bound < 0 (A is worse) or when TOST shows A within +-margin of B (a tie).
    * equivalent (|A - B| < margin, TOST at 5% per side): supported when the 90% interval lies
      inside +-margin; refuted when it lies wholly outside.

    A supported or refuted outcome that the Hodges-Lehmann 90% interval (signed-rank, robust to one
    collapsed seed) does not also show is undecided, and says why."""
    if comparison.n < MIN_SEEDS:
        return UNDECIDED, f"{comparison.n} paired seeds (at least {MIN_SEEDS} needed)"
    lo95, up95, lo975 = comparison.lower_95, comparison.upper_95, comparison.lower_975
    tlo, thi = comparison.tost
    hl = comparison.hodges_lehmann
    inside = tlo > -margin and thi < margin
    if test == "noninferior":
        status = SUPPORTED if lo95 > -margin else REFUTED if up95 < -margin else UNDECIDED
        robust = hl.low > -margin if status == SUPPORTED else hl.high < -margin
    elif test == "superior":
        status = SUPPORTED if lo975 > 0 else REFUTED if (up95 < 0 or inside) else UNDECIDED
        robust = hl.low > 0 if status == SUPPORTED else (hl.high < 0 or (hl.low > -margin and hl.high < margin))
    elif test == "equivalent":
        status = SUPPORTED if inside else REFUTED if (tlo > margin or thi < -margin) else UNDECIDED
        robust = (hl.low > -margin and hl.high < margin) if status == SUPPORTED else (hl.low > margin or hl.high < -margin)
    else:
        raise ValueError(f"unknown test {test!r}: noninferior, superior or equivalent")
    if status != UNDECIDED and not robust:
        return UNDECIDED, (f"the t-interval says {status} but the signed-rank (Hodges-Lehmann) interval "
                           f"{hl.fmt(2, signed=True)} does not: not robust to one seed")
    return status, ""


def beats_constant(scores: Sequence[float], constant: float, by: float, fraction: float = 0.8) -> bool:
    """The validity gate: the arm beats the constant predictor's score by `by` points on at least
    `fraction` of its seeds."""
    x = clean(scores)
    return x.size > 0 and float(np.mean(x > constant + by)) >= fraction


def holm(pvalues: Sequence[float], alpha: float = 0.05) -> list[bool]:
    """Holm's step-down rejections over a family of tests (statsmodels' multipletests)."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray([1.0 if not np.isfinite(v) else v for v in pvalues], dtype=float)
    if p.size == 0:
        return []
    return [bool(r) for r in multipletests(p, alpha=alpha, method="holm")[0]]


def t_pvalue_below(comparison: Paired, bound: float) -> float:
    """One-sided p of H0: mean difference >= bound against H1: it is below (a refutation's p)."""
    d = np.asarray(comparison.diffs)
    if d.size < 2 or d.std(ddof=1) == 0:
        return 0.0 if d.size and d.mean() < bound else 1.0
    t = (d.mean() - bound) / (d.std(ddof=1) / math.sqrt(d.size))
    return float(sps.t.cdf(t, d.size - 1))


def refutation_pvalue(test: str, comparison: Paired, margin: float) -> float:
    """One-sided t p-value of the refutation `decide` reports for `test` (what Holm corrects over a
    claim's comparisons): noninferior, the mean difference is below -margin; superior, it is below 0
    or (a tie) inside +-margin by TOST; equivalent, it is outside +-margin on the nearer side."""
    d = np.asarray(comparison.diffs)
    if test == "noninferior":
        return t_pvalue_below(comparison, -margin)
    above = (lambda bound: 1.0 - t_pvalue_below(comparison, bound)) if d.size >= 2 and d.std(ddof=1) > 0 else \
        (lambda bound: 0.0 if d.size and d.mean() > bound else 1.0)
    if test == "superior":
        return min(t_pvalue_below(comparison, 0.0), max(above(-margin), t_pvalue_below(comparison, margin)))
    if test == "equivalent":
        return min(above(margin), t_pvalue_below(comparison, -margin))
    raise ValueError(f"unknown test {test!r}")


# ------------------------------------------------------------------------------ the dev set is a sample
def _batched_accuracy(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    return 100.0 * (p == y).mean(axis=-1)


def _batched_pearson(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    p = p - p.mean(axis=-1, keepdims=True)
    y = y - y.mean(axis=-1, keepdims=True)
    den = np.sqrt((p * p).sum(axis=-1) * (y * y).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, 100.0 * (p * y).sum(axis=-1) / np.where(den > 0, den, 1.0), 0.0)


def _counts(p: np.ndarray, y: np.ndarray):
    tp = ((p == 1) & (y == 1)).sum(axis=-1).astype(float)
    tn = ((p == 0) & (y == 0)).sum(axis=-1).astype(float)
    fp = ((p == 1) & (y == 0)).sum(axis=-1).astype(float)
    fn = ((p == 0) & (y == 1)).sum(axis=-1).astype(float)
    return tp, tn, fp, fn


def _batched_mcc(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Binary Matthews correlation (0 when a margin is empty, as scikit-learn returns)."""
    tp, tn, fp, fn = _counts(p, y)
    den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return np.where(den > 0, 100.0 * (tp * tn - fp * fn) / np.where(den > 0, den, 1.0), 0.0)


def _batched_f1(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    tp, _, fp, fn = _counts(p, y)
    den = 2 * tp + fp + fn
    return np.where(den > 0, 100.0 * 2 * tp / np.where(den > 0, den, 1.0), 0.0)


# Metrics x100 over the last axis, for many resamples at once (the bootstrap below); each equals
# lora_repro.metrics' (scikit-learn's / scipy's) value on one sample (tests/test_stats.py).
BATCHED_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "accuracy": _batched_accuracy, "pearson": _batched_pearson, "mcc": _batched_mcc, "f1": _batched_f1}


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    return float(_batched_accuracy(np.asarray(pred), np.asarray(y)))


@dataclass(frozen=True)
class DevSampled:
    """A paired difference's uncertainty from seeds AND dev examples (`two_way`), and the half-width
    of its interval from dev examples alone (`dev_half_width`: the smallest difference this dev set
    can resolve at that level, whatever the number of seeds)."""

    two_way: Interval
    dev_half_width: float


def dev_sampled(pred_a: dict, pred_b: dict, labels: Sequence, metric: str, resamples: int = 1000,
                level: float = 0.90, seed: int = 0) -> DevSampled:
    """Bootstrap of the mean paired difference metric(A) - metric(B): each resample draws dev
    examples with replacement (the same for both arms: paired) and, for the two-way interval, seeds
    with replacement. `pred_*` map seed -> per-example predictions; percentile intervals at `level`
    (90%: the one-sided 5% decisions read its ends). Vectorised over resamples."""
    return dev_contrast([(1.0, pred_a), (-1.0, pred_b)], labels, metric, resamples, level, seed)


def dev_contrast(terms: Sequence[tuple[float, dict]], labels: Sequence, metric: str, resamples: int = 1000,
                 level: float = 0.90, seed: int = 0) -> DevSampled:
    """dev_sampled for any signed sum of arms scored on one dev set, per seed: sum_k w_k metric(arm_k),
    e.g. a difference of differences (LoRA - FT on a larger model minus LoRA - FT on a smaller one,
    terms (+1, -1, -1, +1)). Every arm is scored on the same resampled dev examples, over the seeds all
    arms share. Two terms (+1, -1) give dev_sampled's numbers exactly (same random draws)."""
    seeds = sorted(set.intersection(*(set(p) for _, p in terms))) if terms else []
    y = np.asarray(labels)
    if not seeds or metric not in BATCHED_METRICS:
        return DevSampled(Interval(math.nan, math.nan, math.nan, level, 0), math.nan)
    fn = BATCHED_METRICS[metric]
    arms = [(float(w), np.stack([np.asarray(p[s]) for s in seeds])) for w, p in terms]   # each seeds x n

    def contrast(pick: Callable[[np.ndarray], np.ndarray], labels_: np.ndarray) -> np.ndarray:
        total = 0.0
        for w, preds in arms:
            total = total + w * fn(pick(preds), labels_)
        return total

    observed = float(np.mean(contrast(lambda p: p, y[None, :])))
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, y.size, size=(resamples, y.size))       # resamples x n
    diff = np.stack([contrast(lambda p, i=i: p[i][rows], y[rows]) for i in range(len(seeds))], axis=1)  # B x S
    chosen = rng.integers(0, len(seeds), size=(resamples, len(seeds)))
    two_way = np.take_along_axis(diff, chosen, axis=1).mean(axis=1)
    dev_only = diff.mean(axis=1)
    tail = (1 - level) / 2
    lo, hi = np.quantile(two_way, [tail, 1 - tail])
    dlo, dhi = np.quantile(dev_only, [tail, 1 - tail])
    return DevSampled(Interval(observed, float(lo), float(hi), level, len(seeds)), float((dhi - dlo) / 2))


def two_way_bootstrap(pred_a: dict, pred_b: dict, labels: Sequence, metric: str | Callable = "accuracy",
                      resamples: int = 2000, level: float = LEVEL, seed: int = 0) -> Interval:
    """Interval of the mean paired difference that covers seed noise AND the sampling of dev
    examples (dev_sampled's two-way interval, at `level`)."""
    name = metric if isinstance(metric, str) else getattr(metric, "__name__", "")
    return dev_sampled(pred_a, pred_b, labels, name, resamples, level, seed).two_way
