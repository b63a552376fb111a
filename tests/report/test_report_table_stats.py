"""Statistics in tables on hand-built runs: intervals, corrected p, P(>ref), variance unit,
seed advice, and the errors for cells with too few seeds."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from segssl.report import ReportError, aggregate, render
from segssl.report.tables import advice_text
from segssl.table_spec import TableSpec

pytest.importorskip("statsmodels")
from statsmodels.stats.multitest import multipletests  # noqa: E402
from statsmodels.stats.power import TTestPower  # noqa: E402
from statsmodels.stats.proportion import proportion_confint  # noqa: E402

SEEDS = [0, 1, 2, 3, 4]
# test/dsc per seed for (method, labeled scans)
DSC = {
    ("baseline", 1): [0.60, 0.66, 0.58, 0.70, 0.63],
    ("baseline", 4): [0.90, 0.92, 0.91, 0.93, 0.90],
    ("bim", 1): [0.68, 0.65, 0.69, 0.74, 0.70],
    ("bim", 4): [0.91, 0.91, 0.92, 0.94, 0.89],
    ("iic", 1): [0.61, 0.67, 0.60, 0.69, 0.66],
    ("iic", 4): [0.90, 0.93, 0.90, 0.92, 0.91],
}
SCANS = 4  # per-scan test Dice: the run's value shifted by a known pattern (mean unchanged)
PATTERN = np.array([-0.06, 0.02, 0.05, -0.01])


def _runs() -> pd.DataFrame:
    recs = []
    for (method, ls), vals in DSC.items():
        for seed, v in zip(SEEDS, vals, strict=True):
            rec = {
                "run_id": f"{method}-{ls}-{seed}",
                "tags.segssl.stage": "finetune",
                "params.method.name": method,
                "params.data.labeled_scans": str(ls),
                "params.seed": str(seed),
                "params.train.save_best": "true",
                "metrics.test/dsc": v,
                "metrics.test/hd95": 5.0 - v,
                "metrics.cost/gpu_s": 100.0 + ls,
            }
            for i, d in enumerate(PATTERN):
                rec[f"metrics.test/scan/dsc/{i}"] = v + d + 0.01 * seed * (i % 2)
            recs.append(rec)
    return pd.DataFrame.from_records(recs)


def _spec(**kw) -> TableSpec:
    raw = {
        "name": "t",
        "stage": "finetune",
        "scale": 100,
        "rows": {
            "Baseline": {"method.name": "baseline"},
            "bim": {"method.name": "bim"},
            "IIC": {"method.name": "iic"},
        },
        "columns": [{"label": "LV", "by": "data.labeled_scans"}],
        "paired_test": {"reference": "Baseline"},
    }
    raw.update(kw)
    return TableSpec.model_validate(raw)


def _cell(agg: pd.DataFrame, row: str, col: str) -> dict:
    hit = agg[(agg["row"] == row) & (agg["col"] == col)]
    assert len(hit) == 1
    return hit.iloc[0].to_dict()


def _v(method: str, ls: int) -> np.ndarray:
    return np.array(DSC[(method, ls)]) * 100


def test_bootstrap_interval_per_cell_equals_scipy_percentile() -> None:
    spec = _spec(stats={"interval": "bootstrap", "resamples": 2000})
    agg = aggregate(_runs(), spec, experiment="x")
    c = _cell(agg, "bim", "1")
    ref = stats.bootstrap(
        (_v("bim", 1),),
        np.mean,
        method="percentile",
        n_resamples=2000,
        rng=np.random.default_rng(0),
    ).confidence_interval
    assert (c["ci_low"], c["ci_high"]) == pytest.approx((ref.low, ref.high))
    md = render(agg, spec, "md")
    assert f"[{ref.low:.2f}, {ref.high:.2f}]" in md
    assert "95% bootstrap interval of the mean over seeds" in md and "percentile" in md


def test_holm_corrected_p_and_probability_of_improvement() -> None:
    spec = _spec(stats={"prob_improvement": True})
    agg = aggregate(_runs(), spec, experiment="x")
    raw = [stats.ttest_rel(_v(m, 1), _v("baseline", 1)).pvalue for m in ("bim", "iic")]
    holm = multipletests(raw, method="holm")[1]
    assert _cell(agg, "bim", "1")["p_value"] == pytest.approx(holm[0])
    assert _cell(agg, "IIC", "1")["p_value"] == pytest.approx(holm[1])
    bonf = aggregate(
        _runs(),
        _spec(paired_test={"reference": "Baseline", "correction": "bonferroni"}),
        experiment="x",
    )
    assert _cell(bonf, "IIC", "1")["p_value"] == pytest.approx(
        multipletests(raw, method="bonferroni")[1][1]
    )
    wins = int((_v("bim", 1) > _v("baseline", 1)).sum())
    c = _cell(agg, "bim", "1")
    assert c["p_improve"] == pytest.approx(wins / 5)
    lo, hi = proportion_confint(wins, 5, method="wilson")
    assert (c["p_improve_low"], c["p_improve_high"]) == pytest.approx((lo, hi))
    md = render(agg, spec, "md")
    assert "Holm-corrected across the rows of each column" in md
    assert f"P(>ref)={wins / 5:.2f}" in md


def test_variance_over_test_scans_is_one_runs_scans_and_stated() -> None:
    spec = _spec(stats={"variance": "scans", "variance_seed": 3})
    agg = aggregate(_runs(), spec, experiment="x")
    c = _cell(agg, "bim", "4")
    per_scan = (DSC[("bim", 4)][3] + PATTERN + 0.03 * (np.arange(SCANS) % 2)) * 100
    assert c["n"] == SCANS and c["seeds"] == "0,1,2,3"
    assert c["mean"] == pytest.approx(per_scan.mean())
    assert c["std"] == pytest.approx(per_scan.std(ddof=1))
    md = render(agg, spec, "md")
    assert "over the test scans of one run per cell (seed 3" in md
    assert "never mixed with seeds" in md and "over seeds (std" not in md
    with pytest.raises(ReportError, match="per-scan values of 'test/hd95'"):
        aggregate(_runs(), _spec(metric="test/hd95", stats={"variance": "scans"}), experiment="x")


def test_statistics_needing_more_seeds_name_the_cell_and_count() -> None:
    runs = _runs()
    runs = runs[~((runs["run_id"].str.startswith("iic-4-")) & (runs["params.seed"] != "0"))]
    with pytest.raises(
        ReportError,
        match=r"paired_test needs at least 2 seeds per cell; cell "
        r"\('IIC', 'LV / 4'\) has 1",
    ):
        aggregate(runs, _spec(), experiment="x")
    few = runs[runs["params.seed"].isin(["0", "1"])]
    with pytest.raises(ReportError, match=r"bootstrap needs at least 3 seeds.*has 2"):
        aggregate(few, _spec(paired_test=None, stats={"interval": "bootstrap"}), experiment="x")
    one = aggregate(runs, _spec(paired_test=None), experiment="x")  # mean +- std: fine
    with pytest.raises(
        ReportError,
        match=r"table 't': --advise-seeds needs at least 2 seeds per cell to estimate a std; "
        r"cell \('IIC', 'LV / 4'\) has 1",
    ):
        advice_text(one, 2.0, 0.05, 0.8)


def test_seed_advice_equals_statsmodels_power_on_paired_differences() -> None:
    spec = _spec()
    agg = aggregate(_runs(), spec, experiment="x")
    text = advice_text(agg, 2.0, 0.05, 0.8)
    diff = _v("bim", 1) - _v("baseline", 1)
    sd = diff.std(ddof=1)
    n = math.ceil(TTestPower().solve_power(effect_size=2.0 / sd, alpha=0.05, power=0.8))
    n = max(n, 2)
    assert f"| bim | LV / 1 | 5 | {sd:.2f} | paired differences to 'Baseline' | {n} |" in text
    base = _v("baseline", 4)
    nb = math.ceil(
        TTestPower().solve_power(effect_size=2.0 / base.std(ddof=1), alpha=0.05, power=0.8)
    )
    assert (
        f"| Baseline | LV / 4 | 5 | {base.std(ddof=1):.2f} | the cell over seeds | {nb} |" in text
    )


def test_seed_advice_for_a_wilcoxon_table_states_and_uses_the_signed_rank_test() -> None:
    """A table whose paired test is Wilcoxon gets the signed-rank advice (the t-test's n over the
    efficiency 3/pi, at least 6 pairs), and the printout says which test it assumed; a table
    without a paired test says it assumed a paired t-test."""
    spec = _spec(paired_test={"reference": "Baseline", "test": "wilcoxon"})
    text = advice_text(aggregate(_runs(), spec, experiment="x"), 2.0, 0.05, 0.8)
    assert "Wilcoxon signed-rank test" in text and "3/pi" in text and "at least 6 pairs" in text
    assert "Holm correction across rows asks for more" in text
    diff = _v("bim", 1) - _v("baseline", 1)
    sd = diff.std(ddof=1)
    n_t = TTestPower().solve_power(effect_size=2.0 / sd, alpha=0.05, power=0.8)
    n = max(6, math.ceil(n_t * math.pi / 3))
    assert f"| bim | LV / 1 | 5 | {sd:.2f} | paired differences to 'Baseline' | {n} |" in text
    plain = advice_text(aggregate(_runs(), _spec(paired_test=None), experiment="x"), 2.0, 0.05, 0.8)
    assert "assuming a two-sided paired t-test (the table runs no paired test" in plain


def test_cost_column_is_the_rows_mean_seconds_per_run() -> None:
    spec = _spec(stats={"cost": True}, paired_test=None)
    md = render(aggregate(_runs(), spec, experiment="x"), spec, "md")
    assert "| cost (s/run) |" in md.splitlines()[2]
    assert md.splitlines()[4].endswith("| 102 |")  # (101 + 104) / 2 = 102.5 -> '102'


def test_reading_states_paired_differences_and_never_claims_an_unsupported_gain() -> None:
    from segssl.report.reading import paired_reading

    agg = aggregate(_runs(), _spec(), experiment="x")
    text = paired_reading(agg, "IIC", "Baseline")
    d1 = (_v("iic", 1) - _v("baseline", 1)).mean()
    ahead = int((_v("iic", 1) > _v("baseline", 1)).sum())
    assert f"{d1:+.1f} at 1 (ahead in {ahead} of 5" in text
    p = _cell(agg, "IIC", "1")["p_value"]
    assert p > 0.05 and "No difference here is significant after correction" in text
    assert "paired seeds (paired t-test; segssl table --advise-seeds)" in text
    # a large, consistent gain reads as one
    runs = _runs()
    bim = runs["params.method.name"] == "bim"
    runs.loc[bim, "metrics.test/dsc"] += 0.1 + 0.001 * runs.loc[bim, "params.seed"].astype(int)
    strong = paired_reading(aggregate(runs, _spec(), experiment="x"), "bim", "Baseline")
    assert "A gain in every column that survives the corrected test" in strong


def test_table_figure_png_and_pdf_with_std_bands_and_paper_points(tmp_path) -> None:
    from matplotlib import pyplot as plt

    import segssl.report.curves as curves

    agg = aggregate(_runs(), _spec(paired_test=None), experiment="x")
    agg.loc[agg["row"] == "bim", "paper_mean"] = [70.0, 90.0]
    drawn: dict = {}
    real = plt.Axes.fill_between, plt.Axes.errorbar

    def fill(ax, x, lo, hi, **kw):  # record the std bands
        drawn.setdefault("bands", []).append((np.asarray(lo), np.asarray(hi)))
        return real[0](ax, x, lo, hi, **kw)

    def err(ax, x, y, **kw):
        drawn.setdefault("paper", []).append(np.asarray(y))
        return real[1](ax, x, y, **kw)

    plt.Axes.fill_between, plt.Axes.errorbar = fill, err
    try:
        png, pdf = curves.plot_table_figure(agg, tmp_path / "t_figure.png")
    finally:
        plt.Axes.fill_between, plt.Axes.errorbar = real
    assert png.stat().st_size > 0 and pdf.read_bytes()[:4] == b"%PDF"
    base = _v("baseline", 1)
    lo, hi = drawn["bands"][0]
    assert lo[0] == pytest.approx(base.mean() - base.std(ddof=1))
    assert hi[0] == pytest.approx(base.mean() + base.std(ddof=1))
    assert len(drawn["bands"]) == 3 and [list(p) for p in drawn["paper"]] == [[70.0, 90.0]]


def test_seed_advisor_pairs_against_the_reference_however_the_spec_spells_it() -> None:
    """paired_test.reference matches rows ignoring case and spacing (as the paired test does):
    the advisor then uses the std of the paired differences, not the cell's own std."""
    from segssl.report.stats import advise_seeds

    agg = aggregate(_runs(), _spec(paired_test={"reference": "baseline"}), experiment="x")
    rows = {(r["row"], r["col"]): r for r in advise_seeds(agg, 2.0)}
    d = _v("bim", 1) - _v("baseline", 1)
    assert rows[("bim", "LV / 1")]["std_of"].startswith("paired differences")
    assert rows[("bim", "LV / 1")]["std"] == pytest.approx(d.std(ddof=1))


