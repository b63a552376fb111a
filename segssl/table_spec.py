"""The ``tables:`` section of a sweep spec: how runs become a paper-style table.

A table groups the FINISHED child runs of one stage by *rows* and *columns* (both given in terms
of the flattened run params, e.g. ``method.name`` or ``data.labeled_scans``), aggregates one
metric over seeds (mean, std with ``ddof``, n per cell), marks the best and second best row per
column, optionally runs a paired test of every row against a reference row (matched by seed),
optionally selects per row the configuration with the best mean validation score (a baseline's
weight chosen "by validation grid search" as the papers did) and puts the paper's published
numbers beside ours.

Rows and columns accept three spellings (see :class:`AxisGroup`)::

    rows: [method.alpha]                        # one row per observed value (nested if several)
    rows: {Baseline: {method.name: baseline},   # label -> param filter, in this order
           Ours: {method.name: bim}}
    columns:                                    # explicit groups with the paper's headers
      - {label: ACDC-LV, filter: {data.target: lv}, by: data.labeled_scans,
         values: [1, 2, 4], mean: true}

Filter values compare to MLflow's string params numerically when both sides are numbers
(``0.5`` matches ``"0.5"``, ``1`` matches ``"1.0"``), as strings otherwise; a list means
"any of these".
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Scalar = str | int | float | bool | None
FilterValue = Scalar | list[Scalar]
Filter = dict[str, FilterValue]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AxisGroup(_Strict):
    """One group of rows or columns.

    A group has a header ``label`` (the paper's group header, e.g. ``ACDC-LV``; for row groups a
    caption line such as ``Contrast (Enc+Dec)``), a ``filter`` every run of the group satisfies,
    and its leaves, given by exactly one of:

    - ``by``: a param key; one leaf per value (``values`` fixes order and subset; default: the
      observed values, sorted numerically when they are numbers);
    - ``items``: ``label -> filter`` leaves in this order;
    - ``metrics``: ``label -> metric key`` leaves: other metrics of the same runs, e.g. the
      per-class Dice of one multi-class run (``{RV: test/dsc/rv, Mean: test/dsc}``, GMI Table 1)
      or ASD/HD/DSC rows (IDEAL Table 1); the table's ``metric`` is the default elsewhere;
    - neither: the group is a single leaf (its own label).

    ``labels`` maps a ``by`` value (written as a string, e.g. ``"1"``) to its display label
    (``"1 scan"``); without ``values``, labelled values come first, in the labels' order.
    ``mean`` (columns only) appends a column with the mean over the group's leaves, as the
    papers' "mean" columns: per seed the leaves' values are averaged, then mean +- std over
    seeds.
    """

    label: str | None = None
    filter: Filter = Field(default_factory=dict)
    by: str | None = None
    values: list[Scalar] | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    items: dict[str, Filter] | None = None
    metrics: dict[str, str] | None = None
    mean: bool = False

    @field_validator("labels", mode="before")
    @classmethod
    def _label_keys(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {_value_key(k): lab for k, lab in v.items()}
        return v

    @model_validator(mode="after")
    def _leaves(self) -> AxisGroup:
        given = [k for k in ("by", "items", "metrics") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(
                "give one of 'by' (a param key), 'items' (label -> filter) or 'metrics' "
                f"(label -> metric key), got {given}"
            )
        if self.values is not None and self.by is None:
            raise ValueError("'values' needs 'by' (the param key the values belong to)")
        if self.values is not None and not self.values:
            raise ValueError("'values' is empty; omit it to use the observed values")
        if self.items is not None and not self.items:
            raise ValueError("'items' is empty")
        if self.metrics is not None and not self.metrics:
            raise ValueError("'metrics' is empty")
        if not given and self.label is None:
            raise ValueError("a single-leaf group needs a 'label'")
        return self


Axis = list[str] | dict[str, Filter] | list[AxisGroup]


class PairedTest(_Strict):
    """Paired test of every row against ``reference`` (a row label), matched by seed."""

    reference: str
    test: Literal["ttest_rel", "wilcoxon"] = "ttest_rel"
    alternative: Literal["two-sided", "greater", "less"] = "two-sided"
    alpha: float = Field(0.05, gt=0, lt=1)
    # multiple-comparison correction across a column's rows; the corrected p is shown
    correction: Literal["holm", "bonferroni", "none"] = "holm"


class TableStats(_Strict):
    """Statistics beside mean +- std (``stats:`` of a table; see ``segssl.report.stats``).

    ``interval: bootstrap`` adds a bootstrap confidence interval of the mean per cell
    (``method: auto`` is BCa from 10 values on, percentile below); ``prob_improvement`` adds,
    per row, the fraction of paired seeds in which it beats the paired test's reference row
    (ties count half), with a Wilson interval on that same fraction; ``variance`` is the unit
    the std, intervals and tests run over: ``seeds`` (the papers' protocol) or ``scans``, the
    test scans of one run per cell (the seed ``variance_seed``, default the smallest), as
    SSL4MIS reports it. ``cost`` adds a
    column with each row's mean cost per run (``cost/gpu_s``; ``cost/wall_s`` for CPU runs).
    """

    interval: Literal["none", "bootstrap"] = "none"
    level: float = Field(0.95, gt=0, lt=1)
    method: Literal["auto", "BCa", "percentile", "basic"] = "auto"
    resamples: int = Field(9999, ge=100)
    prob_improvement: bool = False
    variance: Literal["seeds", "scans"] = "seeds"
    variance_seed: int | None = None
    cost: bool = False


class Selection(_Strict):
    """Model selection per row (``select: best_val``).

    Within each cell (``scope: cell``) or each row over all its cells (``scope: row``), runs
    that differ in the tuned ``keys`` are different configurations; the one with the best mean
    (over seeds) of ``metric`` is kept and its test metric reported. ``metric`` is read as the
    best value over the run's history (``val/dsc`` logged per epoch -> its max). ``keys``
    omitted: every param that varies inside the cell, the seed excluded.
    """

    rule: Literal["best_val"] = "best_val"
    keys: list[str] | None = None
    metric: str = "val/dsc"
    mode: Literal["max", "min"] = "max"
    scope: Literal["cell", "row"] = "cell"


class PaperRef(_Strict):
    """Where the paper's published numbers of this table are: a YAML file and its table key."""

    file: str
    table: str


class TableSpec(_Strict):
    """One table of a sweep (see the module docstring for the row/column spellings)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    title: str = ""
    stage: str | None = None  # runs of this stage (tag segssl.stage); None: every stage
    metric: str = "test/dsc"
    scale: float = Field(1.0, gt=0)  # 100 prints Dice as %
    digits: int = Field(2, ge=0, le=6)
    row_header: str = ""  # header of the label column (e.g. "Methods"); default: the row keys
    rows: Axis
    columns: Axis = Field(default_factory=list)
    # key -> value -> display label; the labelled values also come first, in this order
    labels: dict[str, dict[str, str]] = Field(default_factory=dict)
    group_mean: bool = False  # with key-list columns: a mean column per group
    filter: Filter = Field(default_factory=dict)
    seed_key: str = "seed"
    ddof: int = Field(1, ge=0)  # std over seeds with this ddof
    bold: Literal["max", "min", "none"] = "max"  # best bold, second underlined, per column
    rank_exclude: list[str] = Field(default_factory=list)  # row labels not ranked (upper bounds)
    # rows shown from the paper's numbers only (methods segssl does not implement): they select
    # no runs, are not ranked, and are marked "(paper only)"; labels or "group / label"
    paper_only: list[str] = Field(default_factory=list)
    paired_test: PairedTest | None = None
    select: Selection | None = None
    paper: PaperRef | None = None
    stats: TableStats = TableStats()

    @field_validator("select", mode="before")
    @classmethod
    def _select_shorthand(cls, v: Any) -> Any:
        if isinstance(v, str):
            return {"rule": v}
        return v

    @field_validator("labels", mode="before")
    @classmethod
    def _label_keys(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {
                k: ({_value_key(a): b for a, b in m.items()} if isinstance(m, dict) else m)
                for k, m in v.items()
            }
        return v

    @field_validator("rows")
    @classmethod
    def _rows_nonempty(cls, v: Axis) -> Axis:
        if not v:
            raise ValueError("rows is empty: give param keys, label -> filter, or groups")
        return v

    @model_validator(mode="after")
    def _checks(self) -> TableSpec:
        if any(isinstance(g, AxisGroup) and g.mean for g in _as_groups(self.rows)):
            raise ValueError("rows: 'mean' is only meaningful for column groups")
        if self.paper_only and self.paper is None:
            raise ValueError("paper_only rows need 'paper' (the published numbers they show)")
        if self.stats.prob_improvement and self.paired_test is None:
            raise ValueError(
                "stats.prob_improvement compares each row with a reference row: give "
                "'paired_test: {reference: <row label>}'"
            )
        return self


def _value_key(v: Any) -> str:
    """String form of a value used as a label-map key (``1`` and ``1.0`` -> ``"1"``)."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _as_groups(axis: Axis) -> list[Any]:
    return list(axis) if isinstance(axis, list) else []


__all__ = ["AxisGroup", "PairedTest", "PaperRef", "Selection", "TableSpec", "TableStats"]
