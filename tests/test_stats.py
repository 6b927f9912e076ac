"""The statistics the tables and the claims report use, on data with known answers, and coverage
simulations showing that each interval's stated level is its true level."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from analysis.stats import (NOT_EVALUABLE, REFUTED, SUPPORTED, UNDECIDED, accuracy, beats_constant, decide,
                            hodges_lehmann, holm, mean_ci, median_ci, min_seeds_for, order_statistic_coverage, paired,
                            signed_rank_cdf, two_way_bootstrap)


def test_the_median_interval_states_its_exact_coverage():
    five = median_ci([3.0, 1.0, 5.0, 2.0, 4.0])
    assert (five.estimate, five.low, five.high) == (3.0, 1.0, 5.0)
    assert five.level == pytest.approx(0.9375)  # 1 - 2/32: [min, max] of 5 can never be 95%
    assert median_ci([1.0, 2.0]).level == pytest.approx(0.5)
    assert min_seeds_for(0.95) == 6 and order_statistic_coverage(6, 1) == pytest.approx(1 - 2 / 64)
    ten = median_ci(list(range(1, 11)))
    # k = 2 gives 1 - 2 P(Bin(10, .5) <= 1) = 1 - 2 * 11/1024 = 0.9785; k = 3 gives 0.8906 < 0.95
    assert (ten.low, ten.high) == (2.0, 9.0) and ten.level == pytest.approx(1 - 22 / 1024)
    assert median_ci([7.0]).fmt() == "7.0 (one seed: no interval)"
    assert math.isnan(median_ci([]).estimate)


def test_the_mean_interval_is_the_student_t_interval():
    ci = mean_ci([1.0, 2.0, 3.0, 4.0])
    half = sps.t.ppf(0.975, 3) * np.std([1, 2, 3, 4], ddof=1) / 2
    assert (ci.estimate, ci.low, ci.high) == (pytest.approx(2.5), pytest.approx(2.5 - half), pytest.approx(2.5 + half))


def test_coverage_simulation_the_stated_levels_are_met():
    """4,000 simulated studies of 10 normal seeds: the t-interval of the mean covers the true mean
    about 95% of the time, the order-statistic interval of the median at least its stated level;
    the old percentile bootstrap would claim 95% with 5 seeds and cover 93.75%."""
    rng = np.random.default_rng(0)
    trials, n = 4000, 10
    data = rng.normal(70.0, 2.0, size=(trials, n))
    t_cover = np.mean([mean_ci(x).low <= 70.0 <= mean_ci(x).high for x in data])
    med = [median_ci(x) for x in data]
    m_cover = np.mean([c.low <= 70.0 <= c.high for c in med])
    assert abs(t_cover - 0.95) < 0.015
    assert m_cover >= med[0].level - 0.015 and med[0].level >= 0.95
    five = rng.normal(0.0, 1.0, size=(trials, 5))
    cover5 = np.mean([median_ci(x).low <= 0.0 <= median_ci(x).high for x in five])
    assert abs(cover5 - 0.9375) < 0.015  # exactly what the interval says, not 95%


def test_the_signed_rank_distribution_and_hodges_lehmann_interval():
    cdf = signed_rank_cdf(3)  # T+ over {1,2,3}: sums 0,1,2,3,3,4,5,6 -> P(T <= 0) = 1/8, P(T <= 3) = 5/8
    assert cdf[0] == pytest.approx(1 / 8) and cdf[3] == pytest.approx(5 / 8) and cdf[-1] == pytest.approx(1.0)
    hl = hodges_lehmann([1.0, 2.0, 3.0])
    assert hl.estimate == pytest.approx(2.0)  # Walsh averages 1, 1.5, 2, 2, 2.5, 3
    assert (hl.low, hl.high) == (1.0, 3.0) and hl.level == pytest.approx(0.75)
    shifted = hodges_lehmann(np.arange(1, 11) + 0.5, level=0.90)
    assert shifted.estimate == pytest.approx(6.0) and shifted.level >= 0.90
    rng = np.random.default_rng(1)
    cover = np.mean([(lambda c: c.low <= 0.3 <= c.high)(hodges_lehmann(rng.standard_t(3, 8) + 0.3, 0.90))
                     for _ in range(2000)])
    assert cover >= hodges_lehmann(np.zeros(8) + np.arange(8), 0.90).level - 0.02


def test_paired_differences_over_shared_seeds():
    a = {1: 80.0, 2: 82.0, 3: 84.0, 4: 83.0}
    b = {1: 79.0, 2: 81.0, 3: 83.0, 5: 10.0}
    p = paired(a, b)
    assert p.n == 3 and p.diffs == (1.0, 1.0, 1.0)
    assert (p.mean.estimate, p.mean.low, p.mean.high) == (1.0, 1.0, 1.0)  # no spread: a zero-width interval
    assert p.hodges_lehmann.estimate == 1.0


@pytest.mark.parametrize("diffs, test, margin, status", [
    ([0.1, -0.2, 0.3, 0.0, 0.2, -0.1, 0.1, 0.2], "noninferior", 1.0, SUPPORTED),
    ([-2.1, -2.4, -1.9, -2.2, -2.0, -2.3, -2.5, -1.8], "noninferior", 1.0, REFUTED),
    ([-1.5, 0.5, -2.0, 1.0, -0.5, 0.0, -1.0, 0.8], "noninferior", 1.0, UNDECIDED),
    ([1.2, 1.5, 0.9, 1.1, 1.4, 1.3], "superior", 1.0, SUPPORTED),
    ([0.05, -0.05, 0.02, -0.03, 0.01, 0.0, 0.04, -0.02], "superior", 1.0, REFUTED),  # a tie within the margin
    ([0.1, -0.1, 0.2, -0.2, 0.0, 0.1, -0.1, 0.05], "equivalent", 1.0, SUPPORTED),
    ([3.0, 3.2, 2.8, 3.1, 2.9, 3.3], "equivalent", 1.0, REFUTED),
    ([1.0, 2.0], "superior", 1.0, UNDECIDED),  # too few pairs
])
def test_decisions_against_the_margin(diffs, test, margin, status):
    comparison = paired(dict(enumerate(diffs)), {i: 0.0 for i in range(len(diffs))})
    assert decide(test, comparison, margin)[0] == status


def test_a_decision_one_collapsed_seed_drives_is_undecided():
    """Six seeds 1.2 points worse, four 6 points better: the mean (+1.7) puts the t-bound above
    -1, but most seeds lose by more than the margin, which the signed-rank interval shows (its lower
    end is -1.2): the two disagree, so the claim is undecided, with the reason."""
    diffs = [-1.2, -1.21, -1.19, -1.22, -1.18, -1.2, 6.0, 6.1, 5.9, 6.05]
    assert paired(dict(enumerate(diffs)), dict.fromkeys(range(10), 0.0)).lower_95 > -1.0
    status, why = decide("noninferior", paired(dict(enumerate(diffs)), dict.fromkeys(range(10), 0.0)), 1.0)
    assert status == UNDECIDED and "not robust" in why


def test_the_validity_gate_and_holm():
    assert beats_constant([60.0, 62.0, 61.0, 59.0, 63.0], constant=50.9, by=5.0)
    assert not beats_constant([51.0, 50.9, 62.0, 50.9, 50.9], constant=50.9, by=5.0)  # 1 of 5 learned
    assert NOT_EVALUABLE == "not evaluable"
    # Holm at 0.05 over 3: the smallest p is compared with 0.05/3, the next with 0.05/2, then 0.05.
    assert holm([0.01, 0.04, 0.03]) == [True, False, False]
    assert holm([0.001, 0.02, 0.04]) == [True, True, True]
    assert holm([0.031] * 4) == [False] * 4  # a 5-seed sign test's smallest p never survives Holm over 4


def test_two_way_bootstrap_widens_the_interval_by_the_dev_sample():
    """Two arms that differ on a known 10% of 400 dev examples: the seed-only interval of a
    deterministic difference has zero width; over dev examples it spans about +-2 SE, SE = sqrt(q/n)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=400)
    a = {s: y.copy() for s in range(5)}           # always right
    wrong = y.copy()
    wrong[:40] = 1 - wrong[:40]                   # wrong on the first 10%
    b = {s: wrong for s in range(5)}
    ci = two_way_bootstrap(a, b, y, accuracy, resamples=1000)
    assert ci.estimate == pytest.approx(10.0)
    se = 100 * math.sqrt(0.1 * 0.9 / 400)
    assert ci.low == pytest.approx(10.0 - 1.96 * se, abs=0.8) and ci.high == pytest.approx(10.0 + 1.96 * se, abs=0.8)


