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
import pytest
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


def _precondition(what: str) -> None:
    """Fail naming the fault injection's precondition that did not hold (the test proved
    nothing), rather than with a confusing assertion further on."""
    pytest.fail(f"precondition of the fault injection violated: {what}", pytrace=False)


def _not_over(st: Stack, name: str, runs: list[Any], n: int) -> None:
    """Stop waiting (fail) when every trial finished before the fault could be injected, or
    the sweep's job ended."""
    if _n_finished(runs) >= n:
        _precondition("the sweep finished before the fault was injected: lengthen it")
    for job in job_client(st).list_jobs():
        status = str(job.status)
        if job.metadata.get("segssl.sweep") == name and status in ("FAILED", "STOPPED"):
            raise stack.ServiceDied(f"job {job.submission_id} {status}: {job.message}")


def _n_finished(runs: list[Any]) -> int:
    return sum(r.info.status == "FINISHED" for r in runs)


def _epochs(run: Any) -> int | None:
    """The run's ``train.epochs``; None for a run whose attempt was killed between creating it
    and logging its params (the driver kill can land right after a trial starts)."""
    epochs = run.data.params.get("train.epochs")
    return None if epochs is None else int(epochs)


# The driver test's sweep: two SHORT trials (seeds 0, 1), then two LONG ones. The planner orders
# trials by grid combination, then seed, and Tune creates a grid trial only when fewer than
# max_concurrent (2) are live, so a LONG trial starts only after a SHORT one ended: killed at the
# first FINISHED trial, the driver leaves 1 or 2 SHORT trials done and no LONG one whenever a
# LONG trial outlasts a poll (0.5 s) plus the kill (0.5-1 s measured). An epoch of these takes
# 0.1-0.2 s on 2 cores (0.2 s measured beside a Ray sweep): 50 epochs are 5-10 s after the
# trial's start-up, five times that latency or more. Attempt 2 resumes the killed LONG trials
# from their last.pt: it costs about one LONG trial.
SHORT, LONG = 2, 50


def test_driver_killed_then_resubmitted_runs_only_the_missing_trials(cluster_stack: Stack) -> None:
    st = cluster_stack
    name = "cl-driver"
    path = sweep_yaml(st, name, labeled=(1,), grid={"train.epochs": [SHORT, LONG]})
    out = _submit(st, path)
    assert "attempt 1" in out

    def some_finished(runs: list[Any]) -> bool:
        done = [r for r in runs if r.info.status == "FINISHED"]
        if any(_epochs(r) == LONG for r in done):
            _precondition(f"a {LONG}-epoch trial finished before the first {SHORT}-epoch one")
        if not done:
            _not_over(st, name, runs, 4)
        return bool(done)

    # polled often: the kill must follow the first FINISHED trial well within a LONG trial
    wait_runs(st, name, some_finished, 600, "a first FINISHED trial", every=0.5)
    client = job_client(st)
    (job,) = [j for j in client.list_jobs() if j.metadata.get("segssl.sweep") == name]
    pid = job.driver_info.pid
    os.kill(int(pid), signal.SIGKILL)  # the sweep's driver process, on the head node
    killed_at = time.time()
    stack.wait_for(
        lambda: str(client.get_job_info(job.submission_id).status) in ("FAILED", "STOPPED"),
        120,
        "the killed driver's job to end",
    )
    runs = trial_runs(st, name)
    done = {r.data.tags["segssl.trial_key"]: r for r in runs if r.info.status == "FINISHED"}
    first_end = min(r.info.end_time for r in done.values()) / 1000
    late = [r.info.run_name for r in done.values() if _epochs(r) == LONG]
    if late:
        _precondition(
            f"{late} ({LONG} epochs) finished before the driver's kill took effect, "
            f"{killed_at - first_end:.1f} s after the first {SHORT}-epoch trial ended: "
            "raise LONG so one of its trials outlasts the poll and the kill"
        )
    done_before = set(done)
    assert 1 <= len(done_before) <= 2, {k: _epochs(r) for k, r in done.items()}
    last_log = [
        m.timestamp / 1000 - killed_at
        for r in runs
        if r.info.status == "RUNNING" and _epochs(r) == LONG
        for m in mlflow_client(st).get_metric_history(r.info.run_id, "val/dsc")
    ]
    logged = f"until {max(last_log):.1f} s after the kill" if last_log else "no epoch"
    print(
        f"killed {killed_at - first_end:.1f} s after the first trial ended; "
        f"{len(done_before)} of 2 short trials done; the long trials logged {logged}"
    )
    out = _submit(st, path)
    assert "submitted job" in out and "-a2 (attempt 2" in out, out
    _follow(st, path)
    finished = finished_once_per_key(trial_runs(st, name), 4)
    assert set(done_before) <= set(finished)
    assert sorted(_epochs(r) for r in finished.values()) == [SHORT, SHORT, LONG, LONG]
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
    epochs = 60  # the restart must fall inside the trials: 6-12 s at 0.1-0.2 s an epoch
    path = sweep_yaml(st, name, labeled=(1,), epochs=epochs)  # 2 trials, one per node
    _submit(st, path)

    def logging_now(runs: list[Any]) -> bool:
        _not_over(st, name, runs, 2)
        return any(r.info.status == "RUNNING" and "val/dsc" in r.data.metrics for r in runs)

    runs = wait_runs(st, name, logging_now, 600, "a trial logging epochs", every=0.5)
    logging = {r.info.run_id for r in runs if r.info.status == "RUNNING"}
    st.mlflow.stop(signal.SIGKILL)
    time.sleep(3)
    st.mlflow.start()  # same port, same database: the clients' retries reach it again
    back_at = time.time()
    _follow(st, path)
    finished = finished_once_per_key(trial_runs(st, name), 2)
    for run in finished.values():
        if run.info.run_id in logging and run.info.end_time / 1000 < back_at:
            _precondition(
                f"{run.info.run_name} ended before the MLflow server was back: the restart did "
                "not fall inside it; lengthen the trials"
            )
        steps = _steps(st, run)
        assert sorted(steps) == list(range(1, epochs + 1)), steps  # none lost, none twice
        assert "test/dsc" in run.data.metrics and "best_epoch" in run.data.metrics
    assert len(trial_runs(st, name)) == 2  # no run duplicated by a retried create


def test_worker_node_stopped_mid_sweep_trial_resumes_on_the_head(cluster_stack: Stack) -> None:
    st = cluster_stack
    name = "cl-node"
    epochs = 50  # the kill must land inside a trial: 5-10 s at 0.1-0.2 s an epoch
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

    victim = wait_runs(
        st, name, on_b_with_checkpoint, 600, "a trial on node_b past epoch 2", every=0.5
    )
    victim_id = on_b_with_checkpoint(victim)[0].info.run_id
    try:
        st.ray.stop_node("node_b", signal.SIGKILL)
        at_kill = mlflow_client(st).get_run(victim_id)
        if at_kill.info.status != "RUNNING" or len(_steps(st, at_kill)) >= epochs:
            _precondition(
                f"{at_kill.info.run_name} was {at_kill.info.status} with "
                f"{len(_steps(st, at_kill))} of {epochs} epochs when node_b stopped: the kill "
                "did not land inside it; lengthen the trials"
            )
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
