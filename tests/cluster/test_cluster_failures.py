"""Failures a cluster brings, on the real loopback stack (see conftest.py); each test ends with
exactly one FINISHED MLflow run per trial key:

* the sweep's driver killed, then the sweep submitted again: attempt 2 runs only the missing
  trials;
* the MLflow server killed and restarted mid-sweep: no run, metric step or final metric lost,
  nothing duplicated;
* the worker node stopped mid-sweep: its trial is retried on the head and resumes from its last
  checkpoint (no epoch logged twice).
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from typing import Any

import loopback_stack as stack
from cluster_helpers import (
    Stack,
    finished_once_per_key,
    job_client,
    mlflow_client,
    sweep_yaml,
    trial_runs,
    wait_runs,
)


def _submit(st: Stack, path: Any) -> str:
    res = st.segssl("submit", str(path), "--address", st.ray.job_address, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def _follow(st: Stack, path: Any) -> None:
    res = st.segssl(
        "submit", str(path), "--address", st.ray.job_address, "--logs", "--follow", timeout=900
    )
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]


def _steps(st: Stack, run: Any, metric: str = "val/dsc") -> list[int]:
    return [m.step for m in mlflow_client(st).get_metric_history(run.info.run_id, metric)]


def _not_over(st: Stack, name: str, runs: list[Any], n: int) -> None:
    """Stop waiting (fail) when every trial finished before the fault could be injected, or
    the sweep's job ended."""
    if _n_finished(runs) >= n:
        raise stack.ServiceDied("the sweep finished before the fault was injected: lengthen it")
    for job in job_client(st).list_jobs():
        status = str(job.status)
        if job.metadata.get("segssl.sweep") == name and status in ("FAILED", "STOPPED"):
            raise stack.ServiceDied(f"job {job.submission_id} {status}: {job.message}")


def _n_finished(runs: list[Any]) -> int:
    return sum(r.info.status == "FINISHED" for r in runs)


def test_driver_killed_then_resubmitted_runs_only_the_missing_trials(cluster_stack: Stack) -> None:
    st = cluster_stack
    name = "cl-driver"
    path = sweep_yaml(st, name, epochs=10)  # 4 trials, 2 at a time: a wide window to kill in
    out = _submit(st, path)
    assert "attempt 1" in out

    def some_finished(runs: list[Any]) -> bool:
        _not_over(st, name, runs, 4)
        return _n_finished(runs) >= 1

    wait_runs(st, name, some_finished, 600, "a first FINISHED trial")
    client = job_client(st)
    (job,) = [j for j in client.list_jobs() if j.metadata.get("segssl.sweep") == name]
    pid = job.driver_info.pid
    os.kill(int(pid), signal.SIGKILL)  # the sweep's driver process, on the head node
    stack.wait_for(
        lambda: str(client.get_job_info(job.submission_id).status) in ("FAILED", "STOPPED"),
        120,
        "the killed driver's job to end",
    )
    done_before = {
        r.data.tags["segssl.trial_key"] for r in trial_runs(st, name) if r.info.status == "FINISHED"
    }
    assert 1 <= len(done_before) < 4, done_before
    out = _submit(st, path)
    assert "submitted job" in out and "-a2 (attempt 2" in out, out
    _follow(st, path)
    finished = finished_once_per_key(trial_runs(st, name), 4)
    assert set(done_before) <= set(finished)
    exp = mlflow_client(st).get_experiment_by_name(name)
    sweeps = mlflow_client(st).search_runs(
        [exp.experiment_id], "tags.`segssl.kind` = 'sweep'", order_by=["attributes.start_time ASC"]
    )
    assert len(sweeps) == 2
    second = sweeps[-1].data.metrics
    assert second["sweep/baseline/skipped"] == len(done_before)  # only the missing ones ran
    assert second["sweep/baseline/launched"] == 4 - len(done_before)
    for key in done_before:  # a trial finished before the kill was not trained again
        assert finished[key].data.tags.get("segssl.attempts") == "1"


def test_mlflow_server_restarted_mid_sweep(cluster_stack: Stack) -> None:
    st = cluster_stack
    name = "cl-mlflow"
    epochs = 60  # the restart must fall inside the trials (10 epochs finished first when idle)
    path = sweep_yaml(st, name, labeled=(1,), epochs=epochs)  # 2 trials, one per node
    _submit(st, path)

    def logging_now(runs: list[Any]) -> bool:
        _not_over(st, name, runs, 2)
        return any(r.info.status == "RUNNING" and "val/dsc" in r.data.metrics for r in runs)

    wait_runs(st, name, logging_now, 600, "a trial logging epochs")
    st.mlflow.stop(signal.SIGKILL)
    time.sleep(3)
    st.mlflow.start()  # same port, same database: the clients' retries reach it again
    _follow(st, path)
    finished = finished_once_per_key(trial_runs(st, name), 2)
    for run in finished.values():
        steps = _steps(st, run)
        assert sorted(steps) == list(range(1, epochs + 1)), steps  # none lost, none twice
        assert "test/dsc" in run.data.metrics and "best_epoch" in run.data.metrics
    assert len(trial_runs(st, name)) == 2  # no run duplicated by a retried create


def test_worker_node_stopped_mid_sweep_trial_resumes_on_the_head(cluster_stack: Stack) -> None:
    st = cluster_stack
    name = "cl-node"
    epochs = 30  # the kill must land inside a trial
    path = sweep_yaml(st, name, labeled=(1,), epochs=epochs)  # 2 trials, one per node
    nodes = st.ray.alive_nodes()
    _submit(st, path)

    def on_b_with_checkpoint(runs: list[Any]) -> list[Any]:
        _not_over(st, name, runs, 2)
        return [
            r
            for r in runs
            if r.info.status == "RUNNING"
            and r.data.tags.get("segssl.node_id") == nodes["node_b"]
            and len(_steps(st, r)) >= 2  # last.pt of epoch 1 is on the shared storage
        ]

    victim = wait_runs(st, name, on_b_with_checkpoint, 600, "a trial on node_b past epoch 2")
    victim_id = on_b_with_checkpoint(victim)[0].info.run_id
    try:
        st.ray.stop_node("node_b", signal.SIGKILL)
        _follow(st, path)
    finally:
        stack.start_node_retrying(st.ray, "node_b", head=False)  # later tests get both again
    finished = finished_once_per_key(trial_runs(st, name), 2)
    (moved,) = [r for r in finished.values() if r.info.run_id == victim_id]
    tags = moved.data.tags
    assert tags["segssl.node_id"] == nodes["node_a"], "retried on the head node"
    assert tags["segssl.attempts"] == "2"
    assert tags.get("segssl.resumed_from_tune_checkpoint") == "true"
    steps = _steps(st, moved)
    assert Counter(steps) == Counter(range(1, epochs + 1)), steps  # resumed, not restarted
