"""The papers' published numbers (``experiments/papers/*.yaml``) and their alignment with ours.

A papers file transcribes every table of one paper with its row and column structure::

    paper: Boundary-aware Information Maximization for Self-supervised ...
    seed: 000_117a43925f716e94.txt          # the paper's text under shared/seeds/
    tables:
      table3:
        caption: Impact of alpha for our proposed L_MI.
        metric: 3D DSC (%), test set
        row_header: alpha
        columns:                            # groups with leaves, or a flat list of leaves
          - {group: ACDC-LV, leaves: [1 scan, 2 scans, 4 scans]}
        rows:                               # label -> one cell per leaf, in column order
          "0.0": [61.58, 78.09, 81.27]
          Full Sup.: {ACDC-LV: 92.26}       # group -> one value spanning the group
        row_groups:                         # rows under a caption line (e.g. BIM Table 7)
          - {group: Contrast (Enc+Dec), rows: {"6": [72.16, 86.02, 87.37]}}

A cell is a number, ``null`` (not reported, "-") or ``[mean, std]``. Our table's rows and
columns are matched to the paper's by label (case, spacing and number formatting ignored:
``0.5`` matches ``0.50``); a row or column of ours that the paper lacks is an error naming it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segssl.report.errors import ReportError

Cell = tuple[float, float | None] | None  # (mean, std) or not reported
RowId = tuple[str | None, str]  # (row group caption or None, row label)
ColId = tuple[str | None, str]  # (column group header or None, leaf label)


def norm_label(label: Any) -> str:
    """Label normal form for matching: numbers canonical, case and spacing ignored."""
    text = " ".join(str(label).split()).casefold()
    try:
        x = float(text)
    except ValueError:
        return text
    if math.isfinite(x) and x.is_integer():
        return str(int(x))
    return repr(x)


@dataclass
class PaperTable:
    """One published table: leaves per column group and cells per row."""

    source: str  # "file:table" for messages
    columns: list[ColId]
    rows: dict[RowId, dict[ColId, Cell]] = field(default_factory=dict)
    caption: str = ""
    metric: str = ""

    def row_labels(self) -> list[str]:
        """Row labels as written (``group / label`` for grouped rows)."""
        return [lab if grp is None else f"{grp} / {lab}" for grp, lab in self.rows]

    def col_labels(self) -> list[str]:
        """Column labels as written (``group / leaf``)."""
        return [lab if grp is None else f"{grp} / {lab}" for grp, lab in self.columns]

    def find_row(self, row: RowId) -> RowId:
        """The paper's row matching ours (by group and label; group optional on our side).

        Raises:
            ReportError: naming the row and listing the paper's rows.
        """
        return _find(
            row,
            list(self.rows),
            prefer_grouped=True,
            what=f"paper table {self.source}",
            kind="row",
            known=self.row_labels(),
            hint="rename the table's row, or give row groups, to match",
        )

    def find_col(self, col: ColId) -> ColId:
        """The paper's column matching ours (by group header and leaf label).

        Raises:
            ReportError: naming the column and listing the paper's columns.
        """
        return _find(
            col,
            list(self.columns),
            prefer_grouped=False,
            what=f"paper table {self.source}",
            kind="column",
            known=self.col_labels(),
            hint="label the table's columns like the paper's, e.g. with 'labels' or group 'label'",
        )

    def cell(self, row: RowId, col: ColId) -> Cell:
        """The published value at our ``row`` x ``col`` (errors when either is not found)."""
        return self.rows[self.find_row(row)].get(self.find_col(col))


def _find(
    wanted: tuple[str | None, str],
    items: list[tuple[str | None, str]],
    *,
    prefer_grouped: bool,
    what: str,
    kind: str,
    known: list[str],
    hint: str,
) -> tuple[str | None, str]:
    """The one ``(group, label)`` of ``items`` matching ``wanted`` by normalised label, and by
    group where both sides give one; with ``prefer_grouped``, a grouped match wins over ungrouped.

    Raises:
        ReportError: no match, or several, naming ``wanted`` and listing ``known``.
    """
    grp, lab = wanted
    hits = [
        it
        for it in items
        if norm_label(it[1]) == norm_label(lab)
        and (grp is None or it[0] is None or norm_label(it[0]) == norm_label(grp))
    ]
    if prefer_grouped and grp is not None:
        hits = [it for it in hits if it[0] is not None] or hits
    if len(hits) != 1:
        shown = lab if grp is None else f"{grp} / {lab}"
        why = f"has no {kind}" if not hits else f"has several {kind}s matching"
        raise ReportError(
            f"{what} {why} {shown!r}; its {kind}s: {', '.join(repr(x) for x in known)} ({hint})"
        )
    return hits[0]


def _cell(value: Any, where: str) -> Cell:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ReportError(f"{where}: expected a number, null or [mean, std], got {value!r}")
    if isinstance(value, int | float):
        return (float(value), None)
    if (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        return (float(value[0]), float(value[1]))
    raise ReportError(f"{where}: expected a number, null or [mean, std], got {value!r}")


def _columns(raw: Any, where: str) -> list[ColId]:
    if not isinstance(raw, list) or not raw:
        raise ReportError(f"{where}.columns: expected a non-empty list")
    cols: list[ColId] = []
    for i, item in enumerate(raw):
        if isinstance(item, str | int | float) and not isinstance(item, bool):
            cols.append((None, str(item)))
        elif isinstance(item, dict) and set(item) <= {"group", "leaves"} and "leaves" in item:
            leaves = item["leaves"]
            if not isinstance(leaves, list) or not leaves:
                raise ReportError(f"{where}.columns[{i}].leaves: expected a non-empty list")
            grp = item.get("group")
            cols.extend((None if grp is None else str(grp), str(leaf)) for leaf in leaves)
        else:
            raise ReportError(
                f"{where}.columns[{i}]: expected a label or {{group, leaves}}, got {item!r}"
            )
    if len(set(cols)) != len(cols):
        raise ReportError(f"{where}.columns: duplicate columns")
    return cols


def _row_cells(values: Any, cols: list[ColId], where: str) -> dict[ColId, Cell]:
    if isinstance(values, list):
        if len(values) != len(cols):
            raise ReportError(
                f"{where}: {len(values)} values for {len(cols)} columns "
                f"({', '.join(lab if g is None else f'{g}/{lab}' for g, lab in cols)})"
            )
        return {
            c: _cell(v, f"{where}[{i}]") for i, (c, v) in enumerate(zip(cols, values, strict=True))
        }
    if isinstance(values, dict):
        out: dict[ColId, Cell] = {}
        groups = {g for g, _ in cols}
        for grp, v in values.items():
            if grp not in groups:
                raise ReportError(
                    f"{where}: {grp!r} is not a column group "
                    f"({', '.join(sorted(str(g) for g in groups))})"
                )
            leaves = [c for c in cols if c[0] == grp]
            if isinstance(v, list):  # one cell per leaf of the group
                if len(v) != len(leaves):
                    raise ReportError(
                        f"{where}.{grp}: {len(v)} values for {len(leaves)} columns; a value "
                        "spanning the group is a number or {span: [mean, std]}"
                    )
                out.update({c: _cell(x, f"{where}.{grp}") for c, x in zip(leaves, v, strict=True)})
            else:  # one value spanning the group (e.g. full supervision)
                if isinstance(v, dict) and set(v) == {"span"}:
                    v = v["span"]
                out.update({c: _cell(v, f"{where}.{grp}") for c in leaves})
        return out
    raise ReportError(f"{where}: expected a list of cells or group -> value, got {values!r}")


def parse_paper_table(raw: Any, source: str) -> PaperTable:
    """Validate one table of a papers file (``source`` names it in errors)."""
    if not isinstance(raw, dict):
        raise ReportError(f"{source}: expected a mapping")
    unknown = set(raw) - {
        "caption",
        "metric",
        "row_header",
        "columns",
        "rows",
        "row_groups",
        "notes",
    }
    if unknown:
        raise ReportError(f"{source}: unknown keys {sorted(unknown)}")
    cols = _columns(raw.get("columns"), source)
    table = PaperTable(
        source=source,
        columns=cols,
        caption=str(raw.get("caption", "")),
        metric=str(raw.get("metric", "")),
    )
    for label, values in (raw.get("rows") or {}).items():
        table.rows[(None, str(label))] = _row_cells(values, cols, f"{source}.rows.{label}")
    for i, grp in enumerate(raw.get("row_groups") or []):
        if not isinstance(grp, dict) or set(grp) != {"group", "rows"}:
            raise ReportError(f"{source}.row_groups[{i}]: expected {{group, rows}}")
        for label, values in grp["rows"].items():
            rid = (str(grp["group"]), str(label))
            table.rows[rid] = _row_cells(values, cols, f"{source}.row_groups[{i}].{label}")
    if not table.rows:
        raise ReportError(f"{source}: no rows")
    return table


def load_paper_file(path: str | Path) -> dict[str, Any]:
    """Read a papers YAML file (raises :class:`ReportError` naming the path on failure)."""
    p = Path(path)
    if not p.is_file():
        raise ReportError(f"paper numbers file {str(path)!r} does not exist")
    from segssl.config import ConfigError, yaml_load

    try:
        raw = yaml_load(p.read_text(), str(path))
    except ConfigError as exc:
        raise ReportError(str(exc)) from None
    if not isinstance(raw, dict) or not isinstance(raw.get("tables"), dict):
        raise ReportError(f"{path}: expected a mapping with 'tables'")
    return raw


def load_paper_table(path: str | Path, table: str) -> PaperTable:
    """One table of a papers file.

    Raises:
        ReportError: the file does not exist, or has no such table (the message lists them).
    """
    raw = load_paper_file(path)
    if table not in raw["tables"]:
        known = ", ".join(sorted(raw["tables"]))
        raise ReportError(f"{path}: no table {table!r} (tables: {known})")
    return parse_paper_table(raw["tables"][table], f"{path}:{table}")


def resolve_paper_path(file: str, base_dirs: list[Path]) -> Path:
    """Find a papers file: as given (absolute or relative to the working directory), else
    relative to each of ``base_dirs`` (the sweep file's folder, the repository root)."""
    p = Path(file)
    if p.is_absolute() or p.exists():
        return p
    for base in base_dirs:
        cand = base / file
        if cand.exists():
            return cand
    return p


_NUM = re.compile(r"(?<![\d.])\d+\.\d+|(?<![\d.])\d+(?![\d.])")


def numbers_in_text(text: str) -> set[float]:
    """Every decimal number written in a text (used to check transcriptions)."""
    return {float(m) for m in _NUM.findall(text)}
