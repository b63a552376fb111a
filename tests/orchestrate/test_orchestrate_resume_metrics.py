"""A trial killed around an epoch's checkpoint and resumed: MLflow holds every epoch once.

The engine writes ``last.pt`` before it reports the epoch; a process killed in between resumes
after an epoch MLflow never got. These tests kill a real (tiny) run at each point (before the
save, between the save and the MLflow log, after the log), resume it on the same workdir and
SQLite store, and check every metric's steps 1..E are logged exactly once with the values the
epochs produced (the resumed run's history, which the checkpoint carries).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from segssl.engine import loop
from segssl.orchestrate import gpu_guard, tracking, trainable

EPOCHS, KILLED_AT = 3, 2


class _Killed(BaseException):
    """The process dying (nothing of it runs after this)."""


def _kill_at(monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """Kill the run at ``where`` of epoch ``KILLED_AT`` (``where@N``: of epoch N)."""
    where, _, at = where.partition("@")
    killed_at = int(at) if at else KILLED_AT
    real_save, real_log = loop.save_checkpoint, tracking.TrialRecorder.log_metrics

    def save(path: Path, obj: dict) -> None:
        last = Path(path).name == "last.pt" and obj.get("epoch") == killed_at
        if last and where == "before_save":
            raise _Killed
        real_save(path, obj)
        if last and where == "between_save_and_log":
            raise _Killed

    def log(self: tracking.TrialRecorder, metrics: Any, step: int) -> dict:
        out = real_log(self, metrics, step)
        if step == killed_at and where == "after_log":
            raise _Killed
        return out

    monkeypatch.setattr(loop, "save_checkpoint", save)
    monkeypatch.setattr(tracking.TrialRecorder, "log_metrics", log)


def _steps(client: MlflowClient, run_id: str, key: str) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for m in client.get_metric_history(run_id, key):
        out.setdefault(m.step, []).append(m.value)
    return out


@pytest.mark.parametrize(
    "where",
    [
        "before_save",
        "between_save_and_log",
        "after_log",
        "between_save_and_log+run_lost",
        f"between_save_and_log@{EPOCHS}",  # the last epoch: no final report either
    ],
)
def test_a_trial_killed_around_a_checkpoint_logs_every_epoch_once(
    tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    from ray import tune

    cfg = tiny("baseline", "finetune", train={"epochs": EPOCHS, "iters_per_epoch": 1})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = tracking.ensure_experiment(uri, "resume", "h")
    task = trainable.TrialTask(
        key="k1",
        stage="finetune",
        name="trial",
        config=cfg,
        workdir=str(tmp_path / "trials" / "k1"),
        tags={"segssl.trial_key": "k1", "segssl.stage": "finetune"},
        params={"seed": 0},
    )
    ctx = trainable.SweepContext("s", uri, exp, None, str(tmp_path), "sha", "val/dsc", "max")
    reports: list[dict] = []
    monkeypatch.setattr(tune, "report", lambda m, checkpoint=None: reports.append(dict(m)))
    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)
    monkeypatch.setattr(gpu_guard, "guard_from_ray", lambda: gpu_guard.apply_memory_guard(0.0))
    monkeypatch.setattr(gpu_guard, "placement_tags", lambda guard: {})
    with monkeypatch.context() as kill:
        _kill_at(kill, where.removesuffix("+run_lost"))
        with pytest.raises(_Killed):
            trainable.run_trial({"trial_key": "k1"}, ctx=ctx, tasks={"k1": task})
    lost = where.endswith("+run_lost")
    if lost:  # the MLflow run is gone: the retry records the whole checkpoint in a new run
        (gone,) = MlflowClient(uri).search_runs([exp])
        MlflowClient(uri).delete_run(gone.info.run_id)
    monkeypatch.setattr(tune, "get_checkpoint", lambda: object())  # Tune retries the trial
    reports.clear()
    trainable.run_trial({"trial_key": "k1"}, ctx=ctx, tasks={"k1": task})

    client = MlflowClient(uri)
    (run,) = client.search_runs([exp])
    assert run.info.status == "FINISHED"
    assert run.data.tags["segssl.attempts"] == ("1" if lost else "2")
    history = json.loads((Path(task.workdir) / "result.json").read_text())["history"]
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))
    for key in ("val/dsc", "val/dsc/LV", "train/loss", "train/lr"):
        logged = _steps(client, run.info.run_id, key)
        assert Counter({s: len(v) for s, v in logged.items()}) == Counter(
            dict.fromkeys(range(1, EPOCHS + 1), 1)
        ), (key, logged)
        assert [logged[h["epoch"]][0] for h in history] == [h[key] for h in history], key
    final = json.loads((Path(task.workdir) / "result.json").read_text())["metrics"]
    for key in ("best_epoch", "test/dsc", "test/dsc/LV", "best_val/dsc", "cost/wall_s"):
        assert _steps(client, run.info.run_id, key) == {EPOCHS: [final[key]]}, key
    # the searcher's best counts the epochs of the earlier attempt too
    assert reports[-1]["val/dsc"] == max(h["val/dsc"] for h in history)


def test_a_reopened_run_never_logs_a_step_twice_and_a_restart_gets_a_new_run(
    tmp_path: Path,
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = tracking.ensure_experiment(uri, "dedupe", "h")
    first = tracking.TrialRecorder(uri, exp, None, tmp_path / "wd")
    run_id = first.start("t", {"segssl.trial_key": "k"}, {})
    first({"val/dsc": 0.5, "train/loss": 1.0}, 1)
    first.end("KILLED")
    again = tracking.TrialRecorder(uri, exp, None, tmp_path / "wd")
    assert again.start("t", {"segssl.trial_key": "k"}, {}) == run_id
    again.replay({"val/dsc": 0.5, "train/loss": 1.0}, 1)  # already there: ignored
    again.replay({"val/dsc": 0.6, "train/loss": 0.9}, 2)  # missing: logged
    assert again.log_metrics({"val/dsc": 0.6, "val/dsc/LV": 0.7}, 2) == {"val/dsc/LV": 0.7}
    client = MlflowClient(uri)
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "val/dsc")] == [
        (1, 0.5),
        (2, 0.6),
    ]
    restart = tracking.TrialRecorder(uri, exp, None, tmp_path / "wd")
    assert restart.start("t", {"segssl.trial_key": "k"}, {}, reopen=False) != run_id


def test_a_reopened_run_reads_the_history_only_of_the_metrics_it_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resumed trial's final report has dozens to hundreds of metrics (per class, per test
    scan) the run never got: asking MLflow for each one's history is a request per metric on
    every reopened run; only those the run holds are read."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = tracking.ensure_experiment(uri, "reads", "h")
    first = tracking.TrialRecorder(uri, exp, None, tmp_path / "wd")
    run_id = first.start("t", {"segssl.trial_key": "k"}, {})
    first({"val/dsc": 0.5, "train/loss": 1.0}, 1)
    first.end("KILLED")
    reads: list[str] = []
    real = MlflowClient.get_metric_history

    def history(self: MlflowClient, rid: str, key: str) -> list:
        reads.append(key)
        return real(self, rid, key)

    monkeypatch.setattr(MlflowClient, "get_metric_history", history)
    again = tracking.TrialRecorder(uri, exp, None, tmp_path / "wd")
    assert again.start("t", {"segssl.trial_key": "k"}, {}) == run_id
    again.replay({"val/dsc": 0.5, "train/loss": 1.0}, 1)
    final = {f"test/scan/dsc/{i}": 0.1 * i for i in range(40)}
    assert again.log_metrics({"val/dsc": 0.6, **final}, 2) == {"val/dsc": 0.6, **final}
    assert sorted(reads) == ["train/loss", "val/dsc"]
    monkeypatch.undo()
    client = MlflowClient(uri)
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "val/dsc")] == [
        (1, 0.5),
        (2, 0.6),
    ]
    assert [m.step for m in client.get_metric_history(run_id, "test/scan/dsc/3")] == [2]


def test_the_sweep_reporter_counts_replayed_epochs_towards_the_best_but_reports_them_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The replayed epochs reach MLflow only; the first report after them carries the best value
    over all epochs (ASHA compares a resumed trial at a rung by it), once per live epoch."""
    from ray import tune

    reports: list[dict] = []
    monkeypatch.setattr(tune, "report", lambda m, checkpoint=None: reports.append(dict(m)))
    logged: list[tuple[int, dict]] = []

    class Recorder:
        def log_metrics(self, metrics: dict, step: int) -> dict:
            logged.append((step, dict(metrics)))
            return dict(metrics)

    task = trainable.TrialTask("k", "finetune", "t", None, "/nowhere", {}, {})  # type: ignore[arg-type]
    ctx = trainable.SweepContext("s", "uri", "1", None, "/nowhere", "sha", "val/dsc", "max")
    reporter = trainable._TuneReporter(task, ctx, Recorder())
    reporter.replay({"val/dsc": 0.9, "train/loss": 2.0}, 1)
    reporter.replay({"val/dsc": 0.5, "train/loss": 1.5}, 2)
    assert reports == []
    reporter({"val/dsc": 0.3, "train/loss": 1.0}, 3)
    assert [s for s, _ in logged] == [1, 2, 3]
    assert len(reports) == 1 and reports[0]["segssl/step"] == 3.0
    assert reports[0]["val/dsc"] == 0.9 and reports[0]["train/loss"] == 1.0


