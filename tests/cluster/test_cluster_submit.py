"""``segssl submit`` against a real stack on loopback: PostgreSQL, MLflow's server with basic
auth, a two-node Ray cluster (see conftest.py). One tiny sweep is submitted twice at the same
moment; everything else is checked on its outcome."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import loopback_stack as stack
import pytest
from cluster_helpers import (
    ADMIN,
    PG_PASSWORD,
    Stack,
    finished_once_per_key,
    job_client,
    mlflow_client,
    sweep_yaml,
    trial_runs,
)

NAME = "cl-main"


@pytest.fixture(scope="module")
def main_sweep(cluster_stack: Stack) -> dict[str, Any]:
    """Submit the 4-trial sweep from two submitters at once, then follow it to its end."""
    st = cluster_stack
    path = sweep_yaml(st, NAME)
    args = ("submit", str(path), "--address", st.ray.job_address)
    with ThreadPoolExecutor(2) as pool:
        subs = list(pool.map(lambda _: st.segssl(*args, timeout=300), range(2)))
    follow = st.segssl(*args, "--logs", "--follow", timeout=900)
    status = st.segssl(*args, "--status", timeout=120)
    return {"path": path, "subs": subs, "follow": follow, "status": status}


def test_two_submitters_at_once_get_one_driver(
    cluster_stack: Stack, main_sweep: dict[str, Any]
) -> None:
    outs = [s.stdout + s.stderr for s in main_sweep["subs"]]
    assert all(s.returncode == 0 for s in main_sweep["subs"]), outs
    assert sorted("attached to the running job" in o for o in outs) == [False, True], outs
    jobs = [
        j for j in job_client(cluster_stack).list_jobs() if j.metadata.get("segssl.sweep") == NAME
    ]
    assert len(jobs) == 1, [j.submission_id for j in jobs]
    runs = mlflow_client(cluster_stack).search_runs(
        [mlflow_client(cluster_stack).get_experiment_by_name(NAME).experiment_id],
        "tags.`segssl.kind` = 'sweep'",
    )
    assert len(runs) == 1  # one driver: one sweep (parent) run


def test_job_outcome_runs_on_both_nodes_in_postgres(
    cluster_stack: Stack, main_sweep: dict[str, Any]
) -> None:
    st = cluster_stack
    follow, status = main_sweep["follow"], main_sweep["status"]
    assert follow.returncode == 0, follow.stdout[-3000:] + follow.stderr[-3000:]
    assert "SUCCEEDED" in status.stderr and status.returncode == 0, status.stderr
    runs = trial_runs(st, NAME)
    finished = finished_once_per_key(runs, 4)
    nodes = st.ray.alive_nodes()
    ran_on = {r.data.tags["segssl.node_id"] for r in finished.values()}
    assert ran_on == {nodes["node_a"], nodes["node_b"]}, (ran_on, nodes)
    for r in finished.values():
        assert r.data.tags["segssl.gpu_share"] == "0" and "test/dsc" in r.data.metrics
        assert r.data.params["data.dataset"] == "acdc"
    # the runs are rows of the PostgreSQL database behind the server
    ids = st.pg.psql(
        "SELECT r.run_uuid FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id "
        f"WHERE e.name = '{NAME}' AND r.status = 'FINISHED'",
        db="mlflow",
    ).split()
    assert {r.info.run_id for r in finished.values()} <= set(ids)
    one = next(iter(finished.values())).info.run_id
    n_params = st.pg.psql(
        f"SELECT count(*) FROM params WHERE run_uuid = '{one}'",
        db="mlflow",
    )
    assert int(n_params) > 20


def test_table_works_against_the_server(cluster_stack: Stack, main_sweep: dict[str, Any]) -> None:
    import io
    import math

    import pandas as pd

    res = cluster_stack.segssl("table", str(main_sweep["path"]), "--format", "csv", "--no-log")
    assert res.returncode == 0, res.stderr
    table = pd.read_csv(io.StringIO(res.stdout))
    rows = table[table["row"] == "Baseline"]
    assert len(rows) >= 2, res.stdout  # 1 and 2 labeled scans (and a mean column, if any)
    per_count = rows[rows["n"] == 2]
    assert len(per_count) == 2, res.stdout  # two seeds in each cell, from the server's runs
    assert {",".join(sorted(str(v).split(","))) for v in per_count["seeds"]} == {"0,1"}
    assert all(math.isfinite(m) for m in per_count["mean"])


def test_requests_without_credentials_are_refused(cluster_stack: Stack) -> None:
    url = cluster_stack.mlflow.uri + "/api/2.0/mlflow/experiments/search?max_results=5"
    assert stack.http_status(url) == 401
    assert stack.http_status(url, (ADMIN, "not-the-password")) == 401
    assert stack.http_status(url, (ADMIN, cluster_stack.password)) == 200
    env = {k: v for k, v in cluster_stack.client_env().items() if "USERNAME" not in k}
    env.pop("MLFLOW_TRACKING_PASSWORD")
    res = subprocess.run(
        [sys.executable, "-m", "segssl.cli", "table", str(cluster_stack.base / f"{NAME}.yaml")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode != 0


def _files_containing(root: Path, needle: bytes) -> list[str]:
    hits = []
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            try:
                if needle in p.read_bytes():
                    hits.append(str(p))
            except OSError:
                continue
    return hits


def test_password_nowhere_in_records_or_storage(
    cluster_stack: Stack, main_sweep: dict[str, Any]
) -> None:
    st = cluster_stack
    secret = st.password
    for db in ("mlflow", "mlflow_auth"):
        dump = st.pg.dump(db)
        assert secret not in dump and PG_PASSWORD not in dump, db
    assert "mlflow" in st.pg.dump("mlflow_auth")  # the dump is real: it has the auth tables
    for where in (st.base / "artifacts", st.base / "storage" / NAME):
        assert _files_containing(where, secret.encode()) == [], where
    assert secret not in st.mlflow.log.read_text()
    client = job_client(st)
    (job,) = [j for j in client.list_jobs() if j.metadata.get("segssl.sweep") == NAME]
    assert secret not in job.entrypoint and secret not in str(job.metadata)
    assert secret not in client.get_job_logs(job.submission_id)
    run = next(iter(finished_once_per_key(trial_runs(st, NAME), 4).values()))
    record = str(run.data.params) + str(run.data.tags) + str(run.data.metrics)
    assert secret not in record
    # the one place the password lives: the job's runtime environment (Ray's job table), which
    # is how it reaches the trial workers
    assert job.runtime_env["env_vars"]["MLFLOW_TRACKING_PASSWORD"] == secret


def test_mlflow_ui_shows_parent_children_and_params(
    cluster_stack: Stack, main_sweep: dict[str, Any]
) -> None:
    """The MLflow UI of the server (basic auth), in headless Chromium: the sweep's parent run
    lists its child runs; a child shows its params and its parent. Screenshots are saved."""
    from headless_browser import headless_chromium, open_and_wait

    st = cluster_stack
    client = mlflow_client(st)
    exp_id = client.get_experiment_by_name(NAME).experiment_id
    (parent,) = client.search_runs([exp_id], "tags.`segssl.kind` = 'sweep'")
    kids = list(finished_once_per_key(trial_runs(st, NAME), 4).values())
    names = [k.info.run_name for k in kids]
    assert len(set(names)) == 4
    auth = (ADMIN, st.password)
    shots = Path(os.environ.get("SEGSSL_SCREENSHOTS", str(st.base.parent / "segssl-screenshots")))
    shots.mkdir(parents=True, exist_ok=True)

    def page(run_id: str) -> str:
        return f"{st.mlflow.uri}/#/experiments/{exp_id}/runs/{run_id}?workflowType=machine_learning"

    with headless_chromium() as browser:
        text = open_and_wait(
            browser, page(parent.info.run_id), [parent.info.run_name, "Child runs", *names], auth
        )
        assert "sweep/baseline/finished" in text  # the parent's own record
        browser.save_screenshot(str(shots / "mlflow-parent-run.png"))
        kid = kids[0]
        text = open_and_wait(
            browser,
            page(kid.info.run_id),
            [kid.info.run_name, "Parameters (", "Parent run", parent.info.run_name],
            auth,
        )
        params = text[text.index("Parameters (") :]
        for key in ("method.name", "data.labeled_scans", "data.dataset", "seed"):
            assert key in params
        assert f"data.labeled_scans\n{kid.data.params['data.labeled_scans']}" in params
        browser.save_screenshot(str(shots / "mlflow-child-run.png"))
    for png in ("mlflow-parent-run.png", "mlflow-child-run.png"):
        data = (shots / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, png
