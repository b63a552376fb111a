"""The sweep-level entry point: every table of a sweep, rendered, logged, with curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from segssl.report.aggregate import aggregate
from segssl.report.curves import plot_curves, plot_table_figure
from segssl.report.errors import ReportError
from segssl.report.render import FORMATS, csv_frame, render
from segssl.report.runs import load_runs, parent_runs
from segssl.report.stats import advice_assumption, advise_seeds, check_advisable
from segssl.table_spec import TableSpec

EXTENSIONS = {"md": "md", "latex": "tex", "csv": "csv", "html": "html"}
REPO_ROOT = Path(__file__).resolve().parents[2]


def build_tables(
    name: str,
    tables: Sequence[TableSpec],
    tracking_uri: str,
    *,
    base_dirs: Sequence[Path] = (),
) -> list[tuple[TableSpec, pd.DataFrame]]:
    """Aggregate every table of sweep ``name`` (runs are read from MLflow once).

    Raises:
        ReportError: the sweep declares no table, or a table cannot be built.
    """
    if not tables:
        raise ReportError(f"sweep {name!r} declares no tables (add a 'tables:' list)")
    df = load_runs(tracking_uri, name)
    dirs = [*base_dirs, REPO_ROOT]
    return [
        (t, aggregate(df, t, experiment=name, tracking_uri=tracking_uri, base_dirs=dirs))
        for t in tables
    ]


def render_sweep_tables(
    name: str,
    tables: Sequence[TableSpec],
    tracking_uri: str,
    fmt: str = "md",
    *,
    base_dirs: Sequence[Path] = (),
    log_artifact: bool = True,
    curves_dir: str | Path | None = None,
    advise: tuple[float, float, float] | None = None,
) -> str:
    """Render every table of a sweep in ``fmt``; optionally log it and draw learning curves.

    Args:
        name: the sweep's name (its MLflow experiment).
        tables: the sweep's table specs.
        tracking_uri: MLflow tracking URI.
        fmt: one of ``md``, ``latex``, ``csv``, ``html``.
        base_dirs: folders where relative paper files are looked for (the sweep's folder).
        log_artifact: log the rendered text as ``tables/<sweep>.<ext>`` of the sweep's latest
            parent run, when there is one.
        curves_dir: when given, write there for every table ``<table>_curves.png|pdf``
            (validation Dice per epoch) and ``<table>_figure.png|pdf`` (the table's rows over
            its columns, std bands, the paper's points).
        advise: ``(delta, alpha, power)``: append, per table, the seeds each cell needs to
            detect ``delta`` (:func:`segssl.report.stats.advise_seeds`).

    Returns:
        The rendered text (tables separated by a blank line; CSV: one header, all tables).
    """
    if fmt not in FORMATS:
        raise ReportError(f"unknown table format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if advise is not None:  # before any run is read
        for t in tables:
            try:
                check_advisable(t)
            except ValueError as exc:
                raise ReportError(f"table {t.name!r}: {exc}") from None
    built = build_tables(name, tables, tracking_uri, base_dirs=base_dirs)
    if fmt == "csv":
        text = pd.concat([csv_frame(agg, t) for t, agg in built]).to_csv(index=False)
    else:
        text = "\n".join(render(agg, t, fmt) for t, agg in built)
    if advise is not None:
        text += "\n" + "\n".join(advice_text(agg, *advise) for _, agg in built)
    if curves_dir is not None:
        for t, agg in built:
            plot_curves(agg, tracking_uri, Path(curves_dir) / f"{t.name}_curves.png")
            plot_table_figure(agg, Path(curves_dir) / f"{t.name}_figure.png")
    if log_artifact:
        log_table_artifact(tracking_uri, name, text, f"tables/{name}.{EXTENSIONS[fmt]}")
    return text


def advice_text(agg: pd.DataFrame, delta: float, alpha: float, power: float) -> str:
    """The seed-count advice of one table as Markdown (see :func:`advise_seeds`)."""
    spec = agg.attrs["spec"]
    try:
        rows = advise_seeds(agg, delta, alpha, power, spec.ddof)
    except ValueError as exc:
        raise ReportError(f"table {spec.name!r}: {exc}") from None
    unit = f" x {spec.scale:g}" if spec.scale != 1 else ""
    pt = spec.paired_test
    test = advice_assumption(
        pt.test if pt is not None else None,
        alpha,
        pt is None or pt.alternative == "two-sided",
    )
    correction = (
        f" Per comparison: the {pt.correction.capitalize()} correction across rows asks for more."
        if pt is not None and pt.correction != "none"
        else ""
    )
    lines = [
        f"**{spec.name}: seeds needed** to detect a difference of {delta:g} ({spec.metric}"
        f"{unit}) at alpha {alpha:g}, power {power:g}, assuming {test}.{correction}",
        "",
        "| row | column | seeds now | std | std of | seeds needed |",
        "|:---|:---|---:|---:|:---|---:|",
    ]
    for a in rows:
        needed = str(a["needed"]) if a["needed"] <= 10_000 else "> 10000"
        lines.append(
            f"| {a['row']} | {a['col']} | {a['n']} | {a['std']:.{spec.digits}f} | "
            f"{a['std_of']} | {needed} |"
        )
    return "\n".join(lines) + "\n"


def log_table_artifact(tracking_uri: str, name: str, text: str, artifact_file: str) -> None:
    """Log ``text`` as ``artifact_file`` of the sweep's latest parent run, if it has one.

    A run whose artifact location is a local folder (the default beside a SQLite store) gets the
    file written there directly, as MLflow's local artifact repository would; any other location
    goes through :meth:`mlflow.MlflowClient.log_text`.
    """
    parents = parent_runs(tracking_uri, name)
    if not parents:
        return
    run_id, _, artifact_uri = max(parents, key=lambda p: p[1] or 0)
    local = _local_dir(artifact_uri)
    if local is not None:
        target = local / artifact_file
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        return
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=tracking_uri).log_text(run_id, text, artifact_file)


def _local_dir(artifact_uri: str | None) -> Path | None:
    if not artifact_uri:
        return None
    if artifact_uri.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(artifact_uri).path))
    if "://" in artifact_uri or ":" in artifact_uri.split("/", 1)[0]:
        return None  # s3://, mlflow-artifacts:/, dbfs:/ ...
    return Path(artifact_uri)


def render_tables(spec: Any, tracking_uri: str, fmt: str = "md", **kwargs: Any) -> str:
    """Render the tables of a sweep spec (anything with ``name`` and ``tables``).

    Keyword arguments are those of :func:`render_sweep_tables`.
    """
    return render_sweep_tables(spec.name, list(spec.tables), tracking_uri, fmt, **kwargs)
