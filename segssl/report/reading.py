"""A one-line, honest reading of a paired comparison in a table (the demo prints it).

It says, per column, how far a row is from the reference row on average over paired seeds, in
how many seeds it is ahead, the corrected p-value, and what the spread implies: how many seeds
would be needed to detect the observed difference. It never calls a difference a gain unless the
corrected test says so.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from segssl.report.stats import MIN_N, seeds_needed

__all__ = ["paired_reading"]


def _paired(agg: pd.DataFrame, row: str, ref: str, col: Any) -> tuple[np.ndarray, dict]:
    recs = {r["row"]: r for r in agg.to_dict("records") if (r["col_group"], r["col"]) == col}
    a, b = recs[row], recs[ref]
    va = dict(zip(str(a["seeds"]).split(","), a["values"], strict=False))
    vb = dict(zip(str(b["seeds"]).split(","), b["values"], strict=False))
    common = [s for s in va if s in vb]
    return np.array([va[s] - vb[s] for s in common]), a


_TEST_NAMES = {"ttest_rel": "paired t-test", "wilcoxon": "Wilcoxon signed-rank test"}


def paired_reading(agg: pd.DataFrame, row: str, ref: str, power: float = 0.8) -> str:
    """One sentence on ``row`` against ``ref`` over the table's (non-mean) columns.

    Args:
        agg: a table from :func:`segssl.report.aggregate.aggregate` with a paired test.
        row: the compared row's label.
        ref: the reference row's label.
        power: the power used for the seed estimate.
    """
    spec = agg.attrs["spec"]
    alpha = spec.paired_test.alpha if spec.paired_test is not None else 0.05
    test = spec.paired_test.test if spec.paired_test is not None else "ttest_rel"
    sign = -1.0 if spec.bold == "min" else 1.0
    # over test scans the spread is of scans, not of seeds: no seed estimate from it
    seeds = spec.stats.variance == "seeds"
    spread = "seed-to-seed" if seeds else "scan-to-scan"
    two_sided = spec.paired_test is None or spec.paired_test.alternative == "two-sided"
    parts, verdicts, needs, where = [], [], [], []
    cols = [(c.group, c.label) for c in agg.attrs["columns"] if not c.is_mean]
    for col in cols:
        diff, rec = _paired(agg, row, ref, col)
        if diff.size == 0:
            continue
        ahead = int((sign * diff > 0).sum())
        p = rec["p_value"]
        p_txt = "" if p is None or math.isnan(p) else f", p={p:.2g}"
        parts.append(f"{diff.mean():+.1f} at {col[1]} (ahead in {ahead} of {diff.size}{p_txt})")
        sig = p is not None and not math.isnan(p) and p < alpha
        better = sign * diff.mean() > 0
        verdicts.append(("gain" if better else "loss") if sig else "none")
        where.append(col[1])
        if seeds and diff.size >= MIN_N["advise_seeds"] and abs(diff.mean()) > 0:
            n = seeds_needed(
                abs(diff.mean()), diff.std(ddof=1), alpha, power, test=test, two_sided=two_sided
            )
            needs.append((col[1], n))
    if not parts:
        return f"Reading: no seed has both '{row}' and '{ref}' yet."
    unit = "seeds" if seeds else "the test scans of one run (not seeds)"
    text = f"Reading: '{row}' minus '{ref}', paired over {unit}: " + "; ".join(parts) + ". "
    gains = [c for c, v in zip(where, verdicts, strict=True) if v == "gain"]
    losses = [c for c, v in zip(where, verdicts, strict=True) if v == "loss"]
    if len(gains) == len(verdicts):
        text += "A gain in every column that survives the corrected test."
    elif len(losses) == len(verdicts):
        text += f"A loss in every column that survives the corrected test: '{row}' is worse."
    elif gains or losses:
        found = [
            f"a {kind} at {', '.join(map(str, cols))}"
            for kind, cols in (("gain", gains), ("loss", losses))
            if cols
        ]
        text += (
            f"Significant (p < {alpha:g}): {' and '.join(found)}; elsewhere the difference is "
            f"within the {spread} spread."
        )
    else:
        text += (
            f"No difference here is significant after correction: the {spread} spread is "
            "as large as the effect, so this table does not show a gain (nor its absence)."
        )
    if needs:
        col, n = max(needs, key=lambda x: x[1])
        n_txt = f"about {n}" if n <= 10_000 else "more than 10000"
        text += (
            f" Detecting the observed difference at {col} with power {power:g} would take "
            f"{n_txt} paired seeds ({_TEST_NAMES[test]}; segssl table --advise-seeds)."
        )
    return text
