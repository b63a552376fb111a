"""Paper layouts built from a plain runs DataFrame (no MLflow): BIM Table 3 and Table 7."""

from __future__ import annotations

import itertools
from pathlib import Path

import pandas as pd
import pytest
import yaml

from segssl.report import ReportError, aggregate, check_tables, render
from segssl.table_spec import TableSpec

REPO = Path(__file__).resolve().parents[2]
SCANS = "labels: {1: 1 scan, 2: 2 scans, 4: 4 scans}"
TABLE3 = f"""
name: table3
title: Impact of alpha for L_MI (BIM Table 3)
stage: finetune
scale: 100
row_header: alpha
rows: [pretrain.method.alpha]
columns:
  - {{label: ACDC-LV, filter: {{data.target: lv}}, by: data.labeled_scans, {SCANS}}}
  - {{label: ACDC-RV, filter: {{data.target: rv}}, by: data.labeled_scans, {SCANS}}}
  - {{label: ACDC-Myo, filter: {{data.target: myo}}, by: data.labeled_scans, {SCANS}}}
paper: {{file: experiments/papers/bim.yaml, table: table3}}
"""


def _runs(keys: dict[str, list], value) -> pd.DataFrame:
    recs = []
    for i, combo in enumerate(itertools.product(*keys.values())):
        p = dict(zip(keys, combo, strict=True))
        recs.append(
            {
                "run_id": f"r{i}",
                "tags.segssl.stage": "finetune",
                **{f"params.{k}": str(v) for k, v in p.items()},
                "metrics.test/dsc": value(p),
            }
        )
    return pd.DataFrame(recs)


def test_bim_table3_layout_with_paper_numbers() -> None:
    spec = TableSpec.model_validate(yaml.safe_load(TABLE3))
    df = _runs(
        {
            "pretrain.method.alpha": [0, 0.25, 0.5, 0.75, 1],
            "data.target": ["lv", "rv", "myo"],
            "data.labeled_scans": [1, 2, 4],
            "seed": [0, 1, 2],
        },
        lambda p: 0.5 + float(p["pretrain.method.alpha"]) / 10 + int(p["seed"]) / 100,
    )
    agg = aggregate(df, spec, experiment="bim-alpha", base_dirs=[REPO])
    assert [r.label for r in agg.attrs["rows"]] == ["0", "0.25", "0.5", "0.75", "1"]
    assert len(agg) == 5 * 9
    cell = agg[
        (agg["row"] == "0.25") & (agg["col_group"] == "ACDC-RV") & (agg["col"] == "2 scans")
    ].iloc[0]
    assert cell["paper_mean"] == 59.73
    assert cell["mean"] == pytest.approx(53.5) and cell["std"] == pytest.approx(1.0)
    assert cell["n"] == 3
    assert (agg[agg["row"] == "1"]["mark"] == "best").all()
    assert (agg[agg["row"] == "0.75"]["mark"] == "second").all()
    md = render(agg, spec, "md")
    assert "| alpha | ACDC-LV 1 scan |" in md
    assert "| ↳ paper | 61.58 | 78.09 | 81.27 | 31.95 |" in md


def test_bim_table7_row_groups() -> None:
    spec = TableSpec.model_validate(
        {
            "name": "table7",
            "stage": "finetune",
            "scale": 100,
            "row_header": "B",
            "rows": [
                {
                    "label": "Contrast (Enc+Dec)",
                    "filter": {"pretrain.method.name": "contrast"},
                    "by": "pretrain.data.batch_size",
                },
                {
                    "label": "Ours (MI+CC)",
                    "filter": {"pretrain.method.name": "bim"},
                    "by": "pretrain.data.batch_size",
                },
            ],
            "columns": [
                {
                    "label": "ACDC-LV",
                    "filter": {"data.target": "lv"},
                    "by": "data.labeled_scans",
                    "values": [1],
                    "labels": {1: "1 scan"},
                }
            ],
            "paper": {"file": "experiments/papers/bim.yaml", "table": "table7"},
        }
    )
    df = _runs(
        {
            "pretrain.method.name": ["contrast", "bim"],
            "pretrain.data.batch_size": [6, 12, 18],
            "data.target": ["lv"],
            "data.labeled_scans": [1],
            "seed": [0, 1],
        },
        lambda p: 0.7 + int(p["pretrain.data.batch_size"]) / 100,
    )
    agg = aggregate(df, spec, experiment="bim-batch", base_dirs=[REPO])
    got = {(r["row_group"], r["row"]): r["paper_mean"] for r in agg.to_dict("records")}
    assert got[("Contrast (Enc+Dec)", "12")] == 75.52
    assert got[("Ours (MI+CC)", "12")] == 81.46
    assert got[("Ours (MI+CC)", "18")] == 84.04
    md = render(agg, spec, "md")
    assert md.index("| *Contrast (Enc+Dec)* |") < md.index("| *Ours (MI+CC)* |")
    html = render(agg, spec, "html")
    assert '<tr class="group"><td colspan="2"><i>Ours (MI+CC)</i></td></tr>' in html


