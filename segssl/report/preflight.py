"""Check a sweep's tables against its *planned* trials, before anything runs.

A table that names a param no trial has, a stage without trials, a papers file or table that does
not exist, or rows and columns the paper lacks would otherwise only fail after hours of training,
when ``segssl table`` is called. The orchestrator calls :func:`check_tables` right after
planning; metrics can only be checked once runs exist.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from segssl.orchestrate.table_spec import TableSpec
from segssl.report.aggregate import _check_keys, expand_columns, expand_rows
from segssl.report.errors import ReportError
from segssl.report.papers import load_paper_table, resolve_paper_path
from segssl.report.runs import STAGE_TAG, filter_mask


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
        base = base[filter_mask(base, spec.filter)]
        if spec.paper is None or base.empty:
            continue
        path = resolve_paper_path(spec.paper.file, [*base_dirs, REPO_ROOT])
        paper = load_paper_table(path, spec.paper.table)
        for leaf in expand_rows(spec, base):
            paper.find_row(leaf.ident)
        for leaf in expand_columns(spec, base):
            paper.find_col(leaf.ident)
