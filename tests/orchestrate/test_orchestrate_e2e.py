"""End to end through the real engine, real Ray Tune and real MLflow: ``segssl demo`` with a tiny
budget (synthetic ACDC, baseline vs bim pre-train -> fine-tune, 2 seeds), then the table."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from segssl.demo import demo_spec, run_demo
from segssl.orchestrate.spec import parse_sweep

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ray_local():
    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_demo_yaml_matches_the_demo_spec() -> None:
    raw = yaml.safe_load((REPO / "experiments" / "sweeps" / "demo.yaml").read_text())
    assert raw == demo_spec(data_root=raw["base"]["data"]["root"])
    parse_sweep(raw)


def test_demo_end_to_end_real_engine(ray_local: Any, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    table, ui = run_demo(
        tmp_path / "demo", console=Console(quiet=True), live=False, epochs=2, iters=2, seeds=2
    )
    store = tmp_path / "demo" / "segssl-runs" / "demo"
    uri = f"sqlite:///{store / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("demo")
    assert ui == (
        f"mlflow ui --backend-store-uri {uri}\n  then open http://127.0.0.1:5000/#/experiments/"
        f"{exp.experiment_id}/runs?workflowType=machine_learning&viewStateShareKey=segssl"
    )
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([exp.experiment_id], "tags.`segssl.kind` = 'trial'")
    by_stage = Counter(r.data.tags["segssl.stage"] for r in runs)
    assert by_stage == {"baseline": 4, "full": 2, "pretrain": 2, "finetune": 4}
    assert all(r.info.status == "FINISHED" for r in runs)

    pre = {
        r.data.tags["segssl.trial_key"]: r
        for r in runs
        if r.data.tags["segssl.stage"] == "pretrain"
    }
    ft = [r for r in runs if r.data.tags["segssl.stage"] == "finetune"]
    # each pre-training ran once and its checkpoint fed both of its fine-tunings
    assert Counter(r.data.tags["segssl.parent_key"] for r in ft) == {k: 2 for k in pre}
    for r in ft:
        pkey = r.data.tags["segssl.parent_key"]
        ckpt = store / "trials" / pkey / "checkpoints" / "last.pt"
        assert r.data.params["train.init_from"] == str(ckpt) and ckpt.is_file()
        assert r.data.params["pretrain.method.name"] == "bim"
        assert r.data.params["seed"] == pre[pkey].data.params["seed"]
        result = json.loads(
            (store / "trials" / r.data.tags["segssl.trial_key"] / "result.json").read_text()
        )
        assert result["stage"] == "finetune" and result["init"]
    for r in runs:
        m, t = r.data.metrics, r.data.tags
        assert t["segssl.data_fingerprint"] and t["segssl.split_fingerprint"]
        assert m["cost/wall_s"] > 0
        if t["segssl.stage"] != "pretrain":
            assert 0.0 <= m["test/dsc"] <= 1.0
            assert "test/hd95/LV" in m and "test/asd/LV" in m  # NaN when a prediction is empty
            hist = client.get_metric_history(r.info.run_id, "val/dsc")
            assert sorted(h.step for h in hist) == [1, 2]
    # bim pre-training logs its cluster pictures; every run its resolved config and result
    some_pre = next(iter(pre.values()))
    assert client.list_artifacts(some_pre.info.run_id, "pictures")
    assert {"config.yaml", "result.json"} <= {
        a.path for a in client.list_artifacts(some_pre.info.run_id)
    }
    # the table from the FINISHED runs: three rows, n = 2 seeds per cell, the reading under it
    assert "| Baseline |" in table and "| bim (pre-train) + fine-tune |" in table
    assert "| Full supervision |" in table
    assert table.count("(2)") >= 6
    assert "Reading: 'bim (pre-train) + fine-tune' minus 'Baseline', paired over seeds" in table
    for r in (r for r in runs if r.data.tags["segssl.stage"] == "baseline"):
        assert r.data.params["method.name"] == "baseline"

    report = tmp_path / "demo" / "report"
    assert (report / "demo.md").read_text() == table
    assert list(report.glob("*.png"))  # learning curves
    # running the demo again launches nothing and prints the same table
    table2, _ = run_demo(
        tmp_path / "demo", console=Console(quiet=True), live=False, epochs=2, iters=2, seeds=2
    )
    assert table2.split("\n")[:6] == table.split("\n")[:6]
    runs2 = client.search_runs([exp.experiment_id], "tags.`segssl.kind` = 'trial'")
    assert len(runs2) == len(runs)
