"""Learning curves of a table: validation Dice against epoch, mean with a std band over seeds.

One panel per column of the table (mean columns skipped), one line per row, drawn from the
same runs the table's cells were computed from (after model selection).
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
    drawn = {
        (r.ident, c.ident)
        for r in rows
        for c in cols
        if not curve_frame(hist, cells[(r.ident, c.ident)]).empty
    }
    if not drawn:  # never write an empty figure that looks like a result
        raise ReportError(
            f"table {spec.name!r}: none of its cells' runs has a {metric!r} history to draw"
        )
    fig, axes = plt.subplots(nrow, ncol, figsize=(4 * ncol, 3 * nrow), squeeze=False, sharey=True)
    for ax, c in zip(axes.flat, cols, strict=False):
        for r in rows:
            if (r.ident, c.ident) not in drawn:
                continue
            cf = curve_frame(hist, cells[(r.ident, c.ident)])
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
