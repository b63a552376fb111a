"""Runs -> one aggregated table: cells of mean +- std over seeds, marks, paired tests, paper.

:func:`aggregate` returns a *long* DataFrame, one record per (row, column) cell, with the
columns of :data:`CELL_COLUMNS`; the table's layout (row and column order, group headers), its
caption and display settings travel in ``DataFrame.attrs`` so that :mod:`segssl.report.render`
can draw it in any format.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from segssl.config import did_you_mean
from segssl.orchestrate.table_spec import AxisGroup, TableSpec
from segssl.report.errors import ReportError
from segssl.report.papers import (
    PaperTable,
    load_paper_table,
    norm_label,
    resolve_paper_path,
)
from segssl.report.runs import (
    STAGE_TAG,
    filter_mask,
    load_history,
    metric_keys,
    norm_value,
    param_keys,
    sorted_values,
)

CELL_COLUMNS = [
    "row_group",
    "row",
    "col_group",
    "col",
    "is_mean",
    "mean",
    "std",
    "n",
    "seeds",
    "values",
    "run_ids",
    "mark",
    "p_value",
    "paper_mean",
    "paper_std",
    "selected",
]

# params that differ between trials without being a configuration choice
SELECT_IGNORE = ("train.init_from",)


@dataclass(frozen=True)
class Leaf:
    """One row or column of the table: its group header, label and param filter."""

    group: str | None
    label: str
    filter: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    is_mean: bool = False
    metric: str | None = field(default=None, compare=False)

    @property
    def ident(self) -> tuple[str | None, str]:
        return (self.group, self.label)

    @property
    def display(self) -> str:
        return self.label if self.group is None else f"{self.group} / {self.label}"


# ---------------------------------------------------------------------------- key validation
def _axis_keys(axis: Any) -> list[tuple[str, str]]:
    """(where, key) of every param key an axis names."""
    out: list[tuple[str, str]] = []
    if isinstance(axis, dict):
        for lab, flt in axis.items():
            out += [(f"[{lab!r}]", k) for k in flt]
    elif axis and isinstance(axis[0], str):
        out += [(f"[{i}]", k) for i, k in enumerate(axis)]
    else:
        for i, g in enumerate(axis):
            out += [(f"[{i}].filter", k) for k in g.filter]
            if g.by is not None:
                out.append((f"[{i}].by", g.by))
            for lab, flt in (g.items or {}).items():
                out += [(f"[{i}].items[{lab!r}]", k) for k in flt]
    return out


def _check_keys(
    df: pd.DataFrame, spec: TableSpec, experiment: str, runs: str | None = None
) -> None:
    """Every param key the table names is a param of ``df``'s runs.

    Args:
        runs: what ``df`` holds, for the message (default: the experiment's FINISHED runs).
    """
    known = param_keys(df)
    named: list[tuple[str, str]] = [("filter", k) for k in spec.filter]
    named += [(f"rows{w}", k) for w, k in _axis_keys(spec.rows)]
    named += [(f"columns{w}", k) for w, k in _axis_keys(spec.columns)]
    named.append(("seed_key", spec.seed_key))
    if spec.select is not None and spec.select.keys:
        named += [("select.keys", k) for k in spec.select.keys]
    for where, key in named:
        if key not in known:
            raise ReportError(
                f"table {spec.name!r}: {where} names param {key!r}, which no "
                f"{runs or f'FINISHED run of experiment {experiment!r}'} has"
                f"{_key_hint(key, known)}; params look like 'method.name', "
                "'data.labeled_scans', 'seed'"
            )


def _key_hint(key: str, known: list[str]) -> str:
    """A suggestion for an unknown param key: a parent stage's prefixed key first
    (``method.k`` -> ``pretrain.method.k``), else the closest key."""
    prefixed = [k for k in known if k.endswith(f".{key}")]
    if prefixed:
        stage = prefixed[0][: -len(key) - 1]
        return f" (did you mean {prefixed[0]!r}, the value of parent stage {stage!r}?)"
    return did_you_mean(key, known)


# ----------------------------------------------------------------------------- axis expansion
def _value_label(spec: TableSpec, key: str, value: Any, own: dict[str, str] | None = None) -> str:
    k = norm_value(value)
    if own and k in own:
        return own[k]
    return spec.labels.get(key, {}).get(k, k)


def _value_order(
    spec: TableSpec, key: str, values: list[Any], own: dict[str, str] | None = None
) -> dict[str, int]:
    """Position of each value: the order of a labels map (the group's ``labels``, else the
    table's ``labels[key]``) first, then the remaining values sorted."""
    first = list(own or spec.labels.get(key, {}))
    order = {v: i for i, v in enumerate(first)}
    for v in sorted_values(values):
        order.setdefault(norm_value(v), len(order))
    return order


def _ordered(
    spec: TableSpec, key: str, values: list[Any], own: dict[str, str] | None = None
) -> list[Any]:
    """Distinct ``values`` in :func:`_value_order`."""
    order = _value_order(spec, key, values, own)
    uniq: dict[str, Any] = {}
    for v in sorted_values(values):
        uniq.setdefault(norm_value(v), v)
    return [uniq[k] for k in sorted(uniq, key=order.__getitem__)]


def _combos(df: pd.DataFrame, keys: list[str], spec: TableSpec) -> list[tuple[Any, ...]]:
    """Observed value combinations of ``keys``, ordered by ``labels`` then by value."""
    cols = [f"params.{k}" for k in keys]
    sub = df[cols].dropna()
    seen = {tuple(norm_value(v) for v in row) for row in sub.itertuples(index=False)}
    orders = [_value_order(spec, k, sub[c].tolist()) for k, c in zip(keys, cols, strict=True)]
    return sorted(seen, key=lambda t: tuple(o[v] for o, v in zip(orders, t, strict=True)))


def _key_label(spec: TableSpec, keys: list[str], combo: tuple[Any, ...]) -> str:
    if len(keys) == 1:
        return _value_label(spec, keys[0], combo[0])
    return ", ".join(
        f"{k.rsplit('.', 1)[-1]}={_value_label(spec, k, v)}"
        for k, v in zip(keys, combo, strict=True)
    )


def _group_leaves(g: AxisGroup, df: pd.DataFrame, spec: TableSpec) -> list[Leaf]:
    if g.by is not None:
        values = g.values
        if values is None:
            observed = df.loc[filter_mask(df, g.filter), f"params.{g.by}"].tolist()
            values = _ordered(spec, g.by, observed, g.labels)
        return [
            Leaf(g.label, _value_label(spec, g.by, v, g.labels), {**g.filter, g.by: v})
            for v in values
        ]
    if g.items is not None:
        return [Leaf(g.label, lab, {**g.filter, **flt}) for lab, flt in g.items.items()]
    if g.metrics is not None:
        return [Leaf(g.label, lab, dict(g.filter), metric=m) for lab, m in g.metrics.items()]
    return [Leaf(None, str(g.label), dict(g.filter))]


def expand_rows(spec: TableSpec, df: pd.DataFrame) -> list[Leaf]:
    """The table's rows, in order."""
    rows = spec.rows
    if isinstance(rows, dict):
        return [Leaf(None, lab, dict(flt)) for lab, flt in rows.items()]
    if isinstance(rows[0], str):
        keys = list(rows)
        return [
            Leaf(None, _key_label(spec, keys, c), dict(zip(keys, c, strict=True)))
            for c in _combos(df, keys, spec)
        ]
    out: list[Leaf] = []
    for g in rows:
        out += _group_leaves(g, df, spec)
    return out


def expand_columns(spec: TableSpec, df: pd.DataFrame) -> list[Leaf]:
    """The table's columns, in order, with a ``mean`` column after each group that asks."""
    cols = spec.columns
    if not cols:
        return [Leaf(None, spec.metric, {})]
    if isinstance(cols, dict):
        out = [Leaf(None, lab, dict(flt)) for lab, flt in cols.items()]
        return out + ([Leaf(None, "mean", {}, True)] if spec.group_mean else [])
    if isinstance(cols[0], str):
        keys = list(cols)
        head, leaf_key = keys[:-1], keys[-1]
        out = []
        for gc in _combos(df, head, spec) if head else [()]:
            gflt = dict(zip(head, gc, strict=True))
            glabel = _key_label(spec, head, gc) if head else None
            sub = df[filter_mask(df, gflt)]
            vals = _ordered(spec, leaf_key, sub[f"params.{leaf_key}"].dropna().tolist())
            out += [
                Leaf(glabel, _value_label(spec, leaf_key, v), {**gflt, leaf_key: v}) for v in vals
            ]
            if spec.group_mean:
                out.append(Leaf(glabel, "mean", gflt, True))
        return out
    out = []
    for g in cols:
        leaves = _group_leaves(g, df, spec)
        out += leaves
        if g.mean:
            out.append(Leaf(leaves[0].group, "mean", dict(g.filter), True))
    return out


# ---------------------------------------------------------------------------------- selection
def add_best_metric(
    df: pd.DataFrame, tracking_uri: str, metric: str = "val/dsc", mode: str = "max"
) -> pd.DataFrame:
    """Add column ``best.<metric>``: the max (or min) of each run's ``metric`` history."""
    col = f"best.{metric}"
    if col in df or df.empty:
        return df
    hist = load_history(tracking_uri, df["run_id"].tolist(), metric)
    agg = hist.groupby("run_id")["value"].agg(mode) if not hist.empty else pd.Series(dtype=float)
    out = df.copy()
    out[col] = out["run_id"].map(agg).astype(float)
    return out


def _config_keys(sub: pd.DataFrame, spec: TableSpec) -> list[str]:
    sel = spec.select
    assert sel is not None
    if sel.keys:
        return list(sel.keys)
    keys = []
    for k in param_keys(sub):
        if k == spec.seed_key or k in SELECT_IGNORE:
            continue
        col = sub[f"params.{k}"]
        # equal texts are equal values: normalise only columns whose raw texts differ
        if col.nunique(dropna=False) > 1 and col.map(norm_value).nunique() > 1:
            keys.append(k)
    return keys


def _select(sub: pd.DataFrame, spec: TableSpec, where: str) -> tuple[pd.DataFrame, str]:
    """Keep the configuration of ``sub`` with the best mean validation score."""
    sel = spec.select
    assert sel is not None
    if sub.empty:
        return sub, ""
    col = f"best.{sel.metric}"
    keys = _config_keys(sub, spec)
    if not keys:
        return sub, ""
    ident = sub[[f"params.{k}" for k in keys]].apply(
        lambda r: tuple(norm_value(v) for v in r), axis=1
    )
    scores = sub[col].groupby(ident).mean().dropna()
    if scores.empty:
        raise ReportError(
            f"table {spec.name!r}: {where}: no run has a {sel.metric!r} history to select on"
        )
    best = scores.idxmax() if sel.mode == "max" else scores.idxmin()
    label = ", ".join(f"{k}={v}" for k, v in zip(keys, best, strict=True))
    return sub[ident == best], label


# ------------------------------------------------------------------------------------ cells
def _seed_values(sub: pd.DataFrame, spec: TableSpec, where: str, metric: str) -> pd.DataFrame:
    """One run per seed: columns seed, value, run_id (indexed by the seed's canonical text)."""
    mcol = f"metrics.{metric}"
    scol = f"params.{spec.seed_key}"
    sub = sub[sub[mcol].notna()] if mcol in sub else sub.iloc[0:0]
    seeds = sub[scol].map(norm_value)
    dup = seeds[seeds.duplicated(keep=False)]
    if not dup.empty:
        clash = sub[seeds.isin(dup)]
        differing = [
            k
            for k in param_keys(clash)
            if k not in (*SELECT_IGNORE, spec.seed_key)
            and clash[f"params.{k}"].map(norm_value).nunique() > 1
        ]
        raise ReportError(
            f"table {spec.name!r}: cell {where} has {len(clash)} runs for seed(s) "
            f"{sorted(set(dup))} that differ in {differing or 'no param'}; add these keys to the "
            "rows, columns or filter, or use 'select: best_val' to pick one configuration"
        )
    out = pd.DataFrame(
        {
            "seed": seeds.values,
            "value": sub[mcol].astype(float).values * spec.scale,
            "run_id": sub["run_id"].values,
        }
    )
    return out.set_index("seed", drop=False)


def _summary(values: pd.Series, ddof: int) -> tuple[float, float, int]:
    v = values.dropna().astype(float)
    n = int(v.size)
    mean = float(v.mean()) if n else math.nan
    std = float(v.std(ddof=ddof)) if n > ddof else math.nan
    return mean, std, n


def _ranks(means: dict[Any, float], digits: int, mode: str) -> dict[Any, str]:
    shown = {k: round(v, digits) for k, v in means.items() if not math.isnan(v)}
    levels = sorted(set(shown.values()), reverse=(mode == "max"))
    marks: dict[Any, str] = {}
    if len(levels) == 1 and len(shown) > 1:
        return marks  # every row ties: nothing stands out
    for k, v in shown.items():
        if v == levels[0]:
            marks[k] = "best"
        elif len(shown) > 2 and len(levels) > 1 and v == levels[1]:
            marks[k] = "second"  # of two rows, the other one is simply not the best
    return marks


def _paired_p(x: np.ndarray, y: np.ndarray, test: str, alternative: str) -> float:
    from scipy import stats

    if x.size < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if test == "ttest_rel":
                p = stats.ttest_rel(x, y, alternative=alternative).pvalue
            else:
                p = stats.wilcoxon(x, y, alternative=alternative).pvalue
        except ValueError:
            return math.nan
    return float(p)


def _epoch_rule(runs: pd.DataFrame) -> str:
    """The sentence saying at which epoch the runs' test metrics were taken (``train.save_best``:
    the best validation epoch when true, the default; else the last epoch)."""
    col = "params.train.save_best"
    flags = set(runs[col].dropna().map(norm_value)) if col in runs else set()
    best = (
        "Each run's test metric is taken at its best validation epoch (val/dsc), as in the papers."
    )
    if flags <= {"true"}:
        return best
    if flags == {"false"}:
        return "Each run's test metric is taken at its last epoch (train.save_best=false)."
    return (
        "Runs with train.save_best=true are tested at their best validation epoch (val/dsc), "
        "runs with train.save_best=false at their last epoch."
    )


def _caption(
    spec: TableSpec,
    ns: list[int],
    paper: PaperTable | None,
    epoch_rule: str = "",
    ranked: int = 3,
) -> str:
    parts = []
    if spec.title:
        parts.append(spec.title.rstrip(".") + ".")
    scale = f" x {spec.scale:g}" if spec.scale != 1 else ""
    stage = f" of stage '{spec.stage}'" if spec.stage else ""
    n_txt = "n = " + (str(ns[0]) if len(set(ns)) == 1 else f"{min(ns)}-{max(ns)}") if ns else ""
    parts.append(
        f"{spec.metric}{scale}{stage}: mean ± std over seeds (std with ddof={spec.ddof}), "
        f"{n_txt} seeds per cell (shown in parentheses)."
    )
    parts.append(epoch_rule or _epoch_rule(pd.DataFrame()))
    if spec.select is not None:
        scope = "cell" if spec.select.scope == "cell" else "row (over all its columns)"
        keys = ", ".join(spec.select.keys) if spec.select.keys else "every varying param"
        parts.append(
            f"Model selection: per {scope}, among configurations differing in {keys}, the one "
            f"with the best mean over seeds of {spec.select.metric} "
            f"({spec.select.mode} over epochs) is reported."
        )
    has_mean = spec.group_mean or (
        isinstance(spec.columns, list)
        and any(isinstance(g, AxisGroup) and g.mean for g in spec.columns)
    )
    if has_mean:
        parts.append("'mean' columns average a run group's columns per seed, then over seeds.")
    if spec.bold != "none":
        excl = f" (not ranked: {', '.join(spec.rank_exclude)})" if spec.rank_exclude else ""
        second = ", underlined: second best" if ranked > 2 else ""
        parts.append(f"Per column, bold: best ({spec.bold}){second}{excl}.")
    if spec.paired_test is not None:
        pt = spec.paired_test
        parts.append(
            f"p: paired {pt.test} ({pt.alternative}) against '{pt.reference}' over seeds matched "
            f"by seed; * marks p < {pt.alpha:g}."
        )
    if paper is not None:
        assert spec.paper is not None
        parts.append(f"Paper: published numbers from {spec.paper.file}:{spec.paper.table}.")
    return " ".join(parts)


def aggregate(
    df: pd.DataFrame,
    spec: TableSpec,
    *,
    experiment: str = "",
    tracking_uri: str | None = None,
    base_dirs: list[Path] | None = None,
) -> pd.DataFrame:
    """Aggregate the runs of ``df`` (from :func:`~segssl.report.runs.load_runs`) into a table.

    Args:
        df: the sweep's FINISHED child runs.
        spec: the table spec.
        experiment: the experiment name, for messages.
        tracking_uri: needed only with ``select`` when ``df`` has no ``best.<metric>`` column
            (the histories are then read from MLflow).
        base_dirs: folders where a relative ``paper.file`` is looked for (after the working
            directory).

    Returns:
        Long DataFrame with :data:`CELL_COLUMNS`; ``attrs`` hold ``rows``, ``columns`` (lists
        of :class:`Leaf`), ``caption``, ``spec`` and ``row_header``.

    Raises:
        ReportError: a key that is no param, a metric no run has, a missing stage, a paper
            file/table/row/column that does not exist, several runs for one seed in a cell.
    """
    exp = experiment or "?"
    if df.empty:
        raise ReportError(f"table {spec.name!r}: experiment {exp!r} has no FINISHED child runs")
    base = df
    if spec.stage is not None:
        col = f"tags.{STAGE_TAG}"
        stages = sorted(df[col].dropna().unique()) if col in df else []
        base = df[df[col] == spec.stage] if col in df else df.iloc[0:0]
        if base.empty:
            raise ReportError(
                f"table {spec.name!r}: stage {spec.stage!r} has no FINISHED runs in experiment "
                f"{exp!r} (stages with runs: {', '.join(stages) or 'none'})"
            )
    _check_keys(base, spec, exp)
    rows = expand_rows(spec, base)
    cols = expand_columns(spec, base)
    uses_default = any(not r.metric for r in rows) and any(
        not c.metric for c in cols if not c.is_mean
    )
    missing = f"metrics.{spec.metric}" not in base or base[f"metrics.{spec.metric}"].isna().all()
    if uses_default and missing:
        known = metric_keys(base)
        raise ReportError(
            f"table {spec.name!r}: metric {spec.metric!r} was logged by no FINISHED run"
            f"{' of stage ' + repr(spec.stage) if spec.stage else ''}"
            f"{did_you_mean(spec.metric, known)}"
            f" (metrics: {', '.join(known)})"
        )
    base = base[filter_mask(base, spec.filter)]
    if base.empty:
        raise ReportError(f"table {spec.name!r}: no run matches filter {spec.filter}")
    if spec.select is not None and f"best.{spec.select.metric}" not in base:
        if tracking_uri is None:
            raise ReportError(
                f"table {spec.name!r}: select needs the {spec.select.metric!r} histories; "
                "pass tracking_uri"
            )
        base = add_best_metric(base, tracking_uri, spec.select.metric, spec.select.mode)

    rows = expand_rows(spec, base)  # again: values observed under the table's filter
    cols = expand_columns(spec, base)
    for leaf in [*rows, *cols]:
        col = f"metrics.{leaf.metric}"
        if leaf.metric and (col not in base or base[col].isna().all()):
            known = metric_keys(base)
            raise ReportError(
                f"table {spec.name!r}: {leaf.display!r} asks for metric {leaf.metric!r}, which "
                f"no FINISHED run logged{did_you_mean(leaf.metric, known)} "
                f"(metrics: {', '.join(known)})"
            )
    if not rows:
        raise ReportError(f"table {spec.name!r}: the rows select no runs")
    paper = None
    if spec.paper is not None:
        path = resolve_paper_path(spec.paper.file, base_dirs or [])
        paper = load_paper_table(path, spec.paper.table)
        for r in rows:  # fail early, naming the first row/column the paper lacks
            paper.find_row(r.ident)
        for c in cols:
            paper.find_col(c.ident)

    row_sel: dict[tuple[str | None, str], tuple[pd.DataFrame, str]] = {}
    if spec.select is not None and spec.select.scope == "row":
        for r in rows:
            row_sel[r.ident] = _select(base[filter_mask(base, r.filter)], spec, r.display)

    cells: dict[tuple[Any, Any], dict[str, Any]] = {}
    per_seed: dict[tuple[Any, Any], pd.Series] = {}
    for r, c in product(rows, [c for c in cols if not c.is_mean]):
        where = f"({r.display!r}, {c.display!r})"
        src, chosen = row_sel.get(r.ident, (base, ""))
        flt = {**c.filter, **r.filter}  # a row fixing a column key spans those columns
        sub = src[filter_mask(src, flt)]
        if spec.select is not None and spec.select.scope == "cell":
            sub, chosen = _select(sub, spec, where)
        if r.metric and c.metric and r.metric != c.metric:
            raise ReportError(
                f"table {spec.name!r}: cell {where}: the row asks for metric {r.metric!r} and "
                f"the column for {c.metric!r}; give 'metrics' on rows or on columns, not both"
            )
        sv = _seed_values(sub, spec, where, r.metric or c.metric or spec.metric)
        per_seed[(r.ident, c.ident)] = sv["value"]
        cells[(r.ident, c.ident)] = {"run_ids": sv["run_id"].tolist(), "selected": chosen}
    for r, c in product(rows, [c for c in cols if c.is_mean]):
        leaves = [x for x in cols if x.group == c.group and not x.is_mean]
        parts = [per_seed[(r.ident, x.ident)] for x in leaves]
        joined = pd.concat(parts, axis=1).dropna() if parts else pd.DataFrame()
        per_seed[(r.ident, c.ident)] = (
            joined.mean(axis=1) if not joined.empty else pd.Series(dtype=float)
        )
        runs = sum((cells[(r.ident, x.ident)]["run_ids"] for x in leaves), [])
        cells[(r.ident, c.ident)] = {"run_ids": runs, "selected": ""}

    ref = None
    if spec.paired_test is not None:
        want = norm_label(spec.paired_test.reference)
        hits = [r for r in rows if want in (norm_label(r.label), norm_label(r.display))]
        if len(hits) != 1:
            raise ReportError(
                f"table {spec.name!r}: paired_test.reference {spec.paired_test.reference!r} "
                f"is not one row label (rows: {', '.join(repr(r.display) for r in rows)})"
            )
        ref = hits[0]

    partial_means = _partial_means(paper, cols) if paper is not None else set()
    records = []
    ranked = [
        r for r in rows if r.label not in spec.rank_exclude and r.display not in spec.rank_exclude
    ]
    for c in cols:
        means = {}
        for r in rows:
            vals = per_seed[(r.ident, c.ident)]
            mean, std, n = _summary(vals, spec.ddof)
            cell = cells[(r.ident, c.ident)]
            cell.update(mean=mean, std=std, n=n)
            cell["seeds"] = ",".join(str(s) for s in vals.dropna().index)
            cell["values"] = [float(v) for v in vals.dropna().values]
            if r in ranked:
                means[r.ident] = mean
        marks = _ranks(means, spec.digits, spec.bold) if spec.bold != "none" else {}
        for r in rows:
            cell = cells[(r.ident, c.ident)]
            p = math.nan
            if ref is not None and r.ident != ref.ident:
                a = per_seed[(r.ident, c.ident)].dropna()
                b = per_seed[(ref.ident, c.ident)].dropna()
                common = [s for s in a.index if s in b.index]
                pt = spec.paired_test
                assert pt is not None
                p = _paired_p(
                    a.loc[common].to_numpy(float),
                    b.loc[common].to_numpy(float),
                    pt.test,
                    pt.alternative,
                )
            pm = ps = math.nan
            if paper is not None and c.ident not in partial_means:
                pc = paper.cell(r.ident, c.ident)
                if pc is not None:
                    pm, ps = pc[0], (pc[1] if pc[1] is not None else math.nan)
            records.append(
                {
                    "row_group": r.group,
                    "row": r.label,
                    "col_group": c.group,
                    "col": c.label,
                    "is_mean": c.is_mean,
                    "mean": cell["mean"],
                    "std": cell["std"],
                    "n": cell["n"],
                    "seeds": cell["seeds"],
                    "values": cell["values"],
                    "run_ids": cell["run_ids"],
                    "mark": marks.get(r.ident, ""),
                    "p_value": p,
                    "paper_mean": pm,
                    "paper_std": ps,
                    "selected": cell["selected"],
                }
            )
    out = pd.DataFrame.from_records(records, columns=CELL_COLUMNS)
    for key in ("row_group", "col_group"):  # keep None (pandas would turn it into NaN)
        out[key] = pd.Series([rec[key] for rec in records], dtype=object, index=out.index)
    ns = [int(n) for n in out["n"] if n > 0]
    used = [rid for ids in out["run_ids"] for rid in ids]
    caption = _caption(
        spec, ns, paper, _epoch_rule(base[base["run_id"].isin(used)]), ranked=len(ranked)
    )
    if partial_means:
        caption += (
            " The paper's 'mean' is left out where our group averages other columns than "
            "the paper's."
        )
    empty = _empty_note(out, rows, cols, base)
    out.attrs.update(
        rows=rows,
        columns=cols,
        spec=spec,
        paper=paper,
        caption=f"{caption} {empty}" if empty else caption,
        empty=empty,
        row_header=_row_header(spec),
    )
    return out


def _partial_means(paper: PaperTable, cols: list[Leaf]) -> set[tuple[str | None, str]]:
    """Our mean columns that average other columns than the paper's mean (no paper value)."""
    out = set()
    for c in cols:
        if not c.is_mean:
            continue
        ours = {paper.find_col(x.ident) for x in cols if x.group == c.group and not x.is_mean}
        pm = paper.find_col(c.ident)
        theirs = {x for x in paper.columns if x[0] == pm[0] and x != pm}
        if ours != theirs:
            out.add(c.ident)
    return out


def _same_group(got: Any, want: str | None) -> bool:
    if want is None:
        return got is None or (isinstance(got, float) and math.isnan(got))
    return got == want


def _empty_note(out: pd.DataFrame, rows: list[Leaf], cols: list[Leaf], base: pd.DataFrame) -> str:
    """A sentence naming rows/columns without any run, with the values the runs do have."""
    notes = []
    records = out.to_dict("records")
    for kind, leaves, key in (("row", rows, "row"), ("column", cols, "col")):
        for leaf in leaves:
            if leaf.is_mean:
                continue
            n = sum(
                rec["n"]
                for rec in records
                if rec[key] == leaf.label and _same_group(rec[f"{key}_group"], leaf.group)
            )
            if n > 0:
                continue
            seen = []
            for k, want in leaf.filter.items():
                if not filter_mask(base, {k: want}).any():
                    vals = sorted_values(base[f"params.{k}"].dropna().tolist())
                    seen.append(
                        f"{k}={want!r} matches no run (values: {', '.join(map(str, vals))})"
                    )
            why = "; ".join(seen) if seen else "no FINISHED run yet"
            notes.append(f"{kind} {leaf.display!r}: {why}")
    return ("Empty: " + " | ".join(notes) + ".") if notes else ""


def _row_header(spec: TableSpec) -> str:
    if spec.row_header:
        return spec.row_header
    if isinstance(spec.rows, list) and spec.rows and isinstance(spec.rows[0], str):
        return ", ".join(spec.rows)
    return ""
