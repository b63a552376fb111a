"""Draw an aggregated table (:func:`segssl.report.aggregate.aggregate`) as Markdown, LaTeX,
CSV or HTML.

Every format shows, per cell, mean +- std over seeds and the number of seeds; the best value of
each column in bold and the second best underlined; the paired-test p-value against the
reference row when asked; the paper's published value on a ``paper`` line under each row when
the table names a papers file; and a caption saying what the std is over and how models were
selected. CSV is the long, machine-readable form (one line per cell).
"""

from __future__ import annotations

import html
import math
from typing import Any

import pandas as pd

from segssl.report.errors import ReportError
from segssl.table_spec import TableSpec

FORMATS = ("md", "latex", "csv", "html")
CSV_COLUMNS = [
    "table",
    "row_group",
    "row",
    "col_group",
    "col",
    "is_mean",
    "mean",
    "std",
    "n",
    "unit",  # what n, seeds, values and std run over: "seeds" or "test scans"
    "seeds",
    "values",
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
    "run_ids",
]


def _num(x: float, digits: int) -> str:
    return f"{x:.{digits}f}"


def _isnan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


class _Layout:
    """Row/column order and cell lookup of an aggregated table."""

    def __init__(self, agg: pd.DataFrame, spec: TableSpec) -> None:
        if "rows" not in agg.attrs or "columns" not in agg.attrs:
            raise ReportError("render() expects the DataFrame returned by aggregate()")
        self.spec = spec
        self.rows = agg.attrs["rows"]
        self.cols = agg.attrs["columns"]
        self.caption = agg.attrs.get("caption", "")
        self.row_header = agg.attrs.get("row_header", "")
        self.has_paper = spec.paper is not None
        self.cells = {
            ((rec["row_group"], rec["row"]), (rec["col_group"], rec["col"])): rec
            for rec in agg.to_dict("records")
        }
        self.grouped_cols = any(c.group is not None for c in self.cols)
        pt = spec.paired_test
        self.ref = pt.reference if pt is not None else None

    def cell(self, r: Any, c: Any) -> dict[str, Any]:
        return self.cells[(r.ident, c.ident)]

    def col_spans(self) -> list[tuple[str | None, int]]:
        """(group header, number of columns) runs in column order."""
        spans: list[tuple[str | None, int]] = []
        for c in self.cols:
            if spans and spans[-1][0] == c.group:
                spans[-1] = (c.group, spans[-1][1] + 1)
            else:
                spans.append((c.group, 1))
        return spans

    def selected_notes(self) -> list[str]:
        """One note per row where ``select`` chose among several configurations: the keys that
        varied for the row, each chosen configuration once with the columns it was chosen for
        (``Mean Teacher: method.w_cons=1 (ACDC, MMWHS), 0.001 (Prostate)``); no column list
        when one configuration was chosen in every column. Cells with one candidate are left
        out."""
        data_cols = [c for c in self.cols if not c.is_mean]
        notes = []
        for r in self.rows:
            made = [(c, self.cell(r, c).get("selected_config")) for c in data_cols]
            made = [(c, ch) for c, ch in made if ch and ch["varied"]]
            if not made:
                continue
            varied = {k for _, ch in made for k in ch["varied"]}
            keys = list(dict.fromkeys(k for _, ch in made for k in ch["values"] if k in varied))
            groups: dict[tuple[tuple[str, str], ...], list[Any]] = {}
            for c, ch in made:
                label = tuple((k, str(ch["values"][k])) for k in keys if k in ch["values"])
                groups.setdefault(label, []).append(c)
            notes.append(f"{r.display}: {self._choices_text(groups, len(made) == len(data_cols))}")
        return notes

    def _choices_text(
        self, groups: dict[tuple[tuple[str, str], ...], list[Any]], everywhere: bool
    ) -> str:
        """The chosen configurations of one row with their columns (see selected_notes)."""
        if len(groups) == 1 and everywhere:
            return ", ".join(f"{k}={v}" for k, v in next(iter(groups)))
        named = [(label, self._column_names(cols)) for label, cols in groups.items()]
        keys = {tuple(k for k, _ in label) for label in groups}
        if len(keys) == 1 and len(next(iter(keys))) == 1:  # one key: named once
            (key,) = next(iter(keys))
            parts = [f"{label[0][1]} ({cols})" for label, cols in named]
            return f"{key}={', '.join(parts)}"
        return "; ".join(
            f"{', '.join(f'{k}={v}' for k, v in label)} ({cols})" for label, cols in named
        )

    def _column_names(self, cols: list[Any]) -> str:
        """Column names, a group whose data columns are all in ``cols`` named once."""
        names: list[str] = []
        for c in cols:
            group = [x for x in self.cols if not x.is_mean and x.group == c.group]
            whole = c.group is not None and all(x in cols for x in group)
            name = c.group if whole else c.display
            if name not in names:
                names.append(name)
        return ", ".join(names)

    def p_text(self, rec: dict[str, Any]) -> str:
        """Everything after mean +- std (n): the interval, the corrected p, P(>ref)."""
        d = self.spec.digits
        out = ""
        if not _isnan(rec.get("ci_low")):
            out += f" [{_num(rec['ci_low'], d)}, {_num(rec['ci_high'], d)}]"
        pt = self.spec.paired_test
        if pt is not None and not _isnan(rec["p_value"]):
            star = "*" if rec["p_value"] < pt.alpha else ""
            out += f" p={rec['p_value']:.3g}{star}"
        if not _isnan(rec.get("p_improve")):
            out += (
                f" P(>ref)={rec['p_improve']:.2f} "
                f"[{rec['p_improve_low']:.2f}, {rec['p_improve_high']:.2f}]"
            )
        return out

    def cost_text(self, r: Any) -> str:
        """The row's mean cost per run (s), over its non-mean cells; '' without cost column."""
        vals = [self.cell(r, c).get("cost_s") for c in self.cols if not c.is_mean]
        vals = [v for v in vals if not _isnan(v)]
        return f"{sum(vals) / len(vals):.0f}" if vals else "–"


