"""Statistics of a table beyond mean +- std: intervals, corrected tests, improvement, seed advice.

Each function works on plain arrays (one value per seed, or per test scan when the table's
variance unit is scans) and leans on scipy:

* :func:`bootstrap_ci`: ``scipy.stats.bootstrap`` of the mean; BCa from
  :data:`BCA_MIN_N` values on (``method="auto"``), the percentile method below (BCa's
  acceleration and bias estimates are unstable on a handful of seeds);
* :func:`adjust_pvalues`: Holm's step-down or Bonferroni correction across a column's rows;
* :func:`prob_improvement`: the fraction of paired seeds in which a row beats the reference, with
  a Wilson score interval (``scipy.stats.binomtest(...).proportion_ci``);
* :func:`seeds_needed`: the smallest n at which a paired (one-sample) t-test detects a difference
  ``delta`` given a standard deviation, at ``alpha`` and ``power`` (noncentral t).
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
    "prob_improvement",
    "seeds_needed",
    "ttest_power",
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
        ``(fraction, low, high, n)``: the Wilson score interval at ``level`` is computed on the
        wins (ties split, rounded down).
    """
    from scipy import stats

    a, b = np.asarray(row, dtype=float), np.asarray(ref, dtype=float)
    n = a.size
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    diff = a - b if higher_is_better else b - a
    wins = float((diff > 0).sum()) + 0.5 * float((diff == 0).sum())
    ci = stats.binomtest(int(wins), n).proportion_ci(confidence_level=level, method="wilson")
    return wins / n, float(ci.low), float(ci.high), n


def ttest_power(effect: float, n: int, alpha: float = 0.05) -> float:
    """Power of a two-sided one-sample (paired) t-test with ``n`` values at effect size
    ``effect`` (mean difference / standard deviation)."""
    from scipy import stats

    if n < 2:
        return math.nan
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = effect * math.sqrt(n)
    return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))


def seeds_needed(
    delta: float, std: float, alpha: float = 0.05, power: float = 0.8, n_max: int = 10_000
) -> int:
    """Smallest n >= 2 whose paired t-test detects ``delta`` given ``std`` with ``power``.

    Returns:
        n, or ``n_max + 1`` when even ``n_max`` values do not reach the power.
    """
    if delta <= 0:
        raise ValueError(f"the difference to detect must be positive, got {delta}")
    if not std > 0:
        return 2
    effect = delta / std
    for n in range(2, n_max + 1):
        if ttest_power(effect, n, alpha) >= power:
            return n
    return n_max + 1


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
    over seeds (the spread a difference has to stand out from).

    Args:
        agg: a table from :func:`segssl.report.aggregate.aggregate`.
        delta: the difference to detect, > 0.
        alpha: two-sided significance level.
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
    pt = spec.paired_test
    recs = agg.to_dict("records")

    def col(rec: dict) -> str:
        return rec["col"] if rec["col_group"] is None else f"{rec['col_group']} / {rec['col']}"

    def name(rec: dict) -> str:
        row = rec["row"] if rec["row_group"] is None else f"{rec['row_group']} / {rec['row']}"
        return f"({row!r}, {col(rec)!r})"

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
                "needed": seeds_needed(delta, std, alpha, power),
            }
        )
    return out
