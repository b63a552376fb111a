"""BIM Tables 2 (ACDC and PROMISE12), 3, 4, 5 and 7 of the shipped sweeps, rendered from
runs of their own plans.

Every fine-tuning trial the sweep plans gets one run whose test Dice encodes the paper row it
belongs to (read from the trial's own params, not from the table spec), its column (target and
labeled scans) and its seed. The rendered Markdown must then have exactly the paper's header,
the paper's rows in the paper's order, ours in every cell from that row's and column's runs, and
under each row a ``paper`` line holding the papers file's values in the papers file's order
(positions, not labels: a swapped row, column or label mapping in the sweep, or a misplaced
number, changes the rendered text). The papers file's values are checked against the paper's
text in ``test_report_papers.py`` and, cell by cell for these tables, below.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from segssl.orchestrate.plan import plan_sweep
from segssl.orchestrate.spec import load_sweep, parse_sweep
from segssl.report import aggregate, render
from segssl.report.papers import norm_label

REPO = Path(__file__).resolve().parents[2]
SWEEPS = REPO / "experiments" / "sweeps"
PAPERS = REPO / "experiments" / "papers" / "bim.yaml"
SEEDS = next(
    (c for c in (REPO.parent / "shared" / "seeds", Path("/work/shared/seeds")) if c.is_dir()),
    REPO.parent / "shared" / "seeds",
)
SEED_TEXT = SEEDS / "000_117a43925f716e94.txt"
TARGETS = ["lv", "rv", "myo"]
CELL = re.compile(r"^(?:\*\*|<u>)?(\d+\.\d+) ± (\d+\.\d+) \((\d+)\)")


def paper_table(name: str) -> dict[str, Any]:
    return yaml.safe_load(PAPERS.read_text())["tables"][name]


def paper_header(name: str, groups: list[str] | None = None) -> list[str]:
    """The paper's column labels as the Markdown header writes them, in the paper's order."""
    cols = paper_table(name)["columns"]
    return [
        f"{c['group']} {leaf}"
        for c in cols
        if groups is None or c["group"] in groups
        for leaf in c["leaves"]
    ]


def paper_rows(name: str, groups: list[str] | None = None) -> list[tuple[str, list[float]]]:
    """The paper's rows in its order, each with its values (restricted to ``groups``)."""
    cols = paper_table(name)["columns"]
    keep = [
        i
        for i, (c, leaf) in enumerate((c, leaf) for c in cols for leaf in c["leaves"])
        if groups is None or c["group"] in groups
    ]
    out = []
    for label, values in paper_table(name)["rows"].items():
        if isinstance(values, list):
            out.append((label, [values[i] for i in keep]))
    return out


def plan_runs(sweep: str, row_of: Callable[[dict], str], tmp: Path, spec=None) -> pd.DataFrame:
    """One FINISHED run per planned supervised trial; its test Dice encodes the trial's paper
    row (index among ``row_of`` labels, in the paper's order), column and seed."""
    spec = spec or load_sweep(SWEEPS / sweep)
    plan = plan_sweep(spec, source=str(SWEEPS / sweep), storage=tmp / "s", root=tmp)
    recs = []
    for i, t in enumerate(plan.all_trials()):
        if t.stage == "pretrain":
            continue
        p = t.params()
        recs.append(
            {
                "run_id": f"r{i}",
                "tags.segssl.stage": t.stage,
                **{f"params.{k}": None if v is None else str(v) for k, v in p.items()},
                "metrics.test/dsc": encode(row_of(p), p, t.seed),
            }
        )
    return pd.DataFrame(recs)


ROW_INDEX: dict[str, int] = {}


def encode(row: str, p: dict, seed: int) -> float:
    """0.3 + (100 * row + 5 * column + seed) / 1e4: distinct per cell, std 0.01 % over 3 seeds."""
    r = ROW_INDEX[row]
    scans = p["data.labeled_scans"]
    if scans == "100%":
        col = 3 * TARGETS.index(p["data.target"]) if p["data.target"] in TARGETS else 0
    elif p["data.target"] in TARGETS:
        col = 3 * TARGETS.index(p["data.target"]) + [1, 2, 4].index(scans)
    else:  # PROMISE12
        col = [4, 6, 8].index(scans)
    return 0.3 + (100 * r + 5 * col + seed) / 1e4


def expected_ours(row: str, n_groups: int) -> list[float]:
    """Our expected means (in %) along the paper's columns: 3 leaves and their mean per group
    (mean seed 1)."""
    r, out = ROW_INDEX[row], []
    for g in range(n_groups):
        leaves = [30 + (100 * r + 5 * (3 * g + j) + 1) / 100 for j in range(3)]
        out += [*leaves, sum(leaves) / 3]
    return out


def md_rows(md: str) -> list[list[str]]:
    """The Markdown table's lines as cell lists (header first, separator dropped)."""
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    return [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines]


