"""'Selected configurations' under a table: one note per row where a selection among several
configurations happened, naming only the keys that varied for that row and each choice once
with its columns (hand-built GMI Table 1-like runs: four datasets, ACDC split into two metric
columns, selection over method.w_ent and method.w_cons)."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from segssl.report import aggregate, load_runs, render
from segssl.table_spec import TableSpec

EXP = "gmi-like"
DATASETS = ("acdc", "promise12", "msd-spleen", "mmwhs-ct")
# method -> dataset -> [(weights, validation score)]; the best score is the one selected
CONFIGS: dict[str, dict[str, list[tuple[dict[str, float], float]]]] = {
    "full": {d: [({}, 0.9)] for d in DATASETS},  # nothing to choose
    "mean_teacher": {
        "acdc": [({"method.w_cons": 1}, 0.8), ({"method.w_cons": 0.001}, 0.7)],
        "promise12": [({"method.w_cons": 1}, 0.6), ({"method.w_cons": 0.001}, 0.7)],
        "msd-spleen": [({"method.w_cons": 1}, 0.6), ({"method.w_cons": 0.0001}, 0.7)],
        "mmwhs-ct": [({"method.w_cons": 1}, 0.8), ({"method.w_cons": 0.001}, 0.7)],
    },
    "entmin": {  # the same choice everywhere
        d: [({"method.w_ent": 0.1}, 0.8), ({"method.w_ent": 0.01}, 0.7)] for d in DATASETS
    },
    "gmi": {  # w_ent varies on ACDC, w_cons on Prostate; one configuration elsewhere
        "acdc": [
            ({"method.w_ent": 0.1, "method.w_cons": 1}, 0.8),
            ({"method.w_ent": 0.01, "method.w_cons": 1}, 0.7),
        ],
        "promise12": [
            ({"method.w_ent": 0.1, "method.w_cons": 1}, 0.6),
            ({"method.w_ent": 0.1, "method.w_cons": 0.1}, 0.7),
        ],
        "msd-spleen": [({"method.w_ent": 0.1, "method.w_cons": 1}, 0.7)],
        "mmwhs-ct": [({"method.w_ent": 0.1, "method.w_cons": 1}, 0.7)],
    },
}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(EXP, artifact_location=str(root / "artifacts"))
    parent = client.create_run(exp_id, tags={"segssl.role": "parent"}).info.run_id
    client.set_terminated(parent, "FINISHED")
    n = 0
    for method, by_data in CONFIGS.items():
        for dataset, configs in by_data.items():
            for weights, val in configs:
                for seed in (0, 1):
                    n += 1
                    params = {"method.name": method, "data.dataset": dataset, "seed": seed}
                    tags = {"mlflow.parentRunId": parent, "segssl.trial_key": f"k{n}"}
                    rid = client.create_run(exp_id, tags=tags).info.run_id
                    test = val - 0.1 + 0.01 * seed
                    metrics = [Metric(k, test, 0, 0) for k in ("test/dsc", "test/dsc/RV")]
                    metrics.append(Metric("val/dsc", val + 0.001 * seed, 0, 1))
                    params_ = [Param(k, str(v)) for k, v in {**params, **weights}.items()]
                    client.log_batch(rid, metrics=metrics, params=params_)
                    client.set_terminated(rid, "FINISHED")
    return uri


def _spec(**overrides: object) -> TableSpec:
    return TableSpec.model_validate(
        {
            "name": "table1",
            "metric": "test/dsc",
            "rows": {
                "Full supervision": {"method.name": "full"},
                "Entropy min.": {"method.name": "entmin"},
                "Mean Teacher": {"method.name": "mean_teacher"},
                "Ours (all)": {"method.name": "gmi"},
            },
            "columns": [
                {
                    "label": "ACDC",
                    "filter": {"data.dataset": "acdc"},
                    "metrics": {"RV": "test/dsc/RV", "Mean": "test/dsc"},
                },
                {"label": "Prostate", "filter": {"data.dataset": "promise12"}},
                {"label": "Spleen", "filter": {"data.dataset": "msd-spleen"}},
                {"label": "MMWHS", "filter": {"data.dataset": "mmwhs-ct"}},
            ],
            "select": {"keys": ["method.w_ent", "method.w_cons"]},
            **overrides,
        }
    )


NOTES = [
    "Entropy min.: method.w_ent=0.1",
    "Mean Teacher: method.w_cons=1 (ACDC, MMWHS), 0.001 (Prostate), 0.0001 (Spleen)",
    "Ours (all): method.w_ent=0.1, method.w_cons=1 (ACDC); "
    "method.w_ent=0.1, method.w_cons=0.1 (Prostate)",
]


def test_notes_list_rows_with_a_choice_grouped_by_choice(store: str) -> None:
    spec = _spec()
    agg = aggregate(load_runs(store, EXP), spec, experiment=EXP, tracking_uri=store)
    md = render(agg, spec, "md")
    notes = md.split("Selected configurations:")[1].strip().splitlines()
    assert notes == [f"- {n}" for n in NOTES], md
    assert "nan" not in md and "Full supervision:" not in md and "@" not in md
    # the choices themselves: the validation-best configuration's test values
    mt = agg[(agg["row"] == "Mean Teacher") & (agg["col"] == "Spleen")].iloc[0]
    assert mt["mean"] == pytest.approx((0.6 + 0.61) / 2)
    assert mt["selected"] == "method.w_cons=0.0001"  # per cell, as in the CSV
    full = agg[agg["row"] == "Full supervision"]
    assert set(full["selected"]) == {""}
    html = render(agg, spec, "html")
    assert "<li>Mean Teacher: method.w_cons=1 (ACDC, MMWHS), 0.001 (Prostate)" in html
    latex = render(agg, spec, "latex")
    assert (
        "Entropy min.: method.w\\_ent=0.1. Mean Teacher: method.w\\_cons=1 (ACDC, MMWHS)" in latex
    )


def test_a_group_split_between_choices_names_its_columns(store: str) -> None:
    """A column group is named once only where all its columns share the choice; otherwise
    its columns are named one by one (here the datasets as leaves of one group)."""
    spec = _spec(
        columns=[
            {"label": "Data", "by": "data.dataset", "values": ["acdc", "promise12"]},
            {"label": "Spleen", "filter": {"data.dataset": "msd-spleen"}},
        ]
    )
    agg = aggregate(load_runs(store, EXP), spec, experiment=EXP, tracking_uri=store)
    md = render(agg, spec, "md")
    notes = md.split("Selected configurations:")[1].strip().splitlines()
    assert notes == [
        "- Entropy min.: method.w_ent=0.1",
        "- Mean Teacher: method.w_cons=1 (Data / acdc), 0.001 (Data / promise12), 0.0001 (Spleen)",
        "- Ours (all): method.w_ent=0.1, method.w_cons=1 (Data / acdc); "
        "method.w_ent=0.1, method.w_cons=0.1 (Data / promise12)",
    ], md
