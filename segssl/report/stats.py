"""Statistics of a table beyond mean +- std: intervals, corrected tests, improvement, seed advice.

Each function works on plain arrays (one value per seed, or per test scan when the table's
variance unit is scans) and leans on scipy:

* :func:`bootstrap_ci`: ``scipy.stats.bootstrap`` of the mean; BCa from
  :data:`BCA_MIN_N` values on (``method="auto"``), the percentile method below (BCa's
  acceleration and bias estimates are unstable on a handful of seeds);
* :func:`adjust_pvalues`: Holm's step-down or Bonferroni correction across a column's rows;
* :func:`prob_improvement`: the fraction of paired seeds in which a row beats the reference
  (ties count half), with a Wilson score interval on that same fraction;
* :func:`seeds_needed`: the smallest n at which the table's paired test detects a difference
  ``delta`` given a standard deviation, at ``alpha`` and ``power``: for the paired t-test exact
  (noncentral t); for the Wilcoxon signed-rank test the t-test's n divided by the signed-rank
  test's asymptotic relative efficiency against it, 3/pi (0.955, normal differences), and never
  fewer than the pairs at which its exact p-value can reach ``alpha`` at all (6 for a two-sided
  test at 0.05: with 5 pairs the smallest p is 2/2^5 = 0.0625).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "BCA_MIN_N",
    "MIN_N",
    "adjust_pvalues",
    "advise_seeds",
    "bootstrap_ci",
    "bootstrap_method",
    "check_advisable",
    "prob_improvement",
    "seeds_needed",
    "advice_assumption",
    "ttest_power",
    "wilcoxon_min_n",
]

BCA_MIN_N = 10
# the fewest values each statistic needs in a cell (a clear error names the cell otherwise)
MIN_N = {"bootstrap": 3, "paired_test": 2, "prob_improvement": 1, "advise_seeds": 2}


def bootstrap_method(n: int, method: str = "auto") -> str:
    """The bootstrap method used for ``n`` values: ``method``, or BCa/percentile by ``n``."""
    if method != "auto":
        return method
    return "BCa" if n >= BCA_MIN_N else "percentile"


def bootstrap_ci(
    values: Sequence[float],
    level: float = 0.95,
    method: str = "auto",
    n_resamples: int = 9999,
    seed: int = 0,
) -> tuple[float, float]:
    """Bootstrap confidence interval of the mean of ``values`` (seeded, reproducible).

    Args:
        values: one value per seed (NaN-free).
        level: confidence level.
        method: ``auto`` (see :func:`bootstrap_method`), ``BCa``, ``percentile`` or ``basic``.
        n_resamples: bootstrap resamples.
        seed: seed of the resampling.

    Returns:
        ``(low, high)``; ``(mean, mean)`` when every value is equal.
    """
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if x.size < MIN_N["bootstrap"]:
        raise ValueError(f"bootstrap needs >= {MIN_N['bootstrap']} values, got {x.size}")
    if np.all(x == x[0]):
        return float(x[0]), float(x[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BCa's degenerate-distribution warning
        res = stats.bootstrap(
            (x,),
            np.mean,
            confidence_level=level,
            method=bootstrap_method(x.size, method),
            n_resamples=n_resamples,
            rng=np.random.default_rng(seed),
        )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def adjust_pvalues(pvalues: Sequence[float], method: str = "holm") -> list[float]:
    """Family-wise corrected p-values; NaN entries stay NaN and do not count in the family.

    Args:
        pvalues: raw p-values (one per compared row).
        method: ``holm`` (step-down), ``bonferroni`` or ``none``.
    """
    p = np.asarray(pvalues, dtype=float)
    out = p.copy()
    ok = ~np.isnan(p)
    m = int(ok.sum())
    if method == "none" or m == 0:
        return out.tolist()
    q = p[ok]
    if method == "bonferroni":
        adj = np.minimum(q * m, 1.0)
    elif method == "holm":
        order = np.argsort(q, kind="stable")
        steps = q[order] * (m - np.arange(m))
        adj_sorted = np.minimum(np.maximum.accumulate(steps), 1.0)
        adj = np.empty_like(q)
        adj[order] = adj_sorted
    else:
        raise ValueError(f"unknown correction {method!r}; expected holm, bonferroni or none")
    out[ok] = adj
    return out.tolist()


def prob_improvement(
    row: Sequence[float], ref: Sequence[float], higher_is_better: bool = True, level: float = 0.95
) -> tuple[float, float, float, int]:
    """Fraction of paired values in which ``row`` beats ``ref`` (ties count half).

    Returns:
        ``(fraction, low, high, n)``: the Wilson score interval at ``level`` of that same
        fraction (ties count half in both, :func:`wilson_interval`).
    """
    a, b = np.asarray(row, dtype=float), np.asarray(ref, dtype=float)
    n = a.size
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    diff = a - b if higher_is_better else b - a
    wins = float((diff > 0).sum()) + 0.5 * float((diff == 0).sum())
    low, high = wilson_interval(wins, n, level)
    return wins / n, low, high, n


def wilson_interval(successes: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n``.

    ``successes`` may be fractional (ties counted half): the score interval is a function of the
    observed proportion and ``n`` only, so the interval is centred on the same fraction the point
    estimate reports (``statsmodels``' ``proportion_confint(..., method="wilson")`` computes the
    same for a fractional count).
    """
    from scipy import stats

    if n <= 0:
        return math.nan, math.nan
    p = successes / n
    z = float(stats.norm.ppf(1 - (1 - level) / 2))
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


