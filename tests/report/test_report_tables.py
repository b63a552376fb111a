"""Table tests on a hand-built MLflow store with known metric values."""

from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from scipy import stats

from segssl.report import (
    ReportError,
    aggregate,
    load_runs,
    plot_curves,
    render,
    render_sweep_tables,
)
from segssl.report.curves import curve_frame
from segssl.report.runs import load_history
from segssl.table_spec import TableSpec

EXP = "tsweep"
SEEDS = (0, 1, 2)
# test/dsc per seed 0, 1, 2 for (method, target, labeled_scans); None: no run for that seed
VALUES: dict[tuple[str, str, int], list[float | None]] = {
    ("baseline", "lv", 1): [0.60, 0.64, 0.62],
    ("baseline", "lv", 2): [0.70, 0.71, 0.75],
    ("baseline", "rv", 1): [0.50, 0.52, 0.47],
    ("baseline", "rv", 2): [0.55, 0.59, 0.60],
    ("bim", "lv", 1): [0.80, 0.83, 0.81],
    ("bim", "lv", 2): [0.85, 0.88, 0.86],
    ("bim", "rv", 1): [0.70, 0.66, 0.69],
    ("bim", "rv", 2): [0.72, 0.78, None],  # seed 2 missing: n = 2
    ("iic", "lv", 1): [0.65, 0.70, 0.66],
    ("iic", "lv", 2): [0.74, 0.70, 0.77],
    ("iic", "rv", 1): [0.68, 0.69, 0.70],
    ("iic", "rv", 2): [0.60, 0.61, 0.59],
}
# mean teacher, two EMA decays: 0.99 has the better validation score, 0.9 the better test
MT = {
    0.9: {"test": [0.90, 0.91, 0.92], "val": [0.60, 0.61, 0.62]},
    0.99: {"test": [0.75, 0.76, 0.77], "val": [0.70, 0.69, 0.71]},
}


def _val_history(final_test: float) -> list[float]:
    """Per-epoch val/dsc of a run: rises then dips (max at epoch 2)."""
    return [final_test - 0.2, final_test - 0.05, final_test + 0.01, final_test - 0.03]