def test_a_run_reopened_after_dying_before_its_params_gets_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attempt killed between creating its run and logging all the params (100 a batch) is
    continued by the next attempt in the same run, which logs the params it lacks (the record
    contract: params are the whole resolved config), instead of leaving an orphan run."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = tracking.ensure_experiment(uri, "params", "h")
    params = {f"p{i:03d}": i for i in range(150)}
    real = tracking.TrialRecorder._log

    def dies_after_a_batch(self: tracking.TrialRecorder, *a: Any, **kw: Any) -> None:
        if kw.get("params"):  # the first batch of 100 params reaches MLflow, then the kill
            real(self, params=dict(list(kw["params"].items())[:100]))
            raise _Killed
        real(self, *a, **kw)

    with monkeypatch.context() as m:
        m.setattr(tracking.TrialRecorder, "_log", dies_after_a_batch)
        with pytest.raises(_Killed):
            tracking.TrialRecorder(uri, exp, None, tmp_path / "wd").start("t", {}, params)
    client = MlflowClient(uri)
    (killed,) = client.search_runs([exp])
    assert len(killed.data.params) == 100
    run_id = tracking.TrialRecorder(uri, exp, None, tmp_path / "wd").start("t", {}, params)
    (run,) = client.search_runs([exp])
    assert run.info.run_id == run_id == killed.info.run_id
    assert run.data.tags["segssl.attempts"] == "2"
    assert run.data.params == {k: str(v) for k, v in params.items()}