def test_a_difference_of_differences_is_bootstrapped_over_the_dev_rows_all_four_arms_share():
    """dev_contrast scores every arm on the same resampled dev rows. Known answer: on 400 rows the big
    model's LoRA is wrong on rows 0-19 and its FT on none; the small model's LoRA on rows 0-59 and its
    FT on rows 0-19. Change of gap = (95 - 100) - (85 - 95) = +5 points. Per row the contrast
    (big LoRA - big FT - small LoRA + small FT, 1 = right) is +1 on rows 20-59 (only the small LoRA is
    wrong), -1 on rows 0-19 (big LoRA, small LoRA and small FT wrong) and 0 elsewhere: its variance is
    0.15 - 0.05^2, so the dev-alone SE is sqrt(0.1475 / 400), about 1.9 points."""
    from analysis.stats import dev_contrast, dev_sampled

    y = np.random.default_rng(5).integers(0, 2, size=400)

    def wrong_on(k):
        p = y.copy()
        p[:k] = 1 - p[:k]
        return {s: p for s in range(1, 6)}

    terms = [(1.0, wrong_on(20)), (-1.0, wrong_on(0)), (-1.0, wrong_on(60)), (1.0, wrong_on(20))]
    sampled = dev_contrast(terms, y, "accuracy", resamples=2000)
    assert sampled.two_way.estimate == pytest.approx(5.0) and sampled.two_way.n == 5
    assert sampled.dev_half_width == pytest.approx(1.645 * 100 * math.sqrt((0.15 - 0.05 ** 2) / 400), abs=0.3)
    assert sampled.two_way.low < 5.0 < sampled.two_way.high
    # only the seeds every arm has count; two terms are dev_sampled exactly (the same random draws)
    short = [(w, {s: p[s] for s in list(p)[:3]}) if i == 2 else (w, p) for i, (w, p) in enumerate(terms)]
    assert dev_contrast(short, y, "accuracy").two_way.n == 3
    a, b = wrong_on(10), wrong_on(30)
    assert dev_contrast([(1.0, a), (-1.0, b)], y, "accuracy") == dev_sampled(a, b, y, "accuracy")
    # an arm set against itself is no difference, at any dev sample
    same = dev_contrast([(1.0, a), (-1.0, a)], y, "accuracy")
    assert (same.two_way.low, same.two_way.high, same.dev_half_width) == (0.0, 0.0, 0.0)


