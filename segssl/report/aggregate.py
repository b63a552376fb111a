"""Runs -> one aggregated table: cells of mean +- std over seeds, marks, paired tests, paper.

:func:`aggregate` returns a *long* DataFrame, one record per (row, column) cell, with the
columns of :data:`CELL_COLUMNS`; the table's layout (row and column order, group headers), its
caption and display settings travel in ``DataFrame.attrs`` so that :mod:`segssl.report.render`
can draw it in any format.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from segssl.config import did_you_mean
from segssl.metrics import HD95_VARIANTS, MetricDefs, describe
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
from segssl.report.stats import (
    BCA_MIN_N,
    MIN_N,
    adjust_pvalues,
    bootstrap_ci,
    bootstrap_method,
    prob_improvement,
)
from segssl.table_spec import AxisGroup, TableSpec

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
    "p_raw",
    "ci_low",
    "ci_high",
    "p_improve",
    "p_improve_low",
    "p_improve_high",
    "cost_s",
    "paper_mean",
    "paper_std",
    "selected",
    "selected_config",
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
    paper_only: bool = field(default=False, compare=False)  # the paper's numbers only

    @property
    def ident(self) -> tuple[str | None, str]:
        return (self.group, self.label)

    @property
    def display(self) -> str:
        return self.label if self.group is None else f"{self.group} / {self.label}"

    @property
    def shown(self) -> str:
        """The label as printed: ``(paper only)`` appended for a row without runs of ours."""
        return f"{self.label} (paper only)" if self.paper_only else self.label


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


Choice = dict[str, Any]  # {"values": {key: chosen value}, "varied": [keys with candidates]}
NO_CHOICE: Choice = {"values": {}, "varied": []}


def _select(sub: pd.DataFrame, spec: TableSpec, where: str) -> tuple[pd.DataFrame, Choice]:
    """Keep the configuration of ``sub`` with the best mean validation score; the choice names
    every selection key's chosen value and the keys the candidates differed in (none: there was
    nothing to choose)."""
    sel = spec.select
    assert sel is not None
    if sub.empty:
        return sub, NO_CHOICE
    col = f"best.{sel.metric}"
    keys = _config_keys(sub, spec)
    if not keys:
        return sub, NO_CHOICE
    ident = sub[[f"params.{k}" for k in keys]].apply(
        lambda r: tuple(norm_value(v) for v in r), axis=1
    )
    scores = sub[col].groupby(ident).mean().dropna()
    if scores.empty:
        raise ReportError(
            f"table {spec.name!r}: {where}: no run has a {sel.metric!r} history to select on"
        )
    best = scores.idxmax() if sel.mode == "max" else scores.idxmin()
    # name only the keys this cell's candidates differ in: a row without the key (a supervised
    # row has no method.w_ent) or with one configuration has nothing to report ('w_ent=nan')
    varied = [k for i, k in enumerate(keys) if len({t[i] for t in scores.index}) > 1]
    return sub[ident == best], {"values": dict(zip(keys, best, strict=True)), "varied": varied}


def choice_label(choice: Choice, keys: list[str] | None = None) -> str:
    """``key=value, ...`` of ``keys`` (default: the keys the choice was made among)."""
    shown = choice["varied"] if keys is None else keys
    return ", ".join(f"{k}={choice['values'][k]}" for k in shown)


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


def _unit_text(spec: TableSpec, ns: list[int]) -> str:
    n_txt = "n = " + (str(ns[0]) if len(set(ns)) == 1 else f"{min(ns)}-{max(ns)}") if ns else ""
    if spec.stats.variance == "scans":
        seed = spec.stats.variance_seed
        which = f"seed {seed}" if seed is not None else "the smallest seed"
        return (
            f"mean ± std over the test scans of one run per cell ({which}; std with "
            f"ddof={spec.ddof}), {n_txt} scans per cell (shown in parentheses); this is the "
            "spread of scans, not of training runs, and is never mixed with seeds"
        )
    return (
        f"mean ± std over seeds (std with ddof={spec.ddof}), "
        f"{n_txt} seeds per cell (shown in parentheses)"
    )


def _stats_text(spec: TableSpec, ns: list[int]) -> list[str]:
    parts = []
    st = spec.stats
    unit = "seeds" if st.variance == "seeds" else "test scans"
    if st.interval == "bootstrap":
        methods = sorted({bootstrap_method(n, st.method) for n in ns if n >= MIN_N["bootstrap"]})
        auto = f"; BCa from {BCA_MIN_N} values on" if st.method == "auto" else ""
        parts.append(
            f"[low, high]: {st.level:.0%} bootstrap interval of the mean over {unit} "
            f"(scipy.stats.bootstrap, {' / '.join(methods) or st.method}, {st.resamples} "
            f"resamples{auto})."
        )
    if spec.paired_test is not None:
        pt = spec.paired_test
        corr = {
            "holm": "Holm-corrected across the rows of each column",
            "bonferroni": "Bonferroni-corrected across the rows of each column",
            "none": "not corrected for multiple comparisons",
        }[pt.correction]
        parts.append(
            f"p: paired {pt.test} ({pt.alternative}) against '{pt.reference}' over {unit} "
            f"matched by {'seed' if st.variance == 'seeds' else 'scan'}, {corr}; * marks "
            f"p < {pt.alpha:g}."
        )
        if st.prob_improvement:
            parts.append(
                f"P(>ref): fraction of paired {unit} in which the row beats '{pt.reference}' "
                f"(ties count half), with a {st.level:.0%} Wilson interval."
            )
    if st.cost:
        parts.append("cost: mean seconds per run (cost/gpu_s; cost/wall_s where runs used no GPU).")
    return parts


# the metric definitions (``metrics.*`` run params) each test metric depends on
_DEFINITION_KEYS = {
    "dsc": ("both_empty",),
    "hd95": ("hd95", "both_empty", "one_empty"),
    "asd": ("both_empty", "one_empty"),
    "nsd": ("nsd_tolerance", "both_empty"),
}
_DEFAULT_DEFINITIONS = {
    "hd95": "pooled",  # runs from before metrics.hd95 existed
    "nsd_tolerance": "1",
    "both_empty": "perfect",
    "one_empty": "exclude",
}


def _table_metrics(spec: TableSpec, rows: list[Leaf], cols: list[Leaf]) -> list[str]:
    """Every metric the table's cells show: the rows' or columns' own (``metrics:``) and the
    table's ``metric`` where a cell has none (IDEAL Table 1: ASD, HD and DSC rows)."""
    own = [leaf.metric for leaf in (*rows, *cols) if leaf.metric]
    default = any(not r.metric for r in rows) and any(not c.metric for c in cols if not c.is_mean)
    return list(dict.fromkeys(([spec.metric] if default or not own else []) + own))


