"""Curves of a table, mean with a std band over seeds.

* :func:`plot_curves` (``curve: epochs``): learning curves, validation Dice against epoch; one
  panel per column of the table (mean columns skipped), one line per row, drawn from the same runs
  the table's cells were computed from (after model selection).
* :func:`plot_columns` (``curve: columns``): the table's own cells as curves over its columns in
  their order, one line per row (e.g. Dice against the labeled ratio, GMI Fig. 4).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from segssl.report.errors import ReportError
from segssl.report.runs import load_history


def curve_frame(hist: pd.DataFrame, run_ids: list[str]) -> pd.DataFrame:
    """Per step: mean, std (ddof=1, NaN for one run) and n over the given runs' histories."""
    sub = hist[hist["run_id"].isin(run_ids)]
    if sub.empty:
        return pd.DataFrame(columns=["step", "mean", "std", "n"])
    g = sub.groupby("step")["value"]
    out = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1), "n": g.count()})
    return out.reset_index()


def plot_curves(
    agg: pd.DataFrame,
    tracking_uri: str,
    out_path: str | Path,
    metric: str = "val/dsc",
    scale: float | None = None,
) -> Path:
    """Draw the learning curves of an aggregated table into a PNG.

    Args:
        agg: the DataFrame returned by :func:`segssl.report.aggregate.aggregate`.
        tracking_uri: where the runs' metric histories are read.
        out_path: the PNG to write (parent folders are created).
        metric: the per-epoch metric (step = epoch).
        scale: multiply values (default: the table's ``scale``).

    Returns:
        The written path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    if "rows" not in agg.attrs:
        raise ReportError("plot_curves() expects the DataFrame returned by aggregate()")
    spec = agg.attrs["spec"]
    k = spec.scale if scale is None else scale
    rows, cols = agg.attrs["rows"], [c for c in agg.attrs["columns"] if not c.is_mean]
    cells = {
        ((r["row_group"], r["row"]), (r["col_group"], r["col"])): r["run_ids"]
        for r in agg.to_dict("records")
    }
    all_ids = sorted({i for ids in cells.values() for i in ids})
    hist = load_history(tracking_uri, all_ids, metric)
    if hist.empty:
        raise ReportError(f"table {spec.name!r}: no run of the table logged {metric!r} per epoch")
    ncol = min(4, len(cols))
    nrow = math.ceil(len(cols) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4 * ncol, 3 * nrow), squeeze=False, sharey=True)
    for ax, c in zip(axes.flat, cols, strict=False):
        for r in rows:
            cf = curve_frame(hist, cells[(r.ident, c.ident)])
            if cf.empty:
                continue
            x = cf["step"].to_numpy()
            m = cf["mean"].to_numpy(float) * k
            s = np.nan_to_num(cf["std"].to_numpy(float) * k)
            (line,) = ax.plot(x, m, label=f"{r.display} (n={int(cf['n'].max())})")
            ax.fill_between(x, m - s, m + s, alpha=0.2, color=line.get_color())
        ax.set_title(c.display, fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(cols) :]:
        ax.axis("off")
    axes[0][0].set_ylabel(f"{metric}" + (f" x {k:g}" if k != 1 else ""))
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8)
    fig.suptitle(f"{spec.title or spec.name}: {metric}, mean ± std over seeds", fontsize=10)
    fig.tight_layout(rect=(0, 0.08 + 0.02 * (len(labels) // 4), 1, 0.95))
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def column_series(agg: pd.DataFrame) -> dict[str, tuple[list, list, list]]:
    """Per row (display label): the cells' ``(means, stds, ns)`` in column order, in the
    table's scale (mean columns skipped; a missing cell is NaN, n 0)."""
    if "rows" not in agg.attrs:
        raise ReportError("column_series() expects the DataFrame returned by aggregate()")
    cols = [c for c in agg.attrs["columns"] if not c.is_mean]
    cells = {
        ((r["row_group"], r["row"]), (r["col_group"], r["col"])): r for r in agg.to_dict("records")
    }
    out = {}
    for r in agg.attrs["rows"]:
        got = [cells.get((r.ident, c.ident)) for c in cols]
        out[r.display] = (
            [g["mean"] if g and g["n"] else math.nan for g in got],
            [g["std"] if g and g["n"] else math.nan for g in got],
            [int(g["n"]) if g else 0 for g in got],
        )
    return out


def plot_columns(agg: pd.DataFrame, out_path: str | Path) -> Path:
    """Draw every row of an aggregated table as a curve over its columns (mean, std band).

    Args:
        agg: the DataFrame returned by :func:`segssl.report.aggregate.aggregate`.
        out_path: the PNG to write (parent folders are created).

    Returns:
        The written path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = column_series(agg)  # raises on a foreign frame
    spec = agg.attrs["spec"]
    k = spec.scale
    cols = [c for c in agg.attrs["columns"] if not c.is_mean]
    fig, ax = plt.subplots(figsize=(1.2 * len(cols) + 3, 3.5))
    x = np.arange(len(cols))
    for label, (means, stds, ns) in series.items():
        m = np.array(means, float)
        s = np.nan_to_num(np.array(stds, float))
        (line,) = ax.plot(x, m, marker="o", label=f"{label} (n<={max(ns, default=0)})")
        ax.fill_between(x, m - s, m + s, alpha=0.2, color=line.get_color())
    ax.set_xticks(x, [c.display for c in cols], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(spec.metric + (f" x {k:g}" if k != 1 else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{spec.title or spec.name}: mean ± std over seeds", fontsize=10)
    fig.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