def check_render(
    md: str, header: list[str], row_header: str, rows: list[tuple[str, list[float]]], ours
) -> None:
    """Header, row order, ours and the paper's line under every row, cell by cell."""
    table = md_rows(md)
    assert table[0] == [row_header, *header]
    body = table[1:]
    assert len(body) == 2 * len(rows), [b[0] for b in body]
    for k, (label, paper) in enumerate(rows):
        mine, under = body[2 * k], body[2 * k + 1]
        assert norm_label(mine[0]) == norm_label(label), (mine[0], label)
        got = []
        for cell in mine[1:]:
            m = CELL.match(cell)
            assert m, cell
            assert m.group(3) == "3", cell
            got.append(float(m.group(1)))
        assert got == pytest.approx(ours(label), abs=0.006), label
        assert under[0] == "↳ paper"
        assert [float(x) for x in under[1:]] == paper, label


def table2_row(p: dict) -> str:
    if p.get("method.name") == "baseline":
        return "Baseline"
    if p.get("method.name") == "full":
        return "Full Sup."
    return p["pretrain.variant"]


@pytest.fixture(autouse=True)
def _row_index() -> None:
    ROW_INDEX.clear()


def _index(name: str) -> None:
    ROW_INDEX.update({lab: i for i, lab in enumerate(paper_table(name)["rows"])})


def render_table2(sweep: str, tmp: Path, spec=None) -> tuple[str, Any, pd.DataFrame]:
    _index("table2")
    spec = spec or load_sweep(SWEEPS / sweep)
    df = plan_runs(sweep, table2_row, tmp, spec)
    table = spec.tables[0]
    agg = aggregate(df, table, experiment=spec.name, base_dirs=[SWEEPS])
    return render(agg, table, "md"), agg, df


def test_bim_table2_acdc_in_the_papers_order_with_its_values(tmp_path: Path) -> None:
    md, agg, df = render_table2("bim_table2_acdc.yaml", tmp_path)
    groups = ["ACDC-LV", "ACDC-RV", "ACDC-Myo"]
    rows = [r for r in paper_rows("table2", groups) if r[0] != "Full Sup."]
    check_render(md, paper_header("table2", groups), "Methods", rows, lambda r: expected_ours(r, 3))
    # the paired test against Baseline: every other row differs by a constant -> p defined
    assert agg[(agg["row"] != "Baseline") & ~agg["is_mean"]]["p_value"].notna().all()
    # the upper bound: one cell per task from the 'full' stage
    spec = load_sweep(SWEEPS / "bim_table2_acdc.yaml")
    full = aggregate(df, spec.tables[1], experiment=spec.name, base_dirs=[SWEEPS])
    got = full.set_index("col")["mean"].to_dict()
    r = 100 * ROW_INDEX["Full Sup."]
    assert got == pytest.approx({g: 30 + (r + 15 * i + 1) / 100 for i, g in enumerate(groups)})


def test_bim_table2_promise12_in_the_papers_order_with_its_values(tmp_path: Path) -> None:
    md, _, _ = render_table2("bim_table2_promise12.yaml", tmp_path)
    rows = [r for r in paper_rows("table2", ["PROMISE12"]) if r[0] != "Full Sup."]
    check_render(
        md,
        paper_header("table2", ["PROMISE12"]),
        "Methods",
        rows,
        lambda r: expected_ours(r, 1),
    )


@pytest.mark.parametrize(
    ("sweep", "name", "key", "header"),
    [
        ("bim_table3_alpha.yaml", "table3", "pretrain.method.alpha", "alpha"),
        ("bim_table4_lambda_cc.yaml", "table4", "pretrain.method.lambda_cc", "lambda_CC"),
        ("bim_table5_k.yaml", "table5", "pretrain.method.k", "K"),
    ],
)
def test_bim_ablations_in_the_papers_order_with_its_values(
    sweep: str, name: str, key: str, header: str, tmp_path: Path
) -> None:
    ROW_INDEX.update({norm_label(lab): i for i, lab in enumerate(paper_table(name)["rows"])})
    df = plan_runs(sweep, lambda p: norm_label(p[key]), tmp_path)
    spec = load_sweep(SWEEPS / sweep)
    agg = aggregate(df, spec.tables[0], experiment=spec.name, base_dirs=[SWEEPS])
    md = render(agg, spec.tables[0], "md")

    def ours(label: str) -> list[float]:
        r = ROW_INDEX[norm_label(label)]
        return [30 + (100 * r + 5 * j + 1) / 100 for j in range(9)]

    check_render(md, paper_header(name), header, paper_rows(name), ours)