def _metric_name(metric: str) -> str:
    """``test/hd95/LV`` -> ``hd95``."""
    return metric.split("/")[1] if "/" in metric else metric


def _definitions(runs: pd.DataFrame, spec: TableSpec, metrics: list[str] | None = None) -> str:
    """The metric definitions the runs used (their ``metrics.*`` params) for every metric the
    table shows (``metrics``, default the table's ``metric``), as a sentence; a warning naming
    the values when the runs differ in a definition one of these metrics depends on."""
    names = list(dict.fromkeys(_metric_name(m) for m in (metrics or [spec.metric])))

    def seen(key: str) -> list[str]:
        col = f"params.metrics.{key}"
        return sorted(set(runs[col].dropna().map(norm_value))) if col in runs else []

    used = {k: seen(k) or [_DEFAULT_DEFINITIONS[k]] for k in _DEFAULT_DEFINITIONS}
    keys = [k for n in names for k in _DEFINITION_KEYS.get(n, tuple(_DEFAULT_DEFINITIONS))]
    mixed = [f"metrics.{k}: {', '.join(used[k])}" for k in dict.fromkeys(keys) if len(used[k]) > 1]
    if mixed:
        return (
            f"Warning: the runs mix metric definitions ({'; '.join(mixed)}): their "
            f"{', '.join(names)} values are not comparable."
        )
    if names == ["dsc"]:
        empty = (
            "an empty prediction of an empty structure scores 1"
            if used["both_empty"][0] == "perfect"
            else "scans where prediction and structure are both empty are left out"
        )
        return f"Dice: 3D per scan (all slices), averaged over scans then classes; {empty}."
    defs = MetricDefs(
        hd95=used["hd95"][0] if used["hd95"][0] in HD95_VARIANTS else "pooled",
        nsd_tolerance=float(used["nsd_tolerance"][0]),
        both_empty=used["both_empty"][0],
        one_empty=used["one_empty"][0],
    )
    return describe(defs)


