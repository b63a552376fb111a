"""Report layer: MLflow runs -> DataFrame -> paper-style tables (md/latex/csv/html), curves.

Public API::

    render_tables(spec, tracking_uri, fmt="md") -> str
    load_runs(tracking_uri, experiment) -> DataFrame
    aggregate(df, table_spec, ...) -> DataFrame
    render(agg, table_spec, fmt) -> str
    plot_curves(agg, tracking_uri, out_path) -> Path
    check_tables(tables, [(stage, params), ...])   # before a sweep runs
"""

from __future__ import annotations

from segssl.report.aggregate import aggregate
from segssl.report.curves import plot_curves
from segssl.report.errors import ReportError
from segssl.report.papers import load_paper_table
from segssl.report.preflight import check_tables
from segssl.report.render import FORMATS, render
from segssl.report.runs import load_history, load_runs
from segssl.report.tables import build_tables, render_sweep_tables, render_tables

__all__ = [
    "FORMATS",
    "ReportError",
    "aggregate",
    "build_tables",
    "check_tables",
    "load_history",
    "load_paper_table",
    "load_runs",
    "plot_curves",
    "render",
    "render_sweep_tables",
    "render_tables",
]