def test_a_swapped_row_column_or_paper_value_fails_the_check(tmp_path: Path) -> None:
    """The check above is not vacuous: each kind of mistake it guards against is caught."""
    raw = yaml.safe_load((SWEEPS / "bim_table2_promise12.yaml").read_text())
    groups = ["PROMISE12"]
    rows = [r for r in paper_rows("table2", groups) if r[0] != "Full Sup."]

    def check(md: str, paper: list = rows) -> None:
        ours = lambda r: expected_ours(r, 1)  # noqa: E731
        check_render(md, paper_header("table2", groups), "Methods", paper, ours)

    def md_of(change: Callable[[dict], None]) -> str:
        bad = copy.deepcopy(raw)
        change(bad)
        spec = parse_sweep(bad)
        return render_table2("bim_table2_promise12.yaml", tmp_path, spec)[0]

    check(md_of(lambda r: None))  # the shipped sweep passes

    def swap_rows(r: dict) -> None:  # the IIC row reads IMSAT's runs and vice versa
        t = r["tables"][0]["rows"]
        t["IIC (Dec)"], t["IMSAT (Dec)"] = t["IMSAT (Dec)"], t["IIC (Dec)"]

    def swap_columns(r: dict) -> None:  # '4 scans' shows the 6-scan runs
        r["tables"][0]["columns"][0]["labels"] = {4: "6 scans", 6: "4 scans", 8: "8 scans"}
        r["tables"][0]["columns"][0]["values"] = [6, 4, 8]

    for change in (swap_rows, swap_columns):
        with pytest.raises(AssertionError):
            check(md_of(change))
    misplaced = [(lab, list(v)) for lab, v in rows]
    misplaced[1][1][0], misplaced[1][1][1] = misplaced[1][1][1], misplaced[1][1][0]
    with pytest.raises(AssertionError):
        check(md_of(lambda r: None), misplaced)


# ----------------------------------------------------------- the papers file against the text
def _text_rows(start: str, n_values: int) -> dict[str, list[float]]:
    """Tab-separated rows of the seed text after the line starting with ``start``."""
    lines = SEED_TEXT.read_text().splitlines()
    first = next(i for i, ln in enumerate(lines) if ln.startswith(start))
    out: dict[str, list[float]] = {}
    for ln in lines[first + 1 : first + 20]:
        cells = ln.split("\t")
        nums = [c.strip() for c in cells[1:] if c.strip()]
        values = [
            float(re.sub(r"</?u>", "", c))
            for c in nums
            if re.fullmatch(r"(<u>)?\d+\.\d+(</u>)?", c)
        ]
        if len(values) == n_values and cells[0].strip():
            out.setdefault(cells[0].strip(), values)
    return out


@pytest.mark.parametrize(
    ("name", "start", "n"),
    [("table2", "Table 2:", 16), ("table4", "Table 4:", 9), ("table5", "Table 5:", 9)],
)
def test_every_cell_of_the_papers_file_at_its_place_in_the_text(
    name: str, start: str, n: int
) -> None:
    text = _text_rows(start, n)
    for label, values in paper_table(name)["rows"].items():
        if not isinstance(values, list):
            continue
        key = next((k for k in text if norm_label(k) == norm_label(label)), None)
        if key is None:  # the garbled last row of Table 2: its 15 legible values
            assert label == "Contrast (Enc)+Ours (Dec)"
            garbled = [ln for ln in SEED_TEXT.read_text().splitlines() if "Ours (¢" in ln][0]
            tail = [float(re.sub(r"</?u>", "", c)) for c in garbled.split("\t")[1:] if c]
            assert values[1:] == tail
            continue
        assert values == text[key], label


def test_bim_table7_in_the_papers_order_with_its_values(tmp_path: Path) -> None:
    """The shipped Table 7 sweep: two row groups (the pre-training method) of three batch sizes
    in the paper's order, each row's cells from its own variant's and B's runs, the group header
    above its rows and the paper's line under each row."""
    t = paper_table("table7")
    labels = [(g["group"], r, vals) for g in t["row_groups"] for r, vals in g["rows"].items()]
    ROW_INDEX.update({f"{g}|{r}": i for i, (g, r, _) in enumerate(labels)})
    df = plan_runs(
        "bim_table7_batch.yaml",
        lambda p: f"{p['pretrain.variant']}|{p['pretrain.data.unlabeled_batch_size']}",
        tmp_path,
    )
    spec = load_sweep(SWEEPS / "bim_table7_batch.yaml")
    agg = aggregate(df, spec.tables[0], experiment=spec.name, base_dirs=[SWEEPS])
    table = md_rows(render(agg, spec.tables[0], "md"))
    assert table[0] == ["B", *paper_header("table7")]
    body, k = table[1:], 0
    for group in t["row_groups"]:
        assert body[k][0] == f"*{group['group']}*" and not CELL.match(" ".join(body[k][1:]))
        k += 1
        for label, paper in group["rows"].items():
            mine, under = body[k], body[k + 1]
            assert mine[0] == label
            r = ROW_INDEX[f"{group['group']}|{label}"]
            got = [float(CELL.match(c).group(1)) for c in mine[1:]]  # type: ignore[union-attr]
            assert got == pytest.approx([30 + (100 * r + 5 * j + 1) / 100 for j in range(9)])
            assert under[0] == "↳ paper" and [float(x) for x in under[1:]] == paper
            k += 2
    assert k == len(body) == 2 + 2 * 6