def _left_out_note(runs: pd.DataFrame, spec: TableSpec, metrics: list[str] | None = None) -> str:
    """How many scans a distance metric the table shows (HD95, ASD) left out of its runs' means
    because exactly one mask was empty (``metrics.one_empty: exclude``; the runs'
    ``<metric>_undefined`` counts), or ``""`` when none was."""
    notes = [_left_out_one(runs, m) for m in (metrics or [spec.metric])]
    return " ".join(n for n in notes if n)


def _left_out_one(runs: pd.DataFrame, metric: str) -> str:
    head, _, rest = metric.partition("/")
    name, _, cls = rest.partition("/")
    if name not in ("hd95", "asd"):
        return ""
    prefix = f"metrics.{head}/{name}_undefined/"
    cols = [c for c in runs if c.startswith(prefix) and (not cls or c[len(prefix) :] == cls)]
    if not cols:
        return ""
    counts = runs[cols].astype(float).fillna(0.0)
    total = int(counts.to_numpy().sum())
    if total == 0:
        return ""
    per_class = ", ".join(
        f"{c[len(prefix) :]}: {int(counts[c].sum())}" for c in cols if counts[c].sum() > 0
    )
    hit = int((counts.sum(axis=1) > 0).sum())
    return (
        f"{name.upper()} left out {total} scan(s) with exactly one empty mask ({per_class}), "
        f"in {hit} of the {len(runs)} runs: their means are over the remaining scans."
    )


def _caption(
    spec: TableSpec,
    ns: list[int],
    paper: PaperTable | None,
    epoch_rule: str = "",
    definitions: str = "",
    ranked: int = 3,
) -> str:
    parts = []
    if spec.title:
        parts.append(spec.title.rstrip(".") + ".")
    scale = f" x {spec.scale:g}" if spec.scale != 1 else ""
    stage = f" of stage '{spec.stage}'" if spec.stage else ""
    parts.append(f"{spec.metric}{scale}{stage}: {_unit_text(spec, ns)}.")
    if definitions:
        parts.append(definitions)
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
    parts += _stats_text(spec, ns)
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

    The steps: the stage's runs (:func:`_stage_runs`), key and metric checks, filter and the
    selection metric (:func:`_table_runs`), the paper's table (:func:`_paper_for`), one value
    per seed (or per test scan) per cell (:func:`_collect_cells`), the per-cell statistics
    (:func:`_column_records`), the layout and caption (:func:`_attach_layout`).

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
            file/table/row/column that does not exist, several runs for one seed in a cell, a
            statistic that needs more seeds than a cell has.
    """
    exp = experiment or "?"
    base = _stage_runs(df, spec, exp)
    base, rows, cols = _table_runs(base, spec, exp, tracking_uri)
    paper = _paper_for(spec, rows, cols, base_dirs)
    per_seed, cells = _collect_cells(base, spec, rows, cols)
    ref = _reference_row(spec, rows)
    _check_counts(spec, rows, cols, per_seed, ref)
    partial_means = _partial_means(paper, cols) if paper is not None else set()
    records = []
    for c in cols:
        records += _column_records(spec, rows, c, per_seed, cells, ref, paper, partial_means)
    out = pd.DataFrame.from_records(records, columns=CELL_COLUMNS)
    for key in ("row_group", "col_group"):  # keep None (pandas would turn it into NaN)
        out[key] = pd.Series([rec[key] for rec in records], dtype=object, index=out.index)
    _attach_layout(out, spec, rows, cols, paper, base, partial_means)
    return out


def _stage_runs(df: pd.DataFrame, spec: TableSpec, exp: str) -> pd.DataFrame:
    """The FINISHED runs of the table's stage (all runs when it names none)."""
    if df.empty:
        raise ReportError(f"table {spec.name!r}: experiment {exp!r} has no FINISHED child runs")
    if spec.stage is None:
        return df
    col = f"tags.{STAGE_TAG}"
    stages = sorted(df[col].dropna().unique()) if col in df else []
    base = df[df[col] == spec.stage] if col in df else df.iloc[0:0]
    if base.empty:
        raise ReportError(
            f"table {spec.name!r}: stage {spec.stage!r} has no FINISHED runs in experiment "
            f"{exp!r} (stages with runs: {', '.join(stages) or 'none'})"
        )
    return base


