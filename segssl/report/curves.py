"""Figures of a table, as PNG and PDF: learning curves (validation Dice against epoch) and the
table itself as curves over its columns (labeled-ratio curves), mean with a std band over seeds,
the paper's points overlaid where published.

Learning curves: one panel per column of the table (mean columns skipped), one line per row,
drawn from the same runs the table's cells were computed from (after model selection).
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
        out_path: the PNG to write (parent folders are created); a PDF is written beside it.
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
    fig.savefig(out.with_suffix(".pdf"))
    plt.close(fig)
    return out


def plot_table_figure(agg: pd.DataFrame, out_path: str | Path) -> list[Path]:
    """The table as a figure: per column group a panel, the group's columns on the x axis (the
    labeled-scan counts of a labeled-ratio curve), one line per row with its mean and a std band
    over seeds (the table's variance unit), the paper's published points overlaid (with their
    std as error bars where published). Written as PNG and PDF.

    Args:
        agg: the DataFrame returned by :func:`segssl.report.aggregate.aggregate`.
        out_path: the PNG path; the PDF goes beside it.

    Returns:
        The written paths (PNG, PDF).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "rows" not in agg.attrs:
        raise ReportError("plot_table_figure() expects the DataFrame returned by aggregate()")
    spec = agg.attrs["spec"]
    rows = agg.attrs["rows"]
    cols = [c for c in agg.attrs["columns"] if not c.is_mean]
    groups: dict[str | None, list] = {}
    for c in cols:
        groups.setdefault(c.group, []).append(c)
    recs = {
        ((r["row_group"], r["row"]), (r["col_group"], r["col"])): r for r in agg.to_dict("records")
    }
    fig, axes = plt.subplots(
        1, len(groups), figsize=(4 * len(groups), 3.4), squeeze=False, sharey=True
    )
    unit = "seeds" if spec.stats.variance == "seeds" else "test scans"
    for ax, (group, leaves) in zip(axes[0], groups.items(), strict=True):
        x = np.arange(len(leaves))
        for r in rows:
            cells = [recs[(r.ident, c.ident)] for c in leaves]
            m = np.array([c["mean"] if c["n"] else np.nan for c in cells], dtype=float)
            s = np.nan_to_num(np.array([c["std"] for c in cells], dtype=float))
            if np.isnan(m).all():
                continue
            (line,) = ax.plot(x, m, marker="o", label=r.display)
            ax.fill_between(x, m - s, m + s, alpha=0.2, color=line.get_color())
            pm = np.array([c["paper_mean"] for c in cells], dtype=float)
            if not np.isnan(pm).all():
                ps = np.array([c["paper_std"] for c in cells], dtype=float)
                ax.errorbar(
                    x + 0.05,
                    pm,
                    yerr=None if np.isnan(ps).all() else np.nan_to_num(ps),
                    fmt="x",
                    color=line.get_color(),
                    alpha=0.8,
                    capsize=2,
                )
        ax.set_xticks(x, [c.label for c in leaves], fontsize=8)
        ax.set_title(group or spec.name, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(spec.metric + (f" x {spec.scale:g}" if spec.scale != 1 else ""))
    handles, labels = axes[0][0].get_legend_handles_labels()
    has_paper = spec.paper is not None
    note = "; x: the paper's numbers" if has_paper else ""
    fig.suptitle(
        f"{spec.title or spec.name}\nlines: ours, mean ± std over {unit}{note}", fontsize=9
    )
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8)
    fig.tight_layout(rect=(0, 0.1 + 0.03 * (len(labels) // 4), 1, 0.9))
    png = Path(out_path)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    pdf = png.with_suffix(".pdf")
    fig.savefig(pdf)
    plt.close(fig)
    return [png, pdf]