def _log(
    client: MlflowClient,
    exp_id: str,
    parent: str,
    params: dict,
    metrics: dict,
    tags: dict,
    history: list[float] | None,
    status: str = "FINISHED",
) -> str:
    run = client.create_run(exp_id, tags={"mlflow.parentRunId": parent, **tags})
    rid = run.info.run_id
    ms = [Metric(k, float(v), 0, 0) for k, v in metrics.items()]
    if history is not None:
        ms += [Metric("val/dsc", float(v), 1000 + e, e) for e, v in enumerate(history)]
    client.log_batch(rid, metrics=ms, params=[Param(k, str(v)) for k, v in params.items()])
    if status != "RUNNING":
        client.set_terminated(rid, status=status)
    return rid


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(EXP, artifact_location=str(root / "artifacts"))
    parent = client.create_run(exp_id, tags={"segssl.role": "parent", "segssl.sweep": EXP})
    pid = parent.info.run_id
    client.log_metric(pid, "test/dsc", 0.0)
    client.set_terminated(pid, "FINISHED")
    finished, ignored = [], []
    n = 0
    for (method, target, ls), vals in VALUES.items():
        for seed, v in zip(SEEDS, vals, strict=True):
            if v is None:
                continue
            n += 1
            params = {
                "method.name": method,
                "data.target": target,
                "data.labeled_scans": ls,
                "seed": seed,
                "train.init_from": f"/store/trials/p{n}/last.pt",
                "pretrain.method.alpha": 0.5,
            }
            tags = {"segssl.stage": "finetune", "segssl.trial_key": f"k{n}", "segssl.sweep": EXP}
            metrics = {"test/dsc": v, "best_epoch": 2, "test/dsc/lv": v}
            finished.append(_log(client, exp_id, pid, params, metrics, tags, _val_history(v)))
    # a second FINISHED run of trial k1 (same value): only the latest run of a key is kept
    k1 = {
        "method.name": "baseline",
        "data.target": "lv",
        "data.labeled_scans": 1,
        "seed": 0,
        "train.init_from": "/store/trials/p1/last.pt",
        "pretrain.method.alpha": 0.5,
    }
    superseded = finished[0]
    finished[0] = _log(
        client,
        exp_id,
        pid,
        k1,
        {"test/dsc": 0.60},
        {"segssl.stage": "finetune", "segssl.trial_key": "k1"},
        _val_history(0.6),
    )
    for ema, d in MT.items():
        for seed in SEEDS:
            n += 1
            params = {
                "method.name": "mt",
                "method.ema": ema,
                "data.target": "lv",
                "data.labeled_scans": 1,
                "seed": seed,
                "train.init_from": f"/store/trials/p{n}/last.pt",
            }
            tags = {"segssl.stage": "finetune", "segssl.trial_key": f"k{n}"}
            val = d["val"][seed]
            hist = [val - 0.1, val, val - 0.02]
            finished.append(
                _log(client, exp_id, pid, params, {"test/dsc": d["test"][seed]}, tags, hist)
            )
    # runs that must be ignored: unfinished attempts with absurd values, a pre-training run
    bad = {"method.name": "bim", "data.target": "lv", "data.labeled_scans": 1, "seed": 0}
    for st in ("RUNNING", "FAILED", "KILLED"):
        ignored.append(
            _log(
                client,
                exp_id,
                pid,
                bad,
                {"test/dsc": 0.01},
                {"segssl.stage": "finetune", "segssl.trial_key": f"bad-{st}"},
                [0.01],
                st,
            )
        )
    pre = _log(
        client,
        exp_id,
        pid,
        {"method.name": "bim", "method.alpha": 0.5, "seed": 0},
        {"train/loss": 1.0},
        {"segssl.stage": "pretrain", "segssl.trial_key": "pre0"},
        None,
    )
    # a run of another experiment with the same params must not leak in
    other = client.create_experiment("other")
    _log(
        client,
        other,
        "x",
        {**bad, "data.labeled_scans": 1},
        {"test/dsc": 0.02},
        {"segssl.stage": "finetune"},
        None,
    )
    # a later sweep invocation, tagged the runner's way (segssl.kind=sweep), with a child tag
    # pointing nowhere: still a parent, never a table run; the artifact goes to the latest
    later = client.create_run(exp_id, tags={"segssl.kind": "sweep", "mlflow.parentRunId": "x"})
    client.log_metric(later.info.run_id, "test/dsc", 0.0)
    client.set_terminated(later.info.run_id, "FINISHED")
    return {
        "uri": uri,
        "latest_parent": later.info.run_id,
        "superseded": superseded,
        "client": client,
        "parent": pid,
        "finished": finished,
        "ignored": ignored,
        "pretrain": pre,
        "df": load_runs(uri, EXP),
    }


def _spec(**kw) -> TableSpec:
    base = {
        "name": "t2",
        "title": "Fine-tuning",
        "stage": "finetune",
        "metric": "test/dsc",
        "scale": 100,
        "rows": {
            "Baseline": {"method.name": "baseline"},
            "Ours": {"method.name": "bim"},
            "IIC": {"method.name": "iic"},
        },
        "columns": [
            {
                "label": "ACDC-LV",
                "filter": {"data.target": "lv"},
                "by": "data.labeled_scans",
                "labels": {1: "1 scan", 2: "2 scans"},
                "mean": True,
            },
            {
                "label": "ACDC-RV",
                "filter": {"data.target": "rv"},
                "by": "data.labeled_scans",
                "labels": {1: "1 scan", 2: "2 scans"},
                "mean": True,
            },
        ],
    }
    base.update(kw)
    return TableSpec.model_validate(base)


def _cell(agg: pd.DataFrame, row: str, group: str | None, col: str) -> dict:
    hit = agg[(agg["row"] == row) & (agg["col"] == col)]
    hit = hit[hit["col_group"].isna()] if group is None else hit[hit["col_group"] == group]
    assert len(hit) == 1, (row, group, col)
    return hit.iloc[0].to_dict()


def _vals(method: str, target: str, ls: int) -> np.ndarray:
    return np.array([v for v in VALUES[(method, target, ls)] if v is not None]) * 100


# ------------------------------------------------------------------------------- loading
def test_load_runs_keeps_only_finished_child_runs(store: dict) -> None:
    df = store["df"]
    assert set(df["run_id"]) == set(store["finished"]) | {store["pretrain"]}
    assert store["parent"] not in set(df["run_id"])
    assert store["latest_parent"] not in set(df["run_id"])
    assert store["superseded"] not in set(df["run_id"])
    assert df["tags.segssl.trial_key"].is_unique
    paged = load_runs(store["uri"], EXP, page_size=7)  # several search_runs pages
    assert sorted(paged["run_id"]) == sorted(df["run_id"])
    assert not set(store["ignored"]) & set(df["run_id"])
    assert (df["status"] == "FINISHED").all()
    assert df["params.seed"].map(type).eq(str).all()