def _check_default_metric(base: pd.DataFrame, spec: TableSpec, rows: list, cols: list) -> None:
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


def _check_leaf_metrics(base: pd.DataFrame, spec: TableSpec, leaves: list[Leaf]) -> None:
    for leaf in leaves:
        col = f"metrics.{leaf.metric}"
        if leaf.metric and (col not in base or base[col].isna().all()):
            known = metric_keys(base)
            raise ReportError(
                f"table {spec.name!r}: {leaf.display!r} asks for metric {leaf.metric!r}, which "
                f"no FINISHED run logged{did_you_mean(leaf.metric, known)} "
                f"(metrics: {', '.join(known)})"
            )


def _table_runs(
    base: pd.DataFrame, spec: TableSpec, exp: str, tracking_uri: str | None
) -> tuple[pd.DataFrame, list[Leaf], list[Leaf]]:
    """Check keys and metrics, apply the filter, add the selection metric; expand the axes."""
    _check_keys(base, spec, exp)
    _check_default_metric(base, spec, expand_rows(spec, base), expand_columns(spec, base))
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
    rows = _mark_paper_only(spec, expand_rows(spec, base))  # values under the table's filter
    cols = expand_columns(spec, base)
    _check_leaf_metrics(base, spec, [*rows, *cols])
    if not rows:
        raise ReportError(f"table {spec.name!r}: the rows select no runs")
    return base, rows, cols


def _paper_for(
    spec: TableSpec, rows: list[Leaf], cols: list[Leaf], base_dirs: list[Path] | None
) -> PaperTable | None:
    """The paper's table, checked to hold every row and column (fails on the first missing)."""
    if spec.paper is None:
        return None
    path = resolve_paper_path(spec.paper.file, base_dirs or [])
    paper = load_paper_table(path, spec.paper.table)
    for r in rows:
        paper.find_row(r.ident)
    for c in cols:
        paper.find_col(c.ident)
    return paper


CellKey = tuple[tuple[str | None, str], tuple[str | None, str]]


def _collect_cells(
    base: pd.DataFrame, spec: TableSpec, rows: list[Leaf], cols: list[Leaf]
) -> tuple[dict[CellKey, pd.Series], dict[CellKey, dict[str, Any]]]:
    """Per cell: the values (one per seed, or per test scan) and the runs behind them."""
    row_sel: dict[tuple[str | None, str], tuple[pd.DataFrame, str]] = {}
    if spec.select is not None and spec.select.scope == "row":
        for r in rows:
            row_sel[r.ident] = _select(base[filter_mask(base, r.filter)], spec, r.display)
    cells: dict[CellKey, dict[str, Any]] = {}
    per_seed: dict[CellKey, pd.Series] = {}
    for r, c in product(rows, [c for c in cols if not c.is_mean]):
        where = f"({r.display!r}, {c.display!r})"
        src, chosen = row_sel.get(r.ident, (base, NO_CHOICE))
        flt = {**c.filter, **r.filter}  # a row fixing a column key spans those columns
        sub = src.iloc[0:0] if r.paper_only else src[filter_mask(src, flt)]
        if spec.select is not None and spec.select.scope == "cell":
            sub, chosen = _select(sub, spec, where)
        if r.metric and c.metric and r.metric != c.metric:
            raise ReportError(
                f"table {spec.name!r}: cell {where}: the row asks for metric {r.metric!r} and "
                f"the column for {c.metric!r}; give 'metrics' on rows or on columns, not both"
            )
        metric = r.metric or c.metric or spec.metric
        sv = _seed_values(sub, spec, where, metric)
        if spec.stats.variance == "scans":
            sv = _scan_values(sub, sv, spec, where, metric)
        per_seed[(r.ident, c.ident)] = sv["value"]
        cells[(r.ident, c.ident)] = {
            "run_ids": sv["run_id"].tolist(),
            "selected": choice_label(chosen),
            "selected_config": chosen,
            "cost_s": _cost(sub[sub["run_id"].isin(sv["run_id"])]),
        }
    for r, c in product(rows, [c for c in cols if c.is_mean]):
        leaves = [x for x in cols if x.group == c.group and not x.is_mean]
        parts = [per_seed[(r.ident, x.ident)] for x in leaves]
        joined = pd.concat(parts, axis=1).dropna() if parts else pd.DataFrame()
        per_seed[(r.ident, c.ident)] = (
            joined.mean(axis=1) if not joined.empty else pd.Series(dtype=float)
        )
        runs = sum((cells[(r.ident, x.ident)]["run_ids"] for x in leaves), [])
        cells[(r.ident, c.ident)] = {
            "run_ids": runs,
            "selected": "",
            "selected_config": NO_CHOICE,
            "cost_s": math.nan,
        }
    return per_seed, cells


