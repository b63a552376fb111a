"""Paper layouts built from a plain runs DataFrame (no MLflow): BIM Table 3 and Table 7."""

from __future__ import annotations

import itertools
from pathlib import Path

import pandas as pd
import pytest
import yaml

from segssl.orchestrate.table_spec import TableSpec
from segssl.report import aggregate, render

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