def test_load_runs_unknown_experiment_is_named(store: dict) -> None:
    with pytest.raises(ReportError, match="no MLflow experiment named 'nope'"):
        load_runs(store["uri"], "nope")


# --------------------------------------------------------------------------- aggregation
def test_means_stds_and_n_per_cell(store: dict) -> None:
    agg = aggregate(store["df"], _spec(), experiment=EXP)
    for row, method in (("Baseline", "baseline"), ("Ours", "bim"), ("IIC", "iic")):
        for grp, target in (("ACDC-LV", "lv"), ("ACDC-RV", "rv")):
            for col, ls in (("1 scan", 1), ("2 scans", 2)):
                c = _cell(agg, row, grp, col)
                v = _vals(method, target, ls)
                assert c["mean"] == pytest.approx(v.mean())
                assert c["std"] == pytest.approx(v.std(ddof=1))
                assert c["n"] == len(v)
    assert _cell(agg, "Ours", "ACDC-RV", "2 scans")["n"] == 2
    assert agg.attrs["empty"] == "" and "Empty" not in agg.attrs["caption"]
    assert _cell(agg, "Ours", "ACDC-RV", "2 scans")["seeds"] == "0,1"
    # the unfinished runs (test/dsc 0.01) do not pull Ours / ACDC-LV / 1 scan down
    assert _cell(agg, "Ours", "ACDC-LV", "1 scan")["mean"] == pytest.approx(81.3333333)


def test_group_mean_column_averages_leaves_per_seed(store: dict) -> None:
    agg = aggregate(store["df"], _spec(), experiment=EXP)
    per_seed = (_vals("baseline", "lv", 1) + _vals("baseline", "lv", 2)) / 2
    c = _cell(agg, "Baseline", "ACDC-LV", "mean")
    assert c["mean"] == pytest.approx(per_seed.mean())
    assert c["std"] == pytest.approx(per_seed.std(ddof=1))
    assert c["n"] == 3
    # Ours/RV: seed 2 lacks the 2-scan run, so only seeds 0 and 1 enter the mean column
    ours = (_vals("bim", "rv", 1)[:2] + _vals("bim", "rv", 2)) / 2
    c = _cell(agg, "Ours", "ACDC-RV", "mean")
    assert (c["n"], c["mean"]) == (2, pytest.approx(ours.mean()))


def test_best_bold_second_underlined_per_column(store: dict) -> None:
    agg = aggregate(store["df"], _spec(), experiment=EXP)
    marks = {(r["row"], r["col_group"], r["col"]): r["mark"] for r in agg.to_dict("records")}
    assert marks[("Ours", "ACDC-LV", "1 scan")] == "best"
    assert marks[("IIC", "ACDC-LV", "1 scan")] == "second"
    assert marks[("Baseline", "ACDC-LV", "1 scan")] == ""
    # RV 2 scans: Ours 75.0 > IIC 60.0 > Baseline 58.0
    assert marks[("IIC", "ACDC-RV", "2 scans")] == "second"
    assert marks[("Baseline", "ACDC-RV", "2 scans")] == ""
    low = aggregate(store["df"], _spec(bold="min"), experiment=EXP)
    assert _cell(low, "Baseline", "ACDC-LV", "1 scan")["mark"] == "best"
    assert _cell(low, "IIC", "ACDC-LV", "1 scan")["mark"] == "second"
    excl = aggregate(store["df"], _spec(rank_exclude=["Ours"]), experiment=EXP)
    assert _cell(excl, "Ours", "ACDC-LV", "1 scan")["mark"] == ""
    assert _cell(excl, "IIC", "ACDC-LV", "1 scan")["mark"] == "best"
    # two ranked rows: the other one is not "second best", and the caption does not say so
    assert _cell(excl, "Baseline", "ACDC-LV", "1 scan")["mark"] == ""
    assert "second best" not in excl.attrs["caption"]
    assert "underlined: second best" in agg.attrs["caption"]
    md, page = render(excl, _spec(rank_exclude=["Ours"]), "md"), render(agg, _spec(), "html")
    assert "<u>" not in md and "<u>" in page