def test_paired_test_refuses_a_row_that_shares_too_few_seeds_with_the_reference() -> None:
    """A row run over other seeds than the reference has no pairs: naming the cell and the
    shared count beats a blank p and P(>ref) (and a row the seed advisor silently dropped)."""
    runs = _runs()
    iic = runs["params.method.name"] == "iic"
    runs.loc[iic, "params.seed"] = runs.loc[iic, "params.seed"].map(lambda s: str(int(s) + 4))
    with pytest.raises(
        ReportError,
        match=r"paired_test needs at least 2 seeds shared with the reference row 'Baseline' "
        r"per cell; cell \('IIC', 'LV / 1'\) shares 1 \(its seeds: 4, 5, 6, 7, 8; the "
        r"reference's: 0, 1, 2, 3, 4\)",
    ):
        aggregate(runs, _spec(), experiment="x")
    two = runs[~iic | runs["params.seed"].isin(["4", "5", "6"])].copy()
    two.loc[two["params.method.name"] == "iic", "params.seed"] = ["3", "4", "9"] * 2
    agg = aggregate(two, _spec(), experiment="x")  # two shared seeds: tested on those
    a, b = _v("iic", 1)[:2], _v("baseline", 1)[3:]
    assert _cell(agg, "IIC", "1")["p_raw"] == pytest.approx(stats.ttest_rel(a, b).pvalue)