GMI1 = {
    "name": "table1",
    "stage": "finetune",
    "scale": 100,
    "row_header": "Methods",
    "rows": {
        "Partial Supervision": {"method.name": "baseline"},
        "Ours (all)": {"method.name": "gmi"},
    },
    "columns": [
        {
            "label": "ACDC",
            "filter": {"data.dataset": "acdc"},
            "metrics": {
                "RV": "test/dsc/rv",
                "Myo": "test/dsc/myo",
                "LV": "test/dsc/lv",
                "Mean": "test/dsc",
            },
        },
        {"label": "Prostate", "filter": {"data.dataset": "promise12"}},
        {"label": "Spleen", "filter": {"data.dataset": "msd-spleen"}},
    ],
    "paper": {"file": "experiments/papers/gmi.yaml", "table": "table1"},
}


def _gmi_runs() -> pd.DataFrame:
    recs = []
    for i, (m, ds, seed) in enumerate(
        itertools.product(["baseline", "gmi"], ["acdc", "promise12", "msd-spleen"], [0, 1, 2])
    ):
        base = 0.5 if m == "baseline" else 0.8
        rec = {
            "run_id": f"r{i}",
            "tags.segssl.stage": "finetune",
            "params.method.name": m,
            "params.data.dataset": ds,
            "params.seed": str(seed),
            "metrics.test/dsc": base + seed / 100,
        }
        if ds == "acdc":
            rec.update(
                {
                    "metrics.test/dsc/rv": base - 0.1,
                    "metrics.test/dsc/myo": base,
                    "metrics.test/dsc/lv": base + 0.1 + seed / 50,
                }
            )
        recs.append(rec)
    return pd.DataFrame(recs)


def test_gmi_table1_per_class_metric_columns() -> None:
    spec = TableSpec.model_validate(GMI1)
    agg = aggregate(_gmi_runs(), spec, experiment="gmi", base_dirs=[REPO])
    got = {(r["row"], r["col_group"], r["col"]): r for r in agg.to_dict("records")}
    lv = got[("Ours (all)", "ACDC", "LV")]
    assert lv["mean"] == pytest.approx(92.0) and lv["std"] == pytest.approx(2.0)
    assert (lv["paper_mean"], lv["paper_std"]) == (91.76, 0.32)
    rv = got[("Partial Supervision", "ACDC", "RV")]
    assert rv["mean"] == pytest.approx(40.0) and rv["paper_mean"] == 57.67
    mean = got[("Ours (all)", "ACDC", "Mean")]
    assert mean["mean"] == pytest.approx(81.0) and mean["paper_mean"] == 85.76
    pro = got[("Ours (all)", None, "Prostate")]
    assert pro["mean"] == pytest.approx(81.0) and pro["paper_std"] == 0.71
    md = render(agg, spec, "md")
    assert "| ↳ paper | 57.67 ± 1.54 |" in md


def test_unknown_leaf_metric_is_named() -> None:
    bad = {
        **GMI1,
        "columns": [
            {"label": "ACDC", "filter": {"data.dataset": "acdc"}, "metrics": {"RV": "test/dsc/RV"}}
        ],
    }
    with pytest.raises(
        ReportError,
        match=r"'ACDC / RV' asks for metric 'test/dsc/RV', which no FINISHED run.*"
        r"metrics: test/dsc, test/dsc/lv, test/dsc/myo, test/dsc/rv",
    ):
        aggregate(_gmi_runs(), TableSpec.model_validate(bad), experiment="gmi")


def test_no_marks_when_every_row_ties_and_ties_share_a_mark() -> None:
    spec = TableSpec.model_validate(
        {"name": "t", "rows": ["method.name"], "columns": ["data.labeled_scans"]}
    )
    df = _runs(
        {"method.name": ["a", "b"], "data.labeled_scans": [1], "seed": [0, 1]}, lambda p: 0.5
    )
    agg = aggregate(df, spec)
    assert agg["mark"].tolist() == ["", ""]
    df = _runs(
        {"method.name": ["a", "b", "c"], "data.labeled_scans": [1], "seed": [0, 1]},
        lambda p: 0.4 if p["method.name"] == "c" else 0.5,
    )
    assert aggregate(df, spec)["mark"].tolist() == ["best", "best", "second"]