def test_title_is_written_once(store: dict) -> None:
    """Markdown shows the title above the table and HTML in its caption, each once."""
    spec = _spec(title="Test DSC on ACDC")
    agg = aggregate(store["df"], spec, experiment=EXP)
    for fmt in ("md", "html"):
        text = render(agg, spec, fmt)
        assert text.count("Test DSC on ACDC") == 1, (fmt, text)


@pytest.mark.parametrize("test", ["ttest_rel", "wilcoxon"])
def test_paired_test_matches_scipy(store: dict, test: str) -> None:
    spec = _spec(paired_test={"reference": "Baseline", "test": test, "alternative": "greater"})
    agg = aggregate(store["df"], spec, experiment=EXP)
    fn = stats.ttest_rel if test == "ttest_rel" else stats.wilcoxon
    iic = fn(_vals("iic", "lv", 2), _vals("baseline", "lv", 2), alternative="greater").pvalue
    ours = fn(_vals("bim", "lv", 2), _vals("baseline", "lv", 2), alternative="greater").pvalue
    assert _cell(agg, "IIC", "ACDC-LV", "2 scans")["p_raw"] == pytest.approx(iic)
    # Holm across the column's two compared rows (Ours, IIC), written out
    lo, hi = sorted([iic, ours])
    holm = {lo: min(2 * lo, 1.0), hi: min(max(2 * lo, hi), 1.0)}
    assert _cell(agg, "IIC", "ACDC-LV", "2 scans")["p_value"] == pytest.approx(holm[iic])
    assert _cell(agg, "Ours", "ACDC-LV", "2 scans")["p_value"] == pytest.approx(holm[ours])
    # matched by seed: Ours/RV/2 scans has seeds 0, 1 only
    want = fn(_vals("bim", "rv", 2), _vals("baseline", "rv", 2)[:2], alternative="greater")
    assert _cell(agg, "Ours", "ACDC-RV", "2 scans")["p_raw"] == pytest.approx(want.pvalue)
    assert math.isnan(_cell(agg, "Baseline", "ACDC-LV", "1 scan")["p_value"])
    plain = _spec(
        paired_test={
            "reference": "Baseline",
            "test": test,
            "alternative": "greater",
            "correction": "none",
        }
    )
    agg = aggregate(store["df"], plain, experiment=EXP)
    assert _cell(agg, "IIC", "ACDC-LV", "2 scans")["p_value"] == pytest.approx(iic)


def test_best_val_selection_picks_config_by_validation(store: dict) -> None:
    spec = _spec(
        rows={"MT": {"method.name": "mt"}},
        columns=[
            {
                "label": "ACDC-LV",
                "filter": {"data.target": "lv"},
                "by": "data.labeled_scans",
                "values": [1],
            }
        ],
        select={"rule": "best_val", "keys": ["method.ema"]},
    )
    agg = aggregate(store["df"], spec, experiment=EXP, tracking_uri=store["uri"])
    c = _cell(agg, "MT", "ACDC-LV", "1")
    assert c["selected"] == "method.ema=0.99"
    assert c["mean"] == pytest.approx(np.mean(MT[0.99]["test"]) * 100)
    assert c["n"] == 3
    # the shorthand with keys inferred (train.init_from differs per run but is ignored)
    auto = aggregate(
        store["df"],
        spec.model_copy(update={"select": _spec(select="best_val").select}),
        experiment=EXP,
        tracking_uri=store["uri"],
    )
    assert _cell(auto, "MT", "ACDC-LV", "1")["selected"] == "method.ema=0.99"
    # selecting on the minimum picks the other decay
    worst = _spec(
        **{**spec.model_dump(exclude={"select"}), "select": {"keys": ["method.ema"], "mode": "min"}}
    )
    agg = aggregate(store["df"], worst, experiment=EXP, tracking_uri=store["uri"])
    assert _cell(agg, "MT", "ACDC-LV", "1")["selected"] == "method.ema=0.9"


def test_selection_names_only_the_keys_the_candidates_differ_in(store: dict) -> None:
    """GMI Table 1 selects over method.w_ent and method.w_cons: a row with only one of them (or
    none) printed 'method.w_ent=nan, method.w_cons=1' in its 'Selected configurations'."""
    spec = _spec(
        rows={"MT": {"method.name": "mt"}, "Baseline": {"method.name": "baseline"}},
        columns=[
            {
                "label": "ACDC-LV",
                "filter": {"data.target": "lv"},
                "by": "data.labeled_scans",
                "values": [1],
            }
        ],
        select={"rule": "best_val", "keys": ["method.ema", "method.name"]},
    )
    agg = aggregate(store["df"], spec, experiment=EXP, tracking_uri=store["uri"])
    assert _cell(agg, "MT", "ACDC-LV", "1")["selected"] == "method.ema=0.99"
    assert _cell(agg, "Baseline", "ACDC-LV", "1")["selected"] == ""


