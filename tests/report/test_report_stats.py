"""The table statistics equal independent computations (statsmodels, scipy, numpy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from segssl.report.stats import (
    adjust_pvalues,
    advice_assumption,
    bootstrap_ci,
    bootstrap_method,
    prob_improvement,
    seeds_needed,
    ttest_power,
    wilcoxon_min_n,
)

statsmodels_multitest = pytest.importorskip("statsmodels.stats.multitest")
statsmodels_power = pytest.importorskip("statsmodels.stats.power")
statsmodels_proportion = pytest.importorskip("statsmodels.stats.proportion")


def _percentile_by_hand(x: np.ndarray, level: float, n_resamples: int, seed: int) -> tuple:
    """The percentile bootstrap written out: resample with the same generator, mean, quantiles."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_resamples, x.size))
    means = x[idx].mean(axis=1)
    a = (1 - level) / 2
    return np.percentile(means, 100 * a), np.percentile(means, 100 * (1 - a))


def test_percentile_bootstrap_equals_hand_written_resampling() -> None:
    x = np.array([61.2, 70.4, 55.9, 68.1, 64.0])
    lo, hi = bootstrap_ci(x, 0.95, "percentile", n_resamples=4000, seed=3)
    ref_lo, ref_hi = _percentile_by_hand(x, 0.95, 4000, 3)
    assert lo == pytest.approx(ref_lo, abs=0.35) and hi == pytest.approx(ref_hi, abs=0.35)
    assert lo < x.mean() < hi


def test_bca_is_chosen_from_ten_values_and_matches_scipy() -> None:
    assert bootstrap_method(3) == "percentile" and bootstrap_method(10) == "BCa"
    x = np.random.default_rng(0).normal(70, 5, size=12)
    lo, hi = bootstrap_ci(x, 0.9, n_resamples=2000, seed=1)
    ref = stats.bootstrap(
        (x,),
        np.mean,
        confidence_level=0.9,
        method="BCa",
        n_resamples=2000,
        rng=np.random.default_rng(1),
    ).confidence_interval
    assert (lo, hi) == pytest.approx((ref.low, ref.high))
    with pytest.raises(ValueError, match="bootstrap needs >= 3 values, got 2"):
        bootstrap_ci([1.0, 2.0])


@pytest.mark.parametrize("method", ["holm", "bonferroni"])
def test_corrections_equal_statsmodels(method: str) -> None:
    p = [0.01, 0.04, 0.03, 0.20, 0.005]
    ref = statsmodels_multitest.multipletests(p, method=method)[1]
    assert adjust_pvalues(p, method) == pytest.approx(list(ref))
    with_nan = adjust_pvalues([0.01, math.nan, 0.04], method)
    assert math.isnan(with_nan[1])
    ref2 = statsmodels_multitest.multipletests([0.01, 0.04], method=method)[1]
    assert [with_nan[0], with_nan[2]] == pytest.approx(list(ref2))


def test_probability_of_improvement_and_its_wilson_interval() -> None:
    row = np.array([70.0, 65.0, 80.0, 60.0, 72.0])
    ref = np.array([68.0, 66.0, 75.0, 60.0, 71.0])
    frac, lo, hi, n = prob_improvement(row, ref)
    assert n == 5 and frac == pytest.approx(3.5 / 5)  # 3 wins, 1 tie (half), 1 loss
    # the interval is of that same fraction: ties count half in both (3.5 of 5, not 3)
    ref_lo, ref_hi = statsmodels_proportion.proportion_confint(3.5, 5, method="wilson")
    assert (lo, hi) == pytest.approx((ref_lo, ref_hi))
    assert lo < frac < hi
    floor_lo, _ = statsmodels_proportion.proportion_confint(3, 5, method="wilson")
    assert lo > floor_lo + 0.05  # not the interval of the ties rounded down
    no_ties = prob_improvement(row[[0, 1, 2, 4]], ref[[0, 1, 2, 4]], level=0.9)
    ref90 = statsmodels_proportion.proportion_confint(3, 4, alpha=0.1, method="wilson")
    assert no_ties[1:3] == pytest.approx(ref90)
    all_win = prob_improvement(row + 100, ref)
    assert all_win[0] == 1.0 and all_win[2] == 1.0
    assert all_win[1] == pytest.approx(
        statsmodels_proportion.proportion_confint(5, 5, method="wilson")[0]
    )
    frac_min, *_ = prob_improvement(row, ref, higher_is_better=False)
    assert frac_min == pytest.approx(1.5 / 5)


def test_seed_advisor_equals_statsmodels_power_solution() -> None:
    # a cell with std 3 Dice points, a difference of 2 points, alpha 0.05, power 0.8
    effect = 2.0 / 3.0
    n_float = statsmodels_power.TTestPower().solve_power(
        effect_size=effect, alpha=0.05, power=0.8, alternative="two-sided"
    )
    assert seeds_needed(2.0, 3.0, 0.05, 0.8) == math.ceil(n_float)
    for n in (3, 8, 20):
        ref = statsmodels_power.TTestPower().power(effect_size=effect, nobs=n, alpha=0.05)
        assert ttest_power(effect, n, 0.05) == pytest.approx(ref, rel=1e-6)


def test_wilcoxon_advice_is_the_t_tests_n_over_the_efficiency_and_never_below_its_floor() -> None:
    """For a table whose paired test is Wilcoxon, the advice is not the t-test's: the t-test's n
    (statsmodels) divided by the signed-rank test's asymptotic relative efficiency 3/pi, and never
    fewer pairs than the exact test needs to reach alpha at all (scipy's exact p-value)."""
    # the floor: the smallest n whose exact two-sided p, every difference positive, is <= alpha
    for alpha, two_sided in ((0.05, True), (0.05, False), (0.01, True)):
        alt = "two-sided" if two_sided else "greater"
        floor = next(
            n
            for n in range(1, 30)
            if stats.wilcoxon(np.arange(1.0, n + 1), alternative=alt, method="exact").pvalue
            <= alpha
        )
        assert wilcoxon_min_n(alpha, two_sided) == floor
    assert wilcoxon_min_n(0.05) == 6  # 5 seeds can never give p < 0.05
    power = statsmodels_power.TTestPower()
    for delta, std in ((2.0, 3.0), (1.0, 4.0), (2.0, 1.0)):
        n_t = power.solve_power(effect_size=delta / std, alpha=0.05, power=0.8)
        want = max(6, math.ceil(n_t * math.pi / 3))
        got = seeds_needed(delta, std, 0.05, 0.8, test="wilcoxon")
        assert got == want, (delta, std)
        assert got >= seeds_needed(delta, std, 0.05, 0.8)  # never fewer than the t-test's
    assert seeds_needed(2.0, 1.0, test="wilcoxon") == 6  # the floor binds: the t-test needs 5
    assert seeds_needed(2.0, 1.0) == 5
    # a simulation of the signed-rank test at the advised n reaches about the asked power
    n = seeds_needed(2.0, 3.0, test="wilcoxon")
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(4000, n))
    sim = float((stats.wilcoxon(x, axis=1).pvalue < 0.05).mean())
    assert 0.77 < sim < 0.86, sim
    text = advice_assumption("wilcoxon", 0.05)
    assert "Wilcoxon signed-rank" in text and "3/pi" in text and "at least 6 pairs" in text
    assert "no paired test" in advice_assumption(None, 0.05)
    with pytest.raises(ValueError, match="unknown paired test 'sign'"):
        seeds_needed(2.0, 3.0, test="sign")