def test_batched_metrics_equal_the_run_metrics_and_the_dev_alone_sets_a_resolution():
    from analysis.stats import BATCHED_METRICS, dev_sampled, refutation_pvalue
    from lora_repro.metrics import METRICS

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, size=300)
    p = np.where(rng.random(300) < 0.8, y, 1 - y)
    for name in ("accuracy", "mcc", "f1"):
        assert BATCHED_METRICS[name](p[None], y[None])[0] == pytest.approx(100 * METRICS[name](p, y))
    ys, ps = rng.normal(size=300), rng.normal(size=300)
    assert BATCHED_METRICS["pearson"](ps[None], ys[None])[0] == pytest.approx(100 * METRICS["pearson"](ps, ys))
    # two arms disagreeing on a known 10% of 400 rows in one direction: the dev-alone 90% half-width is
    # 1.645 SE with SE = sqrt(q (1 - q) / n) of the discordance, ~2.5 points
    y = rng.integers(0, 2, size=400)
    wrong = y.copy()
    wrong[:40] = 1 - wrong[:40]
    sampled = dev_sampled({s: y for s in range(5)}, {s: wrong for s in range(5)}, y, "accuracy", resamples=2000)
    assert sampled.two_way.estimate == pytest.approx(10.0)
    assert sampled.dev_half_width == pytest.approx(1.645 * 100 * math.sqrt(0.1 * 0.9 / 400), abs=0.3)
    # a refutation's p is below 5% exactly when decide() refutes on the t-bound
    worse = paired({s: 80.0 - 3.0 + 0.1 * s for s in range(5)}, {s: 80.0 for s in range(5)})
    assert decide("noninferior", worse, 1.0)[0] == REFUTED and refutation_pvalue("noninferior", worse, 1.0) < 0.05
    close = paired({s: 80.0 - 0.5 + 0.3 * (-1) ** s for s in range(5)}, {s: 80.0 for s in range(5)})
    assert refutation_pvalue("noninferior", close, 1.0) > 0.05