def test_history_max_is_the_selection_score(store: dict) -> None:
    rid = store["finished"][0]
    hist = load_history(store["uri"], [rid], "val/dsc")
    assert list(hist["step"]) == [0, 1, 2, 3]
    assert hist["value"].max() == pytest.approx(0.60 + 0.01)


def test_key_rows_and_spanning_rows(store: dict) -> None:
    spec = _spec(
        rows=["method.name"],
        labels={"method.name": {"bim": "Ours"}},
        filter={"method.name": ["baseline", "bim"]},
    )
    agg = aggregate(store["df"], spec, experiment=EXP)
    # values named in `labels` come first, in that order; the others follow, sorted
    assert [r.label for r in agg.attrs["rows"]] == ["Ours", "baseline"]
    assert agg.attrs["row_header"] == "method.name"
    # a row fixing a column key spans the columns of that key (like "Full Sup.")
    span = _spec(rows={"Base 2 scans": {"method.name": "baseline", "data.labeled_scans": 2}})
    agg = aggregate(store["df"], span, experiment=EXP)
    one = _cell(agg, "Base 2 scans", "ACDC-LV", "1 scan")
    two = _cell(agg, "Base 2 scans", "ACDC-LV", "2 scans")
    assert one["mean"] == two["mean"] == pytest.approx(_vals("baseline", "lv", 2).mean())


# --------------------------------------------------------------------------------- paper
PAPER = textwrap.dedent(
    """
    paper: test paper
    tables:
      tx:
        columns:
          - {group: ACDC-RV, leaves: [1 scan, 2 scans, mean]}
          - {group: ACDC-LV, leaves: [1 scan, 2 scans, 4 scans, mean]}
        rows:
          IIC: [1.1, 1.2, 1.3, 2.1, 2.2, 2.4, 2.3]
          Ours: [3.1, 3.2, [3.3, 0.4], 4.1, 4.2, 4.4, null]
          Baseline: {ACDC-RV: 5.0, ACDC-LV: [6.1, 6.2, 6.4, 6.3]}
          Extra: [0, 0, 0, 0, 0, 0, 0]
    """
)


@pytest.fixture()
def paper_file(tmp_path: Path) -> Path:
    p = tmp_path / "papers" / "test.yaml"
    p.parent.mkdir()
    p.write_text(PAPER)
    return p


def test_paper_numbers_aligned_to_cells(store: dict, paper_file: Path) -> None:
    spec = _spec(paper={"file": "papers/test.yaml", "table": "tx"})
    agg = aggregate(store["df"], spec, experiment=EXP, base_dirs=[paper_file.parent.parent])
    assert _cell(agg, "IIC", "ACDC-LV", "2 scans")["paper_mean"] == 2.2
    assert _cell(agg, "IIC", "ACDC-RV", "1 scan")["paper_mean"] == 1.1
    assert _cell(agg, "Ours", "ACDC-RV", "mean")["paper_mean"] == 3.3
    assert _cell(agg, "Ours", "ACDC-RV", "mean")["paper_std"] == 0.4
    assert math.isnan(_cell(agg, "Ours", "ACDC-LV", "mean")["paper_mean"])
    assert _cell(agg, "Baseline", "ACDC-RV", "2 scans")["paper_mean"] == 5.0
    # the paper's LV mean is over 1, 2 and 4 scans, ours over 1 and 2: not aligned
    assert math.isnan(_cell(agg, "Baseline", "ACDC-LV", "mean")["paper_mean"])
    assert "The paper's 'mean' is left out" in agg.attrs["caption"]
    md = render(agg, spec, "md")
    assert "| ↳ paper | 2.10 | 2.20 | – | 1.10 | 1.20 | 1.30 |" in md


@pytest.mark.parametrize(
    ("paper", "match"),
    [
        ({"file": "papers/none.yaml", "table": "tx"}, "papers/none.yaml' does not exist"),
        ({"file": "papers/test.yaml", "table": "t9"}, r"no table 't9' \(tables: tx\)"),
    ],
)
def test_paper_file_or_table_missing(
    store: dict, paper_file: Path, paper: dict, match: str
) -> None:
    with pytest.raises(ReportError, match=match):
        aggregate(
            store["df"], _spec(paper=paper), experiment=EXP, base_dirs=[paper_file.parent.parent]
        )