def _planned() -> list[tuple[str, dict]]:
    out = [
        ("pretrain", {"method.name": "bim", "method.alpha": a, "seed": s})
        for a in (0, 0.5)
        for s in (0, 1)
    ]
    out += [
        (
            "finetune",
            {
                "method.name": "finetune",
                "pretrain.method.alpha": a,
                "data.target": t,
                "data.labeled_scans": n,
                "seed": s,
            },
        )
        for a in (0, 0.5)
        for t in ("lv", "rv", "myo")
        for n in (1, 2, 4)
        for s in (0, 1)
    ]
    return out


def test_preflight_accepts_the_bim_table3_plan() -> None:
    spec = TableSpec.model_validate(yaml.safe_load(TABLE3))
    check_tables([spec], _planned(), name="bim-alpha", base_dirs=[REPO])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"stage": "fine-tune"}, "stage 'fine-tune' has no planned trials"),
        (
            {"rows": ["method.alpha"]},
            r"rows\[0\] names param 'method.alpha'.*did you mean "
            r"'pretrain.method.alpha'",
        ),
        (
            {"paper": {"file": "experiments/papers/bim.yaml", "table": "table9"}},
            r"no table 'table9' \(tables: table2, table3",
        ),
        ({"labels": {"data.labeled_scans": {1: "one"}}}, "has no column 'ACDC-LV / one'"),
    ],
)
def test_preflight_names_problems_before_any_run(change: dict, match: str) -> None:
    raw = {**yaml.safe_load(TABLE3), **change}
    if "labels" in change:  # group labels win over table labels: drop them
        raw["columns"] = [{k: v for k, v in g.items() if k != "labels"} for g in raw["columns"]]
    with pytest.raises(ReportError, match=match):
        check_tables([TableSpec.model_validate(raw)], _planned(), base_dirs=[REPO])


def test_key_list_columns_nested_with_labels_order_and_group_mean() -> None:
    spec = TableSpec.model_validate(
        {
            "name": "table2",
            "stage": "finetune",
            "scale": 100,
            "row_header": "Methods",
            "rows": ["method.name"],
            "columns": ["data.target", "data.labeled_scans"],
            "labels": {
                "method.name": {"baseline": "Baseline", "bim": "Ours (Dec) (MI+CC)"},
                "data.target": {"lv": "ACDC-LV", "rv": "ACDC-RV", "myo": "ACDC-Myo"},
                "data.labeled_scans": {1: "1 scan", 2: "2 scans", 4: "4 scans"},
            },
            "group_mean": True,
            "paper": {"file": "experiments/papers/bim.yaml", "table": "table2"},
        }
    )
    df = _runs(
        {
            "method.name": ["bim", "baseline"],
            "data.target": ["myo", "rv", "lv"],
            "data.labeled_scans": [4, 2, 1],
            "seed": [0, 1],
        },
        lambda p: 0.5 + int(p["data.labeled_scans"]) / 10 + int(p["seed"]) / 100,
    )
    agg = aggregate(df, spec, experiment="bim", base_dirs=[REPO])
    assert [r.label for r in agg.attrs["rows"]] == ["Baseline", "Ours (Dec) (MI+CC)"]
    assert [c.display for c in agg.attrs["columns"]][:5] == [
        "ACDC-LV / 1 scan",
        "ACDC-LV / 2 scans",
        "ACDC-LV / 4 scans",
        "ACDC-LV / mean",
        "ACDC-RV / 1 scan",
    ]
    assert [c.group for c in agg.attrs["columns"]][-1] == "ACDC-Myo"
    got = {(r["row"], r["col_group"], r["col"]): r for r in agg.to_dict("records")}
    mean = got[("Baseline", "ACDC-RV", "mean")]
    assert mean["mean"] == pytest.approx(100 * (0.5 + 7 / 30 + 0.005))
    assert mean["paper_mean"] == 58.84  # our mean is over the paper's three columns
    assert got[("Ours (Dec) (MI+CC)", "ACDC-Myo", "4 scans")]["paper_mean"] == 81.97