def test_seed_advice_refuses_a_table_whose_variance_is_over_test_scans(tmp_path) -> None:
    """With stats.variance: scans the cells hold one run's test scans: advising seeds from their
    std would mix the two units (it printed scans as 'seeds now' and 'the cell over seeds')."""
    from segssl.report.stats import advise_seeds
    from segssl.report.tables import render_sweep_tables

    spec = _spec(stats={"variance": "scans"})
    agg = aggregate(_runs(), spec, experiment="x")
    with pytest.raises(ReportError, match=r"table 't': --advise-seeds .*stats.variance is 'scans'"):
        advice_text(agg, 2.0, 0.05, 0.8)
    with pytest.raises(ValueError, match="spread over seeds"):
        advise_seeds(agg, 2.0)
    # refused before any run is read (the tracking URI points nowhere)
    with pytest.raises(ReportError, match=r"stats.variance is 'scans'"):
        render_sweep_tables("x", [spec], f"sqlite:///{tmp_path}/none.db", advise=(2.0, 0.05, 0.8))
    assert not (tmp_path / "none.db").exists()


def test_seed_advice_for_a_constant_paired_difference_is_the_floor() -> None:
    """A row that beats the reference by the same amount on every seed: the paired differences'
    std is float noise (1e-14), and the noncentral t returned NaN, so the advice read
    '> 10000' seeds where 2 suffice."""
    from segssl.report.stats import advise_seeds, seeds_needed, ttest_power

    assert ttest_power(2e14, 2) == 1.0
    assert seeds_needed(2.0, 1e-14) == 2
    runs = _runs()
    bim, base = runs["params.method.name"] == "bim", runs["params.method.name"] == "baseline"
    runs.loc[bim, "metrics.test/dsc"] = runs.loc[base, "metrics.test/dsc"].to_numpy() + 0.0581
    agg = aggregate(runs, _spec(), experiment="x")
    rows = {(r["row"], r["col"]): r for r in advise_seeds(agg, 2.0)}
    assert 0 < rows[("bim", "LV / 1")]["std"] < 1e-9
    assert rows[("bim", "LV / 1")]["needed"] == 2