def test_paper_row_or_column_mismatch_named(store: dict, paper_file: Path) -> None:
    ref = {"file": str(paper_file), "table": "tx"}
    rows = {"Baseline": {"method.name": "baseline"}, "Mean Teacher": {"method.name": "mt"}}
    with pytest.raises(ReportError, match="has no row 'Mean Teacher'"):
        aggregate(
            store["df"],
            _spec(rows=rows, paper=ref),
            experiment=EXP,
            tracking_uri=store["uri"],
            base_dirs=[],
        )
    cols = [{"label": "ACDC-LV", "filter": {"data.target": "lv"}, "by": "data.labeled_scans"}]
    with pytest.raises(ReportError, match="has no column 'ACDC-LV / 1'"):
        aggregate(store["df"], _spec(columns=cols, paper=ref), experiment=EXP)


# ------------------------------------------------------------------------------- formats
def test_every_format_contains_the_values(store: dict) -> None:
    spec = _spec(paired_test={"reference": "Baseline"})
    agg = aggregate(store["df"], spec, experiment=EXP)
    best = _cell(agg, "Ours", "ACDC-LV", "1 scan")
    second = _cell(agg, "IIC", "ACDC-LV", "1 scan")
    b = f"{best['mean']:.2f} ± {best['std']:.2f} (3)"
    s = f"{second['mean']:.2f} ± {second['std']:.2f} (3)"
    md = render(agg, spec, "md")
    assert f"**{b}**" in md and f"<u>{s}</u>" in md
    assert "| ACDC-LV 1 scan | ACDC-LV 2 scans | ACDC-LV mean |" in md
    assert "mean ± std over seeds (std with ddof=1)" in md
    assert "best validation epoch" in md and "paired ttest_rel" in md
    tex = render(agg, spec, "latex")
    assert f"\\textbf{{{best['mean']:.2f} $\\pm$ {best['std']:.2f}}}" in tex
    assert f"\\underline{{{second['mean']:.2f} $\\pm$ {second['std']:.2f}}}" in tex
    assert "\\multicolumn{3}{c}{ACDC-LV}" in tex and "\\cmidrule(lr){2-4}" in tex
    html = render(agg, spec, "html")
    assert f"<b>{b}</b>" in html and f"<u>{s}</u>" in html
    assert '<th colspan="3">ACDC-LV</th>' in html
    back = pd.read_csv(io.StringIO(render(agg, spec, "csv")))
    assert len(back) == len(agg) == 3 * 6
    row = back[
        (back["row"] == "Ours") & (back["col_group"] == "ACDC-RV") & (back["col"] == "2 scans")
    ].iloc[0]
    assert row["mean"] == pytest.approx(75.0) and row["n"] == 2
    assert row["values"] == "72.0;78.0" and row["seeds"] == "0,1"
    assert row["p_raw"] == pytest.approx(
        stats.ttest_rel(_vals("bim", "rv", 2), _vals("baseline", "rv", 2)[:2]).pvalue
    )
    with pytest.raises(ReportError, match="unknown table format 'pdf'"):
        render(agg, spec, "pdf")