def _cost(runs: pd.DataFrame) -> float:
    """Mean cost per run in seconds: ``cost/gpu_s``, else ``cost/wall_s`` (CPU runs)."""
    for key in ("metrics.cost/gpu_s", "metrics.cost/wall_s"):
        if key in runs:
            v = runs[key].dropna().astype(float)
            if not v.empty and (v > 0).any():
                return float(v.mean())
    return math.nan


def scan_metric(metric: str) -> str:
    """The per-scan metric prefix of a test metric (``test/dsc/LV`` -> ``test/scan/dsc/LV``)."""
    head, _, rest = metric.partition("/")
    return f"{head}/scan/{rest}"


def _scan_values(
    sub: pd.DataFrame, sv: pd.DataFrame, spec: TableSpec, where: str, metric: str
) -> pd.DataFrame:
    """Variance over test scans: the per-scan values of one run (seed) of the cell."""
    if sv.empty:
        return sv
    want = spec.stats.variance_seed
    seed = norm_value(want) if want is not None else sorted_values(sv["seed"].tolist())[0]
    if seed not in sv.index:
        raise ReportError(
            f"table {spec.name!r}: cell {where} has no run with seed {want} "
            f"(stats.variance_seed); seeds: {', '.join(sv.index)}"
        )
    run_id = sv.loc[seed, "run_id"]
    run = sub[sub["run_id"] == run_id].iloc[0]
    prefix = f"metrics.{scan_metric(metric)}/"
    cols = [k for k in run.index if k.startswith(prefix) and k[len(prefix) :].isdigit()]
    vals = {int(k[len(prefix) :]): run[k] for k in cols if not pd.isna(run[k])}
    if not vals:
        raise ReportError(
            f"table {spec.name!r}: stats.variance 'scans' needs the per-scan values of "
            f"{metric!r} ({scan_metric(metric)}/<i>, logged with metrics.per_scan for test/dsc "
            f"and test/dsc/<class>); cell {where} (seed {seed}) has none"
        )
    idx = [str(i) for i in sorted(vals)]
    return pd.DataFrame(
        {
            "seed": idx,
            "value": [float(vals[int(i)]) * spec.scale for i in idx],
            "run_id": [run_id] * len(idx),
        },
        index=idx,
    )


def _reference_row(spec: TableSpec, rows: list[Leaf]) -> Leaf | None:
    if spec.paired_test is None:
        return None
    want = norm_label(spec.paired_test.reference)
    hits = [r for r in rows if want in (norm_label(r.label), norm_label(r.display))]
    if len(hits) != 1:
        raise ReportError(
            f"table {spec.name!r}: paired_test.reference {spec.paired_test.reference!r} "
            f"is not one row label (rows: {', '.join(repr(r.display) for r in rows)})"
        )
    return hits[0]