def test_captions_state_the_metric_definitions_the_runs_used() -> None:
    """A Dice table of runs with metrics.both_empty=exclude said 'an empty prediction of an empty
    structure scores 1'; runs differing in the NSD tolerance were captioned with one of them."""
    runs = _runs()
    spec = _spec(paired_test=None)
    assert "empty structure scores 1" in aggregate(runs, spec, experiment="x").attrs["caption"]
    runs["params.metrics.both_empty"] = "exclude"
    cap = aggregate(runs, spec, experiment="x").attrs["caption"]
    assert "both empty are left out" in cap and "scores 1" not in cap
    runs["params.metrics.hd95"] = "max"
    hd = aggregate(runs, _spec(paired_test=None, metric="test/hd95"), experiment="x")
    assert "HD95: max of the two directed 95th percentiles" in hd.attrs["caption"]
    assert "scans with both masks empty are left out" in hd.attrs["caption"]
    runs["params.metrics.nsd_tolerance"] = ["1.0", "2.0"] * (len(runs) // 2)
    runs["metrics.test/nsd"] = 0.5
    nsd = aggregate(runs, _spec(paired_test=None, metric="test/nsd"), experiment="x")
    assert (
        "Warning: the runs mix metric definitions (metrics.nsd_tolerance: 1, 2)"
        in (nsd.attrs["caption"])
    )
    # the HD95 variant does not change Dice: no warning for a Dice table
    runs["params.metrics.hd95"] = ["max", "pooled"] * (len(runs) // 2)
    assert "Warning" not in aggregate(runs, spec, experiment="x").attrs["caption"]


def test_reading_calls_a_significant_loss_a_loss() -> None:
    """A row significantly worse than the reference was read as 'No difference here is
    significant after correction' (only gains counted as significant), and one significant
    loss beside a gain as 'A gain only where p < 0.05'."""
    from segssl.report.reading import paired_reading

    runs = _runs()
    bim = runs["params.method.name"] == "bim"
    runs.loc[bim, "metrics.test/dsc"] -= 0.2 + 0.001 * runs.loc[bim, "params.seed"].astype(int)
    agg = aggregate(runs, _spec(), experiment="x")
    assert all(_cell(agg, "bim", c)["p_value"] < 0.05 for c in ("1", "4"))
    text = paired_reading(agg, "bim", "Baseline")
    assert "A loss in every column that survives the corrected test: 'bim' is worse." in text
    assert "No difference" not in text
    four = runs["params.data.labeled_scans"] == "4"
    runs.loc[bim & four, "metrics.test/dsc"] += 0.4
    mixed = paired_reading(aggregate(runs, _spec(), experiment="x"), "bim", "Baseline")
    assert "Significant (p < 0.05): a gain at 4 and a loss at 1;" in mixed


def test_an_hd95_caption_counts_the_scans_left_out_for_one_empty_mask() -> None:
    """metrics.one_empty: exclude leaves a scan out of HD95/ASD; the runs count those scans
    (test/hd95_undefined/<class>) and the caption now says how many, not only the policy."""
    runs = _runs()
    runs["metrics.test/hd95_undefined/LV"] = 0.0
    runs["metrics.test/hd95_undefined/RV"] = 0.0
    spec = _spec(paired_test=None, metric="test/hd95", bold="min")
    assert "left out" not in aggregate(runs, spec, experiment="x").attrs["caption"]
    runs.loc[[0, 3], "metrics.test/hd95_undefined/LV"] = [2.0, 1.0]
    runs.loc[3, "metrics.test/hd95_undefined/RV"] = 1.0
    runs["metrics.test/hd95/RV"] = 3.0
    cap = aggregate(runs, spec, experiment="x").attrs["caption"]
    assert (
        "HD95 left out 4 scan(s) with exactly one empty mask (LV: 3, RV: 1), in 2 of the 30 runs"
        in cap
    )
    one = aggregate(runs, _spec(paired_test=None, metric="test/hd95/RV"), experiment="x")
    assert (
        "HD95 left out 1 scan(s) with exactly one empty mask (RV: 1), in 1 of"
        in (one.attrs["caption"])
    )


def test_reading_of_a_scans_table_says_scans_and_estimates_no_seeds() -> None:
    """Over test scans the reading said 'paired over seeds' and estimated 'paired seeds' from
    the spread of one run's scans: the two units mixed in one sentence."""
    from segssl.report.reading import paired_reading

    agg = aggregate(_runs(), _spec(stats={"variance": "scans"}), experiment="x")
    text = paired_reading(agg, "IIC", "Baseline")
    assert "paired over the test scans of one run (not seeds)" in text
    assert "ahead in" in text and "of 4" in text  # 4 scans paired
    assert "seeds (" not in text and "seed-to-seed" not in text


def test_a_table_of_several_metrics_states_each_ones_definition() -> None:
    """IDEAL Table 1's rows are ASD, HD and DSC under a table metric of test/dsc: the caption
    gave only Dice's definition, not which HD95 (max or pooled) nor the empty-mask policy of the
    distances; it now states them, and counts the scans HD95 left out."""
    runs = _runs()
    runs["metrics.test/asd"] = 1.0
    runs["params.metrics.hd95"] = "max"
    runs["metrics.test/hd95_undefined/LV"] = 0.0
    runs.loc[12, "metrics.test/hd95_undefined/LV"] = 1.0  # a bim run
    spec = _spec(
        paired_test=None,
        bold="none",
        rows=[{"metrics": {"ASD": "test/asd", "HD": "test/hd95", "DSC": "test/dsc"}}],
        filter={"method.name": "bim"},
    )
    cap = aggregate(runs, spec, experiment="x").attrs["caption"]
    assert "HD95: max of the two directed 95th percentiles" in cap
    assert "ASD pooled over both directions" in cap and "one empty scores Dice 0" in cap
    assert "HD95 left out 1 scan(s) with exactly one empty mask (LV: 1)" in cap
    runs["params.metrics.hd95"] = ["max", "pooled"] * (len(runs) // 2)
    mixed = aggregate(runs, spec, experiment="x").attrs["caption"]
    assert "Warning: the runs mix metric definitions (metrics.hd95: max, pooled)" in mixed


def test_csv_names_the_variance_unit() -> None:
    """The CSV has no caption: a table over test scans exported scan indices under 'seeds' and
    their std with nothing saying so."""
    import io

    by_scan = _spec(stats={"variance": "scans"})
    scans = pd.read_csv(io.StringIO(render(aggregate(_runs(), by_scan), by_scan, "csv")))
    seeds = pd.read_csv(io.StringIO(render(aggregate(_runs(), _spec()), _spec(), "csv")))
    assert set(scans["unit"]) == {"test scans"} and set(seeds["unit"]) == {"seeds"}
    assert list(seeds.columns).index("unit") == list(seeds.columns).index("n") + 1