def test_render_logs_artifact_and_curves(store: dict, tmp_path: Path) -> None:
    from matplotlib import pyplot as plt

    spec = _spec()
    bands: list = []
    real = plt.Axes.fill_between

    def fill(ax, x, lo, hi, **kw):  # record the std bands of both figures
        bands.append((np.asarray(lo, float), np.asarray(hi, float)))
        return real(ax, x, lo, hi, **kw)

    plt.Axes.fill_between = fill
    try:
        text = render_sweep_tables(EXP, [spec], store["uri"], "csv", curves_dir=tmp_path)
    finally:
        plt.Axes.fill_between = real
    client: MlflowClient = store["client"]
    arts = [a.path for a in client.list_artifacts(store["latest_parent"], "tables")]
    assert arts == ["tables/tsweep.csv"]
    assert not client.list_artifacts(store["parent"], "tables")
    local = client.download_artifacts(store["latest_parent"], "tables/tsweep.csv", str(tmp_path))
    assert Path(local).read_text() == text
    # the validation-Dice-per-epoch curves and the rows-over-columns figure, as PNG and PDF
    for stem in ("t2_curves", "t2_figure"):
        assert (tmp_path / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (tmp_path / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"
    assert bands and any((hi > lo).any() for lo, hi in bands)  # std bands over seeds drawn


def test_curve_frame_mean_and_std_over_seeds(store: dict) -> None:
    agg = aggregate(store["df"], _spec(), experiment=EXP)
    ids = _cell(agg, "Baseline", "ACDC-LV", "1 scan")["run_ids"]
    hist = load_history(store["uri"], ids, "val/dsc")
    cf = curve_frame(hist, ids).set_index("step")
    want = np.array([0.60, 0.64, 0.62]) + 0.01
    assert cf.loc[2, "mean"] == pytest.approx(want.mean())
    assert cf.loc[2, "std"] == pytest.approx(want.std(ddof=1))
    assert cf.loc[2, "n"] == 3
    out = plot_curves(agg, store["uri"], Path(store["uri"][10:]).parent / "c.png")
    # every row's series is drawn: pixels of its line colour (matplotlib's C0, C1, C2) in each
    # of the figure's panels, not an empty set of axes
    from matplotlib import colors
    from matplotlib import image as mpimg

    png = mpimg.imread(out)[..., :3]
    panels = np.array_split(png, len([c for c in agg.attrs["columns"] if not c.is_mean]), axis=1)
    for i, row in enumerate(["Baseline", "Ours", "IIC"]):
        rgb = np.array(colors.to_rgb(f"C{i}"))
        for j, panel in enumerate(panels):
            hits = int((np.abs(panel - rgb).max(axis=-1) < 0.08).sum())
            assert hits > 30, (row, j, hits)


def test_curves_refuse_an_empty_figure(store: dict, monkeypatch, tmp_path: Path) -> None:
    """Histories that belong to none of the table's runs would give blank panels: an error."""
    import segssl.report.curves as curves_mod

    agg = aggregate(store["df"], _spec(), experiment=EXP)
    other = pd.DataFrame({"run_id": ["nobody"] * 3, "step": [0, 1, 2], "value": [0.1, 0.2, 0.3]})
    monkeypatch.setattr(curves_mod, "load_history", lambda *a, **k: other)
    with pytest.raises(ReportError, match=r"none of its cells' runs has a 'val/dsc' history"):
        plot_curves(agg, store["uri"], tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()


# -------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            {"metric": "test/dice"},
            r"metric 'test/dice' was logged by no FINISHED run.*"
            r"did you mean 'test/dsc'",
        ),
        (
            {"rows": {"A": {"method.nam": "bim"}}},
            r"rows\['A'\] names param 'method.nam'.*"
            r"did you mean 'method.name'",
        ),
        ({"rows": ["method.name", "data.targt"]}, r"rows\[1\] names param 'data.targt'"),
        ({"filter": {"optim.lr": 1}}, "filter names param 'optim.lr'"),
        ({"stage": "finetun"}, r"stage 'finetun' has no FINISHED runs.*finetune, pretrain"),
        ({"paired_test": {"reference": "Nobody"}}, "reference 'Nobody' is not one row label"),
        (
            {"columns": [], "rows": ["method.name"]},
            r"has 12 runs for seed\(s\) \['0', '1', '2'\] that differ in "
            r"\['data.labeled_scans', 'data.target'\]",
        ),
    ],
)
def test_bad_table_specs_are_named(store: dict, change: dict, match: str) -> None:
    with pytest.raises(ReportError, match=match):
        aggregate(store["df"], _spec(**change), experiment=EXP)


def test_table_spec_validation_errors() -> None:
    with pytest.raises(ValueError, match="give one of 'by'"):
        _spec(columns=[{"label": "x", "by": "seed", "items": {"a": {}}}])
    with pytest.raises(ValueError, match="Extra inputs"):
        _spec(colums=[])
    with pytest.raises(ValueError, match="rows is empty"):
        _spec(rows=[])
    with pytest.raises(ValueError, match="'mean' is only meaningful for column groups"):
        _spec(rows=[{"label": "g", "by": "seed", "mean": True}])


# ----------------------------------------------------------------------------------- cli
SWEEP = """
name: tsweep
stages:
  finetune:
    config: {stage: finetune, method: {name: baseline}}
tables:
  - name: t2
    stage: finetune
    scale: 100
    rows: {Baseline: {method.name: baseline}, Ours: {method.name: bim}}
    columns:
      - {label: ACDC-LV, filter: {data.target: lv}, by: data.labeled_scans,
         labels: {1: 1 scan, 2: 2 scans}, mean: true}
"""