# asymptotic relative efficiency of the Wilcoxon signed-rank test against the t-test when the
# differences are normal (Hodges and Lehmann, 1956)
WILCOXON_ARE = 3 / math.pi


NC_MAX = 1e9


def ttest_power(effect: float, n: float, alpha: float = 0.05, two_sided: bool = True) -> float:
    """Power of a one-sample (paired) t-test with ``n`` values at effect size ``effect`` (mean
    difference / standard deviation), two-sided or one-sided in the effect's direction."""
    from scipy import stats

    if n < 2:
        return math.nan
    df = n - 1
    # scipy's noncentral t returns NaN far out (an effect of 1e14, a std of float noise); the
    # power is 1 to double precision long before NC_MAX, so clipping changes no finite answer
    nc = max(-NC_MAX, min(NC_MAX, effect * math.sqrt(n)))
    if not two_sided:
        return float(stats.nct.sf(stats.t.ppf(1 - alpha, df), df, nc))
    crit = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))


def wilcoxon_min_n(alpha: float = 0.05, two_sided: bool = True) -> int:
    """The fewest pairs at which an exact Wilcoxon signed-rank test can reach ``alpha``: its
    smallest p-value, every difference of one sign, is ``2 / 2**n`` (two-sided) or ``1 / 2**n``."""
    n = 1
    while (2.0 if two_sided else 1.0) / 2.0**n > alpha:
        n += 1
    return n


def _ttest_nobs(effect: float, alpha: float, power: float, two_sided: bool, n_max: int) -> float:
    """The (real) number of values at which the t-test reaches ``power`` (>= 2)."""
    from scipy.optimize import brentq

    def gap(n: float) -> float:
        return ttest_power(effect, n, alpha, two_sided) - power

    n = next((n for n in range(2, n_max + 1) if gap(float(n)) >= 0), None)
    if n is None:
        return math.inf
    if n == 2:
        return 2.0
    return float(brentq(gap, float(n - 1), float(n), xtol=1e-9))


def seeds_needed(
    delta: float,
    std: float,
    alpha: float = 0.05,
    power: float = 0.8,
    n_max: int = 10_000,
    test: str = "ttest_rel",
    two_sided: bool = True,
) -> int:
    """Smallest n whose paired ``test`` detects ``delta`` given ``std`` with ``power``.

    ``ttest_rel``: exact (noncentral t), n >= 2. ``wilcoxon``: the t-test's n divided by
    :data:`WILCOXON_ARE`, rounded up, and at least :func:`wilcoxon_min_n` (an approximation:
    the efficiency is asymptotic and assumes normal differences; for heavy-tailed differences
    the signed-rank test needs fewer).

    Returns:
        n, or ``n_max + 1`` when even ``n_max`` values do not reach the power.
    """
    if delta <= 0:
        raise ValueError(f"the difference to detect must be positive, got {delta}")
    if test not in ("ttest_rel", "wilcoxon"):
        raise ValueError(f"unknown paired test {test!r}; expected ttest_rel or wilcoxon")
    floor = 2 if test == "ttest_rel" else wilcoxon_min_n(alpha, two_sided)
    if not std > 0:
        return floor
    effect = delta / std
    if test == "wilcoxon":
        n_t = _ttest_nobs(effect, alpha, power, two_sided, n_max)
        n = max(floor, math.ceil(n_t / WILCOXON_ARE - 1e-9)) if math.isfinite(n_t) else n_max + 1
        return min(n, n_max + 1)
    for n in range(2, n_max + 1):
        if ttest_power(effect, n, alpha, two_sided) >= power:
            return n
    return n_max + 1