def _needs(spec: TableSpec) -> list[tuple[str, int]]:
    """(statistic, fewest values per cell) of every statistic the table asks for."""
    out = []
    if spec.stats.interval == "bootstrap":
        out.append(("stats.interval: bootstrap", MIN_N["bootstrap"]))
    if spec.paired_test is not None:
        out.append(("paired_test", MIN_N["paired_test"]))
    return out


def _check_counts(
    spec: TableSpec,
    rows: list[Leaf],
    cols: list[Leaf],
    per_seed: dict[CellKey, pd.Series],
    ref: Leaf | None,
) -> None:
    """A statistic that needs more values than a (non-empty) cell has: name the cell."""
    unit = "seeds" if spec.stats.variance == "seeds" else "test scans"
    for what, need in _needs(spec):
        for r, c in product(rows, cols):
            if what == "paired_test" and ref is not None and r.ident == ref.ident:
                continue
            n = int(per_seed[(r.ident, c.ident)].dropna().size)
            if 0 < n < need:
                raise ReportError(
                    f"table {spec.name!r}: {what} needs at least {need} {unit} per cell; cell "
                    f"({r.display!r}, {c.display!r}) has {n}; run more seeds or drop the "
                    "statistic"
                )
            if what == "paired_test" and ref is not None and n:
                _check_pairs(spec, r, ref, c, per_seed, need, unit)


def _check_pairs(
    spec: TableSpec,
    r: Leaf,
    ref: Leaf,
    c: Leaf,
    per_seed: dict[CellKey, pd.Series],
    need: int,
    unit: str,
) -> None:
    """A row's cell and the reference's share enough seeds (scans) for the paired test (a
    row run over other seeds than the reference has no paired value: its p would be blank)."""
    if per_seed[(ref.ident, c.ident)].dropna().empty:
        return  # no reference in this column: nothing to pair with, shown empty
    a, _ = _paired(per_seed, r, ref, c)
    if a.size < need:
        raise ReportError(
            f"table {spec.name!r}: paired_test needs at least {need} {unit} shared with the "
            f"reference row {ref.display!r} per cell; cell ({r.display!r}, {c.display!r}) "
            f"shares {a.size} (its {unit}: {_index_text(per_seed[(r.ident, c.ident)])}; the "
            f"reference's: {_index_text(per_seed[(ref.ident, c.ident)])}); run the same seeds "
            "for both rows or drop the statistic"
        )


def _index_text(values: pd.Series) -> str:
    return ", ".join(str(s) for s in values.dropna().index) or "none"


def _paired(
    per_seed: dict[CellKey, pd.Series], r: Leaf, ref: Leaf, c: Leaf
) -> tuple[np.ndarray, np.ndarray]:
    """The row's and the reference's values over the seeds (scans) both have."""
    a = per_seed[(r.ident, c.ident)].dropna()
    b = per_seed[(ref.ident, c.ident)].dropna()
    common = [s for s in a.index if s in b.index]
    return a.loc[common].to_numpy(float), b.loc[common].to_numpy(float)


def _column_records(
    spec: TableSpec,
    rows: list[Leaf],
    c: Leaf,
    per_seed: dict[CellKey, pd.Series],
    cells: dict[CellKey, dict[str, Any]],
    ref: Leaf | None,
    paper: PaperTable | None,
    partial_means: set[tuple[str | None, str]],
) -> list[dict[str, Any]]:
    """The cell records of one column: summary, interval, marks, corrected tests, paper."""
    ranked = [
        r
        for r in rows
        if r.label not in spec.rank_exclude
        and r.display not in spec.rank_exclude
        and not r.paper_only
    ]
    means = {}
    for r in rows:
        vals = per_seed[(r.ident, c.ident)].dropna()
        mean, std, n = _summary(vals, spec.ddof)
        cell = cells[(r.ident, c.ident)]
        cell.update(mean=mean, std=std, n=n, seeds=",".join(str(s) for s in vals.index))
        cell["values"] = [float(v) for v in vals.values]
        cell["ci"] = _interval(spec, cell["values"])
        if r in ranked:
            means[r.ident] = mean
    marks = _ranks(means, spec.digits, spec.bold) if spec.bold != "none" else {}
    tests = _column_tests(spec, rows, c, per_seed, ref)
    records = []
    for r in rows:
        cell = cells[(r.ident, c.ident)]
        pm = ps = math.nan
        if paper is not None and c.ident not in partial_means:
            pc = paper.cell(r.ident, c.ident)
            if pc is not None:
                pm, ps = pc[0], (pc[1] if pc[1] is not None else math.nan)
        raw, adj, poi = tests.get(r.ident, (math.nan, math.nan, (math.nan,) * 3))
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
                "p_value": adj,
                "p_raw": raw,
                "ci_low": cell["ci"][0],
                "ci_high": cell["ci"][1],
                "p_improve": poi[0],
                "p_improve_low": poi[1],
                "p_improve_high": poi[2],
                "cost_s": cell["cost_s"],
                "paper_mean": pm,
                "paper_std": ps,
                "selected": cell["selected"],
                "selected_config": cell["selected_config"],
            }
        )
    return records