def _plain_cell(rec: dict[str, Any], d: int, pm: str = "±") -> str:
    if rec["n"] == 0 or _isnan(rec["mean"]):
        return "–"
    std = "" if _isnan(rec["std"]) else f" {pm} {_num(rec['std'], d)}"
    return f"{_num(rec['mean'], d)}{std} ({rec['n']})"


def _paper_cell(rec: dict[str, Any], d: int, pm: str = "±", dash: str = "–") -> str:
    if _isnan(rec["paper_mean"]):
        return dash
    std = "" if _isnan(rec["paper_std"]) else f" {pm} {_num(rec['paper_std'], d)}"
    return f"{_num(rec['paper_mean'], d)}{std}"


def _without_title(caption: str, spec: TableSpec) -> str:
    """The caption less its leading title sentence (for formats that show the title above)."""
    lead = spec.title.rstrip(".") + "." if spec.title else ""
    return caption[len(lead) :].lstrip() if lead and caption.startswith(lead) else caption


# ---------------------------------------------------------------------------------- markdown
def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def render_md(agg: pd.DataFrame, spec: TableSpec) -> str:
    """GitHub-flavoured Markdown (bold ``**``, underline ``<u>``)."""
    lay = _Layout(agg, spec)
    d = spec.digits
    cost = spec.stats.cost
    head = [lay.row_header or " "] + [
        c.label if c.group is None else f"{c.group} {c.label}" for c in lay.cols
    ]
    head += ["cost (s/run)"] if cost else []
    ncols = len(head) - 1
    lines = [f"**{spec.name}**" + (f": {spec.title}" if spec.title else ""), ""]
    lines.append("| " + " | ".join(_md_escape(h) for h in head) + " |")
    lines.append("|" + "|".join([":---"] + ["---:"] * ncols) + "|")
    group = None
    for r in lay.rows:
        if r.group is not None and r.group != group:
            lines.append(f"| *{_md_escape(r.group)}* |" + " |" * ncols)
        group = r.group
        cells = []
        for c in lay.cols:
            rec = lay.cell(r, c)
            text = _plain_cell(rec, d)
            if rec["mark"] == "best":
                text = f"**{text}**"
            elif rec["mark"] == "second":
                text = f"<u>{text}</u>"
            cells.append(text + lay.p_text(rec))
        cells += [lay.cost_text(r)] if cost else []
        lines.append(f"| {_md_escape(r.shown)} | " + " | ".join(cells) + " |")
        if lay.has_paper:
            paper = [_paper_cell(lay.cell(r, c), d) for c in lay.cols] + ([""] if cost else [])
            lines.append("| ↳ paper | " + " | ".join(paper) + " |")
    lines += ["", _without_title(lay.caption, spec)]
    notes = lay.selected_notes()
    if notes:
        lines += ["", "Selected configurations:", ""] + [f"- {_md_escape(n)}" for n in notes]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------- latex
_TEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
}


def tex_escape(text: Any) -> str:
    """Escape LaTeX special characters in a label."""
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def render_latex(agg: pd.DataFrame, spec: TableSpec) -> str:
    """A booktabs ``table`` environment (needs ``\\usepackage{booktabs}``)."""
    lay = _Layout(agg, spec)
    d = spec.digits
    ncol = len(lay.cols) + 1
    out = [
        "% requires \\usepackage{booktabs}",
        "\\begin{table}[t]",
        "\\centering",
        f"\\caption{{{tex_escape(lay.caption)}}}",
        f"\\label{{tab:{tex_escape(spec.name)}}}",
        "\\begin{tabular}{l" + "r" * len(lay.cols) + "}",
        "\\toprule",
    ]
    if lay.grouped_cols:
        heads, rules, pos = [""], [], 2
        for grp, span in lay.col_spans():
            heads.append(f"\\multicolumn{{{span}}}{{c}}{{{tex_escape(grp or '')}}}")
            if grp is not None:
                rules.append(f"\\cmidrule(lr){{{pos}-{pos + span - 1}}}")
            pos += span
        out.append(" & ".join(heads) + " \\\\")
        out.append(" ".join(rules))
    out.append(
        " & ".join([tex_escape(lay.row_header)] + [tex_escape(c.label) for c in lay.cols]) + " \\\\"
    )
    out.append("\\midrule")
    group = None
    for r in lay.rows:
        if r.group is not None and r.group != group:
            out.append(f"\\multicolumn{{{ncol}}}{{l}}{{\\textit{{{tex_escape(r.group)}}}}} \\\\")
        group = r.group
        cells = []
        for c in lay.cols:
            rec = lay.cell(r, c)
            if rec["n"] == 0 or _isnan(rec["mean"]):
                cells.append("--")
                continue
            text = _num(rec["mean"], d)
            if not _isnan(rec["std"]):
                text += f" $\\pm$ {_num(rec['std'], d)}"
            if rec["mark"] == "best":
                text = f"\\textbf{{{text}}}"
            elif rec["mark"] == "second":
                text = f"\\underline{{{text}}}"
            text += f"\\,{{\\scriptsize({rec['n']})}}"
            p = lay.p_text(rec)
            if p:
                text += f"\\,{{\\scriptsize {tex_escape(p.strip())}}}"
            cells.append(text)
        out.append(" & ".join([tex_escape(r.shown)] + cells) + " \\\\")
        if lay.has_paper:
            paper = [_paper_cell(lay.cell(r, c), d, "$\\pm$", "--") for c in lay.cols]
            out.append(
                " & ".join(["\\quad\\textit{paper}"] + [f"\\textit{{{p}}}" for p in paper])
                + " \\\\"
            )
    out += ["\\bottomrule", "\\end{tabular}"]
    notes = lay.selected_notes()
    if notes:
        out.append(f"\\\\[2pt]{{\\footnotesize Selected: {tex_escape('. '.join(notes))}.}}")
    out.append("\\end{table}")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------- csv
