"""Check a sweep's tables against its *planned* trials, before anything runs.

A table that names a param no trial has, a row or column whose filter matches no planned trial,
a stage without trials, a papers file or table that does not exist, or rows and columns the paper
lacks would otherwise only fail after hours of training, when ``segssl table`` is called. The
orchestrator calls :func:`check_tables` right after planning; metrics can only be checked once
runs exist.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from segssl.report.aggregate import _check_keys, _needs, expand_columns, expand_rows
from segssl.report.errors import ReportError
from segssl.report.papers import load_paper_table, resolve_paper_path
from segssl.report.runs import STAGE_TAG, filter_mask, sorted_values
from segssl.table_spec import TableSpec


def planned_frame(trials: Iterable[tuple[str, Mapping[str, Any]]]) -> pd.DataFrame:
    """A runs-like DataFrame (``params.*``, ``tags.segssl.stage``) of planned trials.

    Args:
        trials: ``(stage name, flattened params)`` per planned trial.
    """
    recs = []
    for stage, params in trials:
        rec: dict[str, Any] = {f"tags.{STAGE_TAG}": stage}
        rec.update({f"params.{k}": v for k, v in params.items()})
        recs.append(rec)
    return pd.DataFrame.from_records(recs)


def check_tables(
    tables: Sequence[TableSpec],
    trials: Iterable[tuple[str, Mapping[str, Any]]],
    *,
    name: str = "?",
    base_dirs: Sequence[Path] = (),
) -> None:
    """Raise :class:`ReportError` naming the first table problem visible from the plan.

    Checked: the table's stage has trials; every param key of ``filter``, rows, columns,
    ``seed_key`` and ``select.keys`` is a param of the stage's trials; the papers file and table
    exist and contain every row and column the planned trials will produce.
    """
    df = planned_frame(trials)
    if df.empty:
        return
    from segssl.report.tables import REPO_ROOT

    for spec in tables:
        base = df
        if spec.stage is not None:
            base = df[df[f"tags.{STAGE_TAG}"] == spec.stage]
            if base.empty:
                stages = ", ".join(sorted(df[f"tags.{STAGE_TAG}"].unique()))
                raise ReportError(
                    f"table {spec.name!r}: stage {spec.stage!r} has no planned trials "
                    f"(stages: {stages})"
                )
        base = base.dropna(axis=1, how="all")
        stage = f"stage {spec.stage!r}" if spec.stage is not None else f"sweep {name!r}"
        _check_keys(base, spec, name, runs=f"planned trial of {stage}")
        if spec.filter and not filter_mask(base, spec.filter).any():
            raise ReportError(
                f"table {spec.name!r}: filter {spec.filter} matches no planned trial"
                + _values_hint(base, spec.filter)
            )
        base = base[filter_mask(base, spec.filter)]
        rows, cols = expand_rows(spec, base), expand_columns(spec, base)
        _check_leaves(spec, base, rows, "row")
        _check_leaves(spec, base, cols, "column")
        _check_planned_seeds(spec, base)
        if spec.paper is None or base.empty:
            continue
        path = resolve_paper_path(spec.paper.file, [*base_dirs, REPO_ROOT])
        paper = load_paper_table(path, spec.paper.table)
        for leaf in rows:
            paper.find_row(leaf.ident)
        for leaf in cols:
            paper.find_col(leaf.ident)


def _values_hint(df: pd.DataFrame, flt: Mapping[str, Any]) -> str:
    """``; planned values of k: a, b`` for each filter key (what the filter could have said)."""
    parts = []
    for key in flt:
        col = f"params.{key}"
        if col in df:
            vals = sorted_values(df[col].dropna().tolist())
            shown = ", ".join(map(str, vals[:12])) + (", ..." if len(vals) > 12 else "")
            parts.append(f"{key}: {shown}")
    return f" (planned values of {'; '.join(parts)})" if parts else ""


def _check_leaves(spec: TableSpec, df: pd.DataFrame, leaves: Sequence[Any], what: str) -> None:
    """Every row or column filter matches at least one planned trial of the table.

    A typo in a filter value (``method.name: baselin``) would otherwise give an empty row after
    the whole sweep has run.

    Raises:
        ReportError: naming the table, the row or column, its filter and the planned values.
    """
    for leaf in leaves:
        if leaf.is_mean or not leaf.filter:
            continue
        if not filter_mask(df, leaf.filter).any():
            raise ReportError(
                f"table {spec.name!r}: {what} {leaf.display!r} (filter {leaf.filter}) matches no "
                f"planned trial" + _values_hint(df, leaf.filter)
            )


def _check_planned_seeds(spec: TableSpec, base: pd.DataFrame) -> None:
    """A statistic that needs more seeds per cell than the plan gives (variance over seeds)."""
    col = f"params.{spec.seed_key}"
    if spec.stats.variance != "seeds" or base.empty or col not in base:
        return
    seeds = sorted({str(s) for s in base[col].dropna()})
    for what, need in _needs(spec):
        if len(seeds) < need:
            raise ReportError(
                f"table {spec.name!r}: {what} needs at least {need} seeds per cell; the plan "
                f"gives {len(seeds)} (seeds {', '.join(seeds)}); add seeds or drop the statistic"
            )