def _interval(spec: TableSpec, values: list[float]) -> tuple[float, float]:
    st = spec.stats
    if st.interval != "bootstrap" or len(values) < MIN_N["bootstrap"]:
        return math.nan, math.nan
    return bootstrap_ci(values, st.level, st.method, st.resamples)


def _column_tests(
    spec: TableSpec,
    rows: list[Leaf],
    c: Leaf,
    per_seed: dict[CellKey, pd.Series],
    ref: Leaf | None,
) -> dict[Any, tuple[float, float, tuple[float, float, float]]]:
    """Per row of one column: raw p, corrected p (across the column's rows), improvement."""
    pt = spec.paired_test
    if pt is None or ref is None:
        return {}
    others = [r for r in rows if r.ident != ref.ident]
    raw, poi = [], []
    for r in others:
        a, b = _paired(per_seed, r, ref, c)
        raw.append(_paired_p(a, b, pt.test, pt.alternative))
        if spec.stats.prob_improvement and a.size:
            frac, lo, hi, _ = prob_improvement(a, b, spec.bold != "min", spec.stats.level)
            poi.append((frac, lo, hi))
        else:
            poi.append((math.nan, math.nan, math.nan))
    adj = adjust_pvalues(raw, pt.correction)
    return {r.ident: (raw[i], adj[i], poi[i]) for i, r in enumerate(others)}


def _attach_layout(
    out: pd.DataFrame,
    spec: TableSpec,
    rows: list[Leaf],
    cols: list[Leaf],
    paper: PaperTable | None,
    base: pd.DataFrame,
    partial_means: set[tuple[str | None, str]],
) -> None:
    """Put the layout, caption and notes into ``out.attrs``."""
    ns = [int(n) for n in out["n"] if n > 0]
    used = [rid for ids in out["run_ids"] for rid in ids]
    runs = base[base["run_id"].isin(used)]
    ranked = [
        r
        for r in rows
        if r.label not in spec.rank_exclude
        and r.display not in spec.rank_exclude
        and not r.paper_only
    ]
    metrics = _table_metrics(spec, rows, cols)
    caption = _caption(
        spec, ns, paper, _epoch_rule(runs), _definitions(runs, spec, metrics), ranked=len(ranked)
    )
    left_out = _left_out_note(runs, spec, metrics)
    if left_out:
        caption += f" {left_out}"
    if any(r.paper_only for r in rows):
        caption += (
            " Rows marked (paper only) are methods segssl does not implement: the paper's "
            "numbers only."
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


def _mark_paper_only(spec: TableSpec, rows: list[Leaf]) -> list[Leaf]:
    """Flag the rows named by ``spec.paper_only`` (by label or ``group / label``).

    Raises:
        ReportError: a name that is no row label.
    """
    if not spec.paper_only:
        return rows
    names = {norm_label(n) for n in spec.paper_only}
    out = [
        replace(r, paper_only=True) if {norm_label(r.label), norm_label(r.display)} & names else r
        for r in rows
    ]
    known = {norm_label(x) for r in rows for x in (r.label, r.display)}
    for n in spec.paper_only:
        if norm_label(n) not in known:
            raise ReportError(
                f"table {spec.name!r}: paper_only names {n!r}, which is no row (rows: "
                f"{', '.join(repr(r.display) for r in rows)})"
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
            if leaf.is_mean or leaf.paper_only:
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