def csv_frame(agg: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    """The long CSV form of a table (one line per cell, lists joined with ';'; ``unit`` says
    whether ``n``, ``seeds``, ``values`` and ``std`` are over seeds or over test scans)."""
    out = agg.copy()
    out.insert(0, "table", spec.name)
    # a table over test scans lists scan indices under 'seeds': the unit says which it is
    out["unit"] = "seeds" if spec.stats.variance == "seeds" else "test scans"
    out["values"] = out["values"].map(lambda v: ";".join(repr(float(x)) for x in v))
    out["run_ids"] = out["run_ids"].map(lambda v: ";".join(v))
    return out[CSV_COLUMNS]


def render_csv(agg: pd.DataFrame, spec: TableSpec) -> str:
    """CSV with a header line; floats at full precision."""
    return csv_frame(agg, spec).to_csv(index=False)


# -------------------------------------------------------------------------------------- html
def render_html(agg: pd.DataFrame, spec: TableSpec) -> str:
    """A standalone ``<table>`` with a caption, grouped headers, ``<b>``/``<u>`` marks."""
    lay = _Layout(agg, spec)
    d = spec.digits
    e = html.escape
    out = [f'<table class="segssl-table" id="{e(spec.name)}">']
    caption = lay.caption if spec.title else f"{spec.name}. {lay.caption}"
    out.append(f"<caption>{e(caption)}</caption>")
    out.append("<thead>")
    if lay.grouped_cols:
        cells = ['<th rowspan="2"></th>'] + [
            f'<th colspan="{span}">{e(grp or "")}</th>' for grp, span in lay.col_spans()
        ]
        out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("<tr>" + "".join(f"<th>{e(c.label)}</th>" for c in lay.cols) + "</tr>")
    else:
        out.append(
            f"<tr><th>{e(lay.row_header)}</th>"
            + "".join(f"<th>{e(c.label)}</th>" for c in lay.cols)
            + "</tr>"
        )
    out += ["</thead>", "<tbody>"]
    group = None
    for r in lay.rows:
        if r.group is not None and r.group != group:
            out.append(
                f'<tr class="group"><td colspan="{len(lay.cols) + 1}"><i>{e(r.group)}</i></td></tr>'
            )
        group = r.group
        cells = []
        for c in lay.cols:
            rec = lay.cell(r, c)
            text = e(_plain_cell(rec, d))
            if rec["mark"] == "best":
                text = f"<b>{text}</b>"
            elif rec["mark"] == "second":
                text = f"<u>{text}</u>"
            cells.append(f"<td>{text}{e(lay.p_text(rec))}</td>")
        out.append(f"<tr><th>{e(r.shown)}</th>" + "".join(cells) + "</tr>")
        if lay.has_paper:
            paper = "".join(f"<td>{e(_paper_cell(lay.cell(r, c), d))}</td>" for c in lay.cols)
            out.append(f'<tr class="paper"><th><i>paper</i></th>{paper}</tr>')
    out += ["</tbody>", "</table>"]
    notes = lay.selected_notes()
    if notes:
        items = "".join(f"<li>{e(n)}</li>" for n in notes)
        out.append(f"<p>Selected configurations:</p>\n<ul>{items}</ul>")
    return "\n".join(out) + "\n"


def render(agg: pd.DataFrame, spec: TableSpec, fmt: str = "md") -> str:
    """Render an aggregated table in ``fmt`` (one of :data:`FORMATS`)."""
    renderers = {"md": render_md, "latex": render_latex, "csv": render_csv, "html": render_html}
    if fmt not in renderers:
        raise ReportError(f"unknown table format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return renderers[fmt](agg, spec)