@pytest.mark.parametrize(
    ("flags", "expected", "absent"),
    [
        (["True"], "at its best validation epoch (val/dsc)", "last epoch"),
        (["False"], "at its last epoch (train.save_best=false)", "best validation epoch"),
        (["True", "False"], "runs with train.save_best=false at their last epoch", "as in the"),
    ],
)
def test_caption_states_the_epoch_the_runs_were_tested_at(
    flags: list[str], expected: str, absent: str
) -> None:
    spec = TableSpec.model_validate(
        {"name": "t", "metric": "test/dsc", "rows": ["method.name"], "columns": ["data.target"]}
    )
    df = _runs(
        {"method.name": ["a", "b"], "data.target": ["lv"], "seed": [0, 1]},
        lambda p: 0.5 + int(p["seed"]) / 10,
    )
    df["params.train.save_best"] = [flags[i % len(flags)] for i in range(len(df))]
    caption = aggregate(df, spec).attrs["caption"]
    assert expected in caption and absent not in caption


def _sweep_table(file: str, name: str) -> TableSpec:
    spec = yaml.safe_load((REPO / "experiments" / "sweeps" / file).read_text())
    raw = next(t for t in spec["tables"] if t["name"] == name)
    raw["paper"] = raw.get("paper") and {**raw["paper"], "file": "experiments/papers/gmi.yaml"}
    return TableSpec.model_validate({k: v for k, v in raw.items() if v is not None})


def test_gmi_fig4_curve_over_the_labeled_ratio(tmp_path: Path) -> None:
    from segssl.report.curves import plot_table_figure

    spec = _sweep_table("gmi_fig4_ratio.yaml", "fig4")
    ratios = ["2%", "3%", "4%", "5%", "10%", "20%", "30%", "40%", "50%"]
    recs = []
    for i, (m, teacher, r, seed) in enumerate(
        itertools.product(["baseline", "gmi"], ["false", "true"], ratios, [0, 1, 2])
    ):
        if m == "baseline" and teacher == "true":
            continue
        value = 0.5 + float(r[:-1]) / 200 + (0.05 if teacher == "true" else 0) + seed / 100
        recs.append(
            {
                "run_id": f"r{i}",
                "tags.segssl.stage": "gmi",
                "params.method.name": m,
                "params.method.teacher": teacher if m == "gmi" else None,
                "params.data.labeled_scans": r,
                "params.seed": str(seed),
                "metrics.best_val/dsc": value,
            }
        )
    df = pd.DataFrame(recs)
    spec = spec.model_copy(update={"rows": {k: v for k, v in spec.rows.items() if "Mean" not in k}})
    agg = aggregate(df, spec.model_copy(update={"select": None}), experiment="gmi-fig4")
    assert [r.label for r in agg.attrs["rows"]] == [
        "Partial Supervision",
        "Ours",
        "Ours (enhanced)",
    ]
    enh = agg[agg["row"] == "Ours (enhanced)"]
    assert enh["col"].tolist() == ratios  # the ratios in the figure's order
    assert enh["mean"].tolist() == pytest.approx([55 + float(r[:-1]) / 2 + 1 for r in ratios])
    assert enh["std"].tolist() == pytest.approx([1.0] * 9) and enh["n"].tolist() == [3] * 9
    png = plot_table_figure(agg, tmp_path / "fig4.png")[0]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gmi_table2_rows_in_the_paper_order_with_its_numbers() -> None:
    spec = _sweep_table("gmi_table2_layers.yaml", "table2")
    labels = list(spec.rows)
    df = pd.DataFrame(
        [
            {
                "run_id": f"r{i}{s}",
                "tags.segssl.stage": "gmi",
                "params.variant": lab,
                "params.seed": str(s),
                "metrics.best_val/dsc": 0.8,
                "metrics.best_val/dsc/RV": 0.7,
                "metrics.best_val/dsc/Myo": 0.8,
                "metrics.best_val/dsc/LV": 0.9,
            }
            for i, lab in enumerate(labels)
            for s in range(3)
        ]
    )
    agg = aggregate(df, spec, experiment="gmi-table2", base_dirs=[REPO])
    assert [r.label for r in agg.attrs["rows"]][:3] == ["Conv5", "Upconv5", "Upconv4"]
    last = agg[(agg["row"] == "Conv5 + Upconv3 + Upconv2") & (agg["col"] == "Mean")].iloc[0]
    assert last["mean"] == pytest.approx(80.0) and last["paper_mean"] == 85.76
    assert "| Conv5 + Upconv3 + Upconv2 |" in render(agg, spec, "md")