def test_cli_table_writes_every_format(store: dict, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from segssl.cli import app

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(SWEEP)
    runner = CliRunner()
    res = runner.invoke(app, ["table", str(sweep), "--tracking-uri", store["uri"], "--no-log"])
    assert res.exit_code == 0, res.output
    ours = _vals("bim", "lv", 1)
    assert f"**{ours.mean():.2f} ± {ours.std(ddof=1):.2f} (3)**" in res.output
    out = tmp_path / "t.csv"
    res = runner.invoke(
        app,
        [
            "table",
            str(sweep),
            "--tracking-uri",
            store["uri"],
            "-f",
            "csv",
            "--out",
            str(out),
            "--no-log",
        ],
    )
    assert res.exit_code == 0, res.output
    back = pd.read_csv(out)
    base = back[(back["row"] == "Baseline") & (back["col"] == "mean")].iloc[0]
    assert base["mean"] == pytest.approx(
        ((_vals("baseline", "lv", 1) + _vals("baseline", "lv", 2)) / 2).mean()
    )
    tex = tmp_path / "t.tex"  # the format follows the --out suffix
    res = runner.invoke(
        app, ["table", str(sweep), "--tracking-uri", store["uri"], "-o", str(tex), "--no-log"]
    )
    assert res.exit_code == 0, res.output
    assert tex.read_text().startswith("% requires \\usepackage{booktabs}")
    res = runner.invoke(app, ["table", str(sweep), "-f", "pdf"])
    assert res.exit_code == 2 and "--format 'pdf'" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(SWEEP.replace("method.name: bim", "method.nme: bim"))
    res = runner.invoke(app, ["table", str(bad), "--tracking-uri", store["uri"], "--no-log"])
    assert res.exit_code == 2 and "names param 'method.nme'" in res.output


def test_rows_without_runs_are_named_in_the_caption(store: dict) -> None:
    spec = _spec(rows={"Ours": {"method.name": "bmi"}, "Baseline": {"method.name": "baseline"}})
    agg = aggregate(store["df"], spec, experiment=EXP)
    assert _cell(agg, "Ours", "ACDC-LV", "1 scan")["n"] == 0
    assert (
        "row 'Ours': method.name='bmi' matches no run (values: baseline, bim, iic, mt)"
        in (agg.attrs["caption"])
    )
    assert "| Ours | – | – |" in render(agg, spec, "md")
    assert "Baseline" not in agg.attrs["empty"] and "column" not in agg.attrs["empty"]


def test_aligned_with_the_bim_papers_file(store: dict) -> None:
    spec = _spec(
        rows={
            "Baseline": {"method.name": "baseline"},
            "IIC (Dec)": {"method.name": "iic"},
            "Ours (Dec) (MI+CC)": {"method.name": "bim"},
        },
        paper={"file": "experiments/papers/bim.yaml", "table": "table2"},
    )
    repo = Path(__file__).resolve().parents[2]
    agg = aggregate(store["df"], spec, experiment=EXP, base_dirs=[repo])
    assert _cell(agg, "Baseline", "ACDC-LV", "1 scan")["paper_mean"] == 67.13
    assert _cell(agg, "IIC (Dec)", "ACDC-RV", "1 scan")["paper_mean"] == 56.92
    assert math.isnan(_cell(agg, "IIC (Dec)", "ACDC-RV", "mean")["paper_mean"])
    assert _cell(agg, "Ours (Dec) (MI+CC)", "ACDC-RV", "2 scans")["paper_mean"] == 79.13
    tex = render(agg, spec, "latex")
    assert "\\quad\\textit{paper} & \\textit{67.13} & \\textit{74.49} & \\textit{--}" in tex


def test_best_val_selection_per_row_scope(store: dict) -> None:
    spec = _spec(
        rows={"MT": {"method.name": "mt"}},
        columns=[
            {
                "label": "ACDC-LV",
                "filter": {"data.target": "lv"},
                "by": "data.labeled_scans",
                "values": [1],
            }
        ],
        select={"keys": ["method.ema"], "scope": "row"},
    )
    agg = aggregate(store["df"], spec, experiment=EXP, tracking_uri=store["uri"])
    c = _cell(agg, "MT", "ACDC-LV", "1")
    assert c["mean"] == pytest.approx(np.mean(MT[0.99]["test"]) * 100)
    assert "per row (over all its columns)" in agg.attrs["caption"]
