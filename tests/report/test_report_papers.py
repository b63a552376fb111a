"""The papers' published numbers (experiments/papers/*.yaml) against the papers' own text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from segssl.report import ReportError, load_paper_table
from segssl.report.papers import _NUM, numbers_in_text, parse_paper_table

REPO = Path(__file__).resolve().parents[2]
PAPERS = sorted((REPO / "experiments" / "papers").glob("*.yaml"))


def _shared_seeds() -> Path:
    """The seed papers: /work/shared/seeds, else ``<repo>/../shared/seeds`` (CI clones)."""
    for cand in (REPO.parent / "shared" / "seeds", Path("/work/shared/seeds")):
        if cand.is_dir():
            return cand
    raise AssertionError(f"the seed papers are missing: looked in {REPO.parent / 'shared'}")


SEEDS = _shared_seeds()

# rows that the text extraction merged onto one line, column by column (BIM Table 6)
MERGED = {
    ("bim.yaml", "table6"): [
        ["Contrast (Enc+Dec)", "Ours (pre-train)"],
        ["Entropy Min.", "MixUp", "Mean Teacher (MT)", "UA-MT", "ICT"],
        ["MT + Contrast (Enc+Dec)", "MT + Ours (pre-train)"],
    ]
}
# values split in two by the text extraction, with the split form the text shows
SPLIT = {("bim.yaml", "table2", "Full Sup."): {92.26: "92.\t.26", 86.80: "86.\t80"}}
# rows whose first value is garbled in the text (read from another table); the rest is checked
GARBLED_FIRST = {("bim.yaml", "table2", "Contrast (Enc)+Ours (Dec)")}


def _raw(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _line_numbers(text: str) -> list[list[float]]:
    return [[float(x) for x in _NUM.findall(line)] for line in text.splitlines()]


def _contiguous(seq: list[float], lines: list[list[float]]) -> bool:
    n = len(seq)
    return any(line[i : i + n] == seq for line in lines for i in range(len(line) - n + 1))


def _subsequence(seq: list[float], lines: list[list[float]]) -> bool:
    def inside(line: list[float]) -> bool:
        it = iter(line)
        return all(any(x == y for y in it) for x in seq)

    return any(inside(line) for line in lines)


def _flat(cells: list) -> list[float | None]:
    out: list[float | None] = []
    for c in cells:
        out.extend(c if isinstance(c, list) else [c])
    return out


def _table_rows(table: dict) -> dict[str, object]:
    rows = dict(table.get("rows") or {})
    for grp in table.get("row_groups") or []:
        for lab, v in grp["rows"].items():
            rows[f"{grp['group']} / {lab}"] = v
    return rows


def test_papers_files_cover_every_paper_and_table() -> None:
    names = {p.name: sorted(_raw(p)["tables"]) for p in PAPERS}
    assert names == {
        "bim.yaml": ["table2", "table3", "table4", "table5", "table6", "table7"],
        "gmi.yaml": ["table1", "table2", "table3", "table4"],
        "chaitanya.yaml": [
            "table1",
            "table2",
            "table4",
            "table5",
            "table6",
            "table7",
            "table8",
            "table9",
        ],
        "ideal.yaml": ["table1", "table2"],
    }
    for p in PAPERS:
        for t in _raw(p)["tables"]:
            assert load_paper_table(p, t).rows


@pytest.mark.parametrize("path", PAPERS, ids=lambda p: p.name)
def test_every_transcribed_number_is_in_the_paper_text(path: Path) -> None:
    raw = _raw(path)
    text = (SEEDS / raw["seed"]).read_text()
    in_text = numbers_in_text(text)
    lines = _line_numbers(text)
    merged = {
        lab for (f, _), groups in MERGED.items() if f == path.name for g in groups for lab in g
    }
    checked_rows = 0
    for tname, table in raw["tables"].items():
        for lab, cells in _table_rows(table).items():
            values = _flat(list(cells.values()) if isinstance(cells, dict) else cells)
            split = SPLIT.get((path.name, tname, lab), {})
            for shown in split.values():
                assert shown in text, f"{path.name}:{tname}:{lab}: {shown!r} not in the text"
            missing = [
                v for v in values if v is not None and float(v) not in in_text and v not in split
            ]
            assert not missing, f"{path.name}:{tname}:{lab}: {missing} not in {raw['seed']}"
            if isinstance(cells, dict) or lab in merged:
                continue
            seq = [float(v) for v in values if v is not None]
            if (path.name, tname, lab) in GARBLED_FIRST:
                seq = seq[1:]
            ok = _contiguous(seq, lines) if None not in values else _subsequence(seq, lines)
            assert ok, f"{path.name}:{tname}:{lab}: values not found in this order on a line"
            checked_rows += 1
    for (fname, tname), groups in MERGED.items():
        if fname != path.name:
            continue
        rows = raw["tables"][tname]["rows"]
        for group in groups:
            interleaved = [float(rows[lab][i]) for i in range(len(rows[group[0]])) for lab in group]
            assert _contiguous(interleaved, lines), f"{fname}:{tname}: {group} transposed"
    assert checked_rows >= 4


def test_spot_values_at_their_row_and_column() -> None:
    bim = REPO / "experiments" / "papers" / "bim.yaml"
    t3 = load_paper_table(bim, "table3")
    assert t3.cell((None, "0.5"), ("ACDC-RV", "1 scan")) == (76.86, None)
    assert t3.cell((None, "0.50"), ("ACDC-Myo", "4 scans")) == (82.36, None)
    t6 = load_paper_table(bim, "table6")
    assert t6.cell((None, "Mean Teacher (MT)"), ("PROMISE12", "8 scans")) == (86.93, None)
    assert t6.cell((None, "UA-MT"), ("ACDC-Myo", "mean")) == (70.52, None)
    t7 = load_paper_table(bim, "table7")
    assert t7.cell(("Ours (MI+CC)", "12"), ("ACDC-LV", "2 scans")) == (87.89, None)
    assert t7.cell(("Contrast (Enc+Dec)", "12"), ("ACDC-LV", "2 scans")) == (84.23, None)
    t2 = load_paper_table(bim, "table2")
    assert t2.cell((None, "Full Sup."), ("ACDC-LV", "4 scans")) == (92.26, None)
    gmi = load_paper_table(REPO / "experiments" / "papers" / "gmi.yaml", "table1")
    assert gmi.cell((None, "Ours (all)"), ("ACDC", "Mean")) == (85.76, 0.16)
    assert gmi.cell((None, "Mean Teacher"), (None, "MMWHS")) == (55.57, 0.48)
    ch = load_paper_table(REPO / "experiments" / "papers" / "chaitanya.yaml", "table2")
    assert ch.cell((None, "Proposed init. (G^D + L^R)"), ("ACDC", "|Xtr|=1")) == (0.725, None)
    assert ch.cell((None, "Training with large |Xtr|"), ("Prostate", "|Xtr|=2")) == (0.697, None)
    idl = load_paper_table(REPO / "experiments" / "papers" / "ideal.yaml", "table2")
    assert idl.cell((None, "PCL [18]"), ("Average DSC (MMWHS)", "L=10%")) is None
    # the same figures, as the seed text prints them on one line
    text = (SEEDS / "000_117a43925f716e94.txt").read_text()
    assert "0.5\t84.04\t88.52\t89.31\t76.86\t79.13\t75.92\t76.27\t79.81\t82.36" in text


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ({"columns": ["a", "b"], "rows": {"r": [1, 2, 3]}}, r"rows.r: 3 values for 2 columns"),
        (
            {"columns": [{"group": "G", "leaves": ["a"]}], "rows": {"r": {"H": 1}}},
            "'H' is not a column group",
        ),
        ({"columns": ["a"], "rows": {"r": ["x"]}}, r"expected a number, null or \[mean, std\]"),
        ({"rows": {"r": [1]}}, "columns: expected a non-empty list"),
        ({"columns": ["a"], "rows": {"r": [1]}, "colour": 1}, r"unknown keys \['colour'\]"),
        ({"columns": ["a"]}, "no rows"),
    ],
)
def test_bad_papers_tables_are_named(table: dict, match: str) -> None:
    with pytest.raises(ReportError, match=match):
        parse_paper_table(table, "x.yaml:t")


def test_find_row_and_column_errors_list_the_papers_labels() -> None:
    t = parse_paper_table(
        {"columns": [{"group": "G", "leaves": ["1 scan", "mean"]}], "rows": {"A": [1, 2]}},
        "x.yaml:t",
    )
    with pytest.raises(ReportError, match=re.escape("has no row 'B'; its rows: 'A'")):
        t.find_row((None, "B"))
    with pytest.raises(
        ReportError,
        match=re.escape("has no column 'H / mean'; its columns: 'G / 1 scan', 'G / mean'"),
    ):
        t.find_col(("H", "mean"))
    assert t.cell((None, "a"), ("G", "MEAN")) == (2.0, None)


def test_numbers_in_text() -> None:
    assert numbers_in_text("a 84.04\t<u>87.29</u> 1 scan 12.5% (0.46)") == {
        84.04,
        87.29,
        1.0,
        12.5,
        0.46,
    }