def advice_assumption(test: str | None, alpha: float, two_sided: bool = True) -> str:
    """The sentence saying which test the seed advice assumes (printed with the advice)."""
    sides = "two-sided" if two_sided else "one-sided"
    if test == "wilcoxon":
        return (
            f"the table's {sides} Wilcoxon signed-rank test, approximated as the paired t-test's "
            f"n divided by the signed-rank test's asymptotic relative efficiency 3/pi (0.955, "
            f"normal differences) and at least {wilcoxon_min_n(alpha, two_sided)} pairs (fewer "
            f"can never reach p < {alpha:g})"
        )
    if test == "ttest_rel":
        return f"the table's {sides} paired t-test (exact, noncentral t)"
    return f"a {sides} paired t-test (the table runs no paired test; exact, noncentral t)"


def check_advisable(spec: Any) -> None:
    """The seed advice needs the spread over seeds: a table whose variance unit is test scans
    (``stats.variance: scans``) would pass the spread of one run's scans off as that of seeds.

    Raises:
        ValueError: ``spec`` reports its std over test scans.
    """
    if spec.stats.variance != "seeds":
        raise ValueError(
            "--advise-seeds estimates seeds from the spread over seeds, but this table's "
            "stats.variance is 'scans' (its std is over the test scans of one run, which says "
            "nothing about how seeds vary); set stats.variance: seeds for the advice"
        )


def _pairs(rec: dict, ref: dict) -> tuple[np.ndarray, np.ndarray]:
    a = dict(zip(str(rec["seeds"]).split(","), rec["values"], strict=False))
    b = dict(zip(str(ref["seeds"]).split(","), ref["values"], strict=False))
    common = [s for s in a if s in b and s != ""]
    return np.array([a[s] for s in common]), np.array([b[s] for s in common])


def advise_seeds(
    agg: Any, delta: float, alpha: float = 0.05, power: float = 0.8, ddof: int = 1
) -> list[dict[str, Any]]:
    """Seeds per cell needed to detect ``delta`` (in the table's units, e.g. 2 Dice points).

    The standard deviation is that of the paired differences against the paired test's
    reference row where the table has one (the test the table runs), else the cell's own std
    over seeds (the spread a difference has to stand out from). The power is that of the
    table's paired test (:func:`seeds_needed`; a paired t-test when the table has none), per
    comparison: the Holm or Bonferroni correction across rows asks for more.

    Args:
        agg: a table from :func:`segssl.report.aggregate.aggregate`.
        delta: the difference to detect, > 0.
        alpha: significance level (of the table's paired test, two- or one-sided as it is).
        power: the wanted power.
        ddof: delta degrees of freedom of the std.

    Returns:
        One dict per cell: ``row``, ``col``, ``n`` (seeds it has), ``std``, ``std_of``,
        ``needed``.

    Raises:
        ValueError: ``delta`` <= 0, or a cell with fewer than 2 values (named, with its count).
    """
    if not delta > 0:
        raise ValueError(f"--advise-seeds: the difference must be positive, got {delta}")
    spec = agg.attrs["spec"]
    check_advisable(spec)
    pt = spec.paired_test
    recs = agg.to_dict("records")

    def col(rec: dict) -> str:
        return rec["col"] if rec["col_group"] is None else f"{rec['col_group']} / {rec['col']}"

    def name(rec: dict) -> str:
        row = rec["row"] if rec["row_group"] is None else f"{rec['row_group']} / {rec['row']}"
        return f"({row!r}, {col(rec)!r})"

    test = pt.test if pt is not None else "ttest_rel"
    two_sided = pt is None or pt.alternative == "two-sided"
    refs = {}
    if pt is not None:
        from segssl.report.papers import norm_label  # as the paired test matches its row

        want = norm_label(pt.reference)
        refs = {(r["col_group"], r["col"]): r for r in recs if norm_label(r["row"]) == want}
    out = []
    for rec in recs:
        ref = refs.get((rec["col_group"], rec["col"]))
        if ref is not None and ref is not rec:
            a, b = _pairs(rec, ref)
            values, std_of = a - b, f"paired differences to '{pt.reference}'"
        else:
            values, std_of = np.asarray(rec["values"], dtype=float), "the cell over seeds"
        if values.size == 0:
            continue  # an empty cell: named in the caption
        if values.size < MIN_N["advise_seeds"]:
            raise ValueError(
                f"--advise-seeds needs at least {MIN_N['advise_seeds']} seeds per cell to "
                f"estimate a std; cell {name(rec)} has {values.size}"
            )
        std = float(np.std(values, ddof=ddof))
        out.append(
            {
                "row": rec["row"],
                "col": col(rec),
                "n": int(values.size),
                "std": std,
                "std_of": std_of,
                "needed": seeds_needed(delta, std, alpha, power, test=test, two_sided=two_sided),
            }
        )
    return out
