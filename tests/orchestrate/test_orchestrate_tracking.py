"""MLflow side without Ray: stale RUNNING runs of a dead driver are marked KILLED, a live
driver's are left alone; the progress counts and ETA."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from rich.console import Console

from segssl.orchestrate import tracking
from segssl.orchestrate.progress import SweepProgress


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def make_sweep_run(client: MlflowClient, exp: str, host: str, pid: int, beat: float) -> str:
    run = client.create_run(
        exp,
        tags={
            tracking.TAG_KIND: "sweep",
            tracking.TAG_HOST: host,
            tracking.TAG_PID: str(pid),
            tracking.TAG_HEARTBEAT: f"{beat:.0f}",
        },
    )
    return run.info.run_id


def make_trial_run(client: MlflowClient, exp: str, parent: str, key: str) -> str:
    run = client.create_run(
        exp,
        tags={
            tracking.TAG_KIND: "trial",
            "mlflow.parentRunId": parent,
            tracking.TAG_KEY: key,
        },
    )
    return run.info.run_id


def test_mark_stale_runs(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = tracking.ensure_experiment(uri, "stale", "h")
    client = MlflowClient(uri)
    here, now = socket.gethostname(), time.time()
    dead = make_sweep_run(client, exp, here, dead_pid(), now)  # killed driver on this host
    alive = make_sweep_run(client, exp, here, os.getpid(), now)  # a live driver
    remote_old = make_sweep_run(client, exp, "elsewhere", 1, now - 3600)  # silent for an hour
    remote_new = make_sweep_run(client, exp, "elsewhere", 1, now - 10)  # heartbeat 10 s ago
    trials = {
        p: make_trial_run(client, exp, p, f"k-{i}")
        for i, p in enumerate([dead, alive, remote_old, remote_new])
    }
    orphan = make_trial_run(client, exp, "no-such-run", "k-x")
    done = make_trial_run(client, exp, dead, "k-done")
    client.set_terminated(done, status="FINISHED")

    assert tracking.mark_stale_runs(uri, exp) == 5  # dead + remote_old, their trials, orphan
    status = {
        r: client.get_run(r).info.status
        for r in [dead, alive, remote_old, remote_new, *trials.values(), orphan, done]
    }
    assert status[dead] == status[trials[dead]] == "KILLED"
    assert status[remote_old] == status[trials[remote_old]] == status[orphan] == "KILLED"
    assert status[alive] == status[trials[alive]] == "RUNNING"
    assert status[remote_new] == status[trials[remote_new]] == "RUNNING"
    assert status[done] == "FINISHED"
    assert "driver gone" in client.get_run(dead).data.tags["segssl.end_reason"]
    assert set(tracking.finished_runs(uri, exp)) == {"k-done"}


def test_tracking_uri_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://m:5000")
    assert tracking.resolve_tracking_uri(None, tmp_path) == "http://m:5000"
    assert tracking.resolve_tracking_uri("sqlite:////x.db", tmp_path) == "sqlite:////x.db"


def test_progress_counts_and_eta() -> None:
    p = SweepProgress("s", concurrency=2, console=Console(quiet=True), live=False)
    p.add_stage("pre", total=5, skipped=1)
    assert p.stages["pre"].pending == 4 and p.eta() is None
    p.started("pre", "a")
    p.started("pre", "b")
    p.started("pre", "a")  # a retried trial restarts: still one running trial
    assert p.stages["pre"].running == 2 and p.stages["pre"].pending == 2
    p._starts["a"] -= 10.0  # trial a took 10 s
    p.ended("pre", "a", ok=True)
    p.ended("pre", "b", ok=False)
    c = p.stages["pre"]
    assert (c.finished, c.failed, c.running, c.pending) == (1, 1, 0, 2)
    # mean duration ~5 s x 2 remaining trials / concurrency 2
    assert p.eta() == pytest.approx(5.0, abs=0.5)
    assert "ETA" in str(p.table().title)


def test_eta_uses_the_trials_the_resources_let_run_at_once() -> None:
    """A sweep allowing 16 trials at once on a machine that runs 2: the ETA divides by 2."""
    p = SweepProgress("s", concurrency=16, console=Console(quiet=True), live=False)
    p.add_stage("pre", total=10, skipped=0)
    p.started("pre", "a")
    p.started("pre", "b")
    p._starts["a"] -= 10.0
    p.ended("pre", "a", ok=True)  # 10 s; b still running, 8 pending
    p.started("pre", "c")
    assert p.peak_running == 2
    # mean 10 s x the trials left (pending + running) / 2 at once, not / 16
    left = sum(c.pending + c.running for c in p.stages.values())
    assert p.eta() == pytest.approx(10.0 * left / 2, rel=0.05)


def test_refuses_to_run_a_sweep_a_live_driver_is_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from segssl.orchestrate.runner import run_sweep
    from segssl.orchestrate.spec import parse_sweep, spec_hash

    spec = parse_sweep(
        {"name": "busy", "stages": {"a": {"config": {"method": {"name": "baseline"}}}}}
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = tracking.ensure_experiment(uri, "busy", spec_hash(spec))
    client = MlflowClient(uri)
    other = make_sweep_run(client, exp, socket.gethostname(), os.getppid(), time.time())
    with pytest.raises(tracking.TrackingError, match=f"run right now by another driver.*{other}"):
        run_sweep(
            spec,
            tracking_uri=uri,
            storage=tmp_path / "s",
            root=tmp_path,
            console=Console(quiet=True),
            live=False,
            check_data=False,
        )
    assert client.get_run(other).info.status == "RUNNING"  # left alone


def test_progress_without_a_terminal_prints_one_line_per_trial_event() -> None:
    """`segssl sweep > log` (no TTY) with the default --live: per-trial lines are chosen
    automatically (a live table cannot redraw in a file) with name, metric, elapsed and ETA."""
    import io

    out = io.StringIO()
    p = SweepProgress("s", concurrency=1, console=Console(file=out, width=80), live=True)
    p.names = {"k1": "baseline | lv | 1 scan | seed 0"}
    with p:
        p.add_stage("ft", total=2, skipped=0)
        p.started("ft", "t1", "baseline | lv | 1 scan | seed 0")
        p.ended("ft", "t1", True, "baseline | lv | 1 scan | seed 0", ("test/dsc", 0.8123))
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[s/ft] started baseline | lv | 1 scan | seed 0: 0/2 done")
    assert "finished baseline | lv | 1 scan | seed 0 in 0:00, test/dsc 0.8123: 1/2 done" in lines[1]
    assert "elapsed 0:00, ETA 0:00" in lines[1] and len(lines) == 2
    assert all(len(line) > 80 for line in lines)  # never wrapped at the console's width
    assert "\x1b[" not in out.getvalue()  # no colour codes in a file


def test_a_failed_trial_line_names_its_reason() -> None:
    """Without a terminal, a trial that fails for good prints why (not only in the log file)."""
    import io
    from types import SimpleNamespace

    from segssl.orchestrate.progress import _TuneProgress

    out = io.StringIO()
    p = SweepProgress("s", concurrency=1, console=Console(file=out, width=200), live=True)
    p.add_stage("ft", total=1, skipped=0)
    cb = _TuneProgress(p, "ft", lambda: None)
    reason = "ConfigError: data.root: data/acdc: no such folder"
    trial = SimpleNamespace(
        trial_id="t1",
        config={"trial_key": "k1"},
        last_result={"segssl/failed": 1.0, "segssl/reason": reason},
    )
    cb.on_trial_start(0, [], trial)
    cb.on_trial_complete(0, [], trial)
    assert "FAILED trial k1" in out.getvalue() and reason in out.getvalue(), out.getvalue()


def test_progress_of_a_tune_run_of_several_stages_counts_each_trial_in_its_stage() -> None:
    """A wave's Tune run holds several stages: the callback finds each trial's stage by key."""
    import io
    from types import SimpleNamespace

    from segssl.orchestrate.progress import _TuneProgress

    p = SweepProgress("s", concurrency=2, console=Console(file=io.StringIO()), live=False)
    p.add_stage("pretrain", total=1, skipped=0)
    p.add_stage("baseline", total=2, skipped=0)
    cb = _TuneProgress(p, {"kp": "pretrain", "kb1": "baseline", "kb2": "baseline"}, lambda: None)

    def trial(tid: str, key: str, failed: bool = False) -> SimpleNamespace:
        return SimpleNamespace(
            trial_id=tid, config={"trial_key": key}, last_result={"segssl/failed": float(failed)}
        )

    for t in (trial("1", "kp"), trial("2", "kb1"), trial("3", "kb2", failed=True)):
        cb.on_trial_start(0, [], t)
    assert (p.stages["pretrain"].running, p.stages["baseline"].running) == (1, 2)
    cb.on_trial_complete(0, [], trial("1", "kp"))
    cb.on_trial_complete(0, [], trial("2", "kb1"))
    cb.on_trial_error(0, [], trial("3", "kb2"))
    got = {s: (c.finished, c.failed, c.running) for s, c in p.stages.items()}
    assert got == {"pretrain": (1, 0, 0), "baseline": (1, 1, 0)}


class _ErroredTrial:
    """A trial Tune gave up on after its retries, with the error it saved (as Ray saves it:
    the task error wrapping the trainable's exception)."""

    def __init__(self, exc: BaseException | None, text: str | None = None) -> None:
        self.trial_id, self.config, self.last_result = "t1", {"trial_key": "k1"}, {}
        self._exc, self._text = exc, text

    def get_pickled_error(self) -> BaseException | None:
        from types import SimpleNamespace

        return SimpleNamespace(cause=self._exc) if self._exc is not None else None  # type: ignore[return-value]

    def get_error(self) -> str | None:
        return self._text


def _run_errored(trial: _ErroredTrial, terminal: bool) -> str:
    import io

    from segssl.orchestrate.progress import _TuneProgress

    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=terminal)
    p = SweepProgress("s", concurrency=1, console=console, live=True)
    p.add_stage("ft", total=1, skipped=0)
    cb = _TuneProgress(p, "ft", lambda: None)
    with p:
        cb.on_trial_start(0, [], trial)
        cb.on_trial_error(0, [], trial)
    return out.getvalue()


def test_a_trial_failed_after_its_retries_prints_its_error_without_a_terminal() -> None:
    """A retryable error that outlived max_failures ends in on_trial_error: its line names it."""
    exc = NotADirectoryError(20, "Not a directory", "/store/trials/k1")
    out = _run_errored(_ErroredTrial(exc), terminal=False)
    (line,) = [x for x in out.splitlines() if "FAILED" in x]
    assert "FAILED trial k1" in line, out
    assert "NotADirectoryError: [Errno 20] Not a directory: '/store/trials/k1'" in line, out
    text = "Failure # 2 (occurred at ...)\nTraceback...\nRuntimeError: CUDA error: unknown\n"
    out = _run_errored(_ErroredTrial(None, text), terminal=False)  # only the text was saved
    assert "(RuntimeError: CUDA error: unknown)" in out, out


def test_live_mode_keeps_a_failed_trials_reason_on_its_own_line() -> None:
    """With a terminal the live table redraws in place; a failed trial's reason is printed
    above it and stays in the final output."""
    exc = RuntimeError("injected failure after epoch 1")
    import re

    out = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", _run_errored(_ErroredTrial(exc), terminal=True))
    lines = [x for x in out.splitlines() if "RuntimeError: injected failure after epoch 1" in x]
    assert lines and lines[0].startswith("[s/ft] FAILED trial k1 in 0:00 (RuntimeError"), out
    assert out.rstrip().endswith("┘")  # the final table is drawn after (below) that line


def test_a_sqlite_sweeps_artifacts_stay_in_its_storage(tmp_path: Path, monkeypatch) -> None:
    """MLflow's default artifact root is ./mlruns/<experiment id> in the current directory:
    every sweep run from one folder (each its own SQLite store, each experiment id 1) shared
    ./mlruns/1. A sweep's artifacts belong beside its store."""
    from mlflow import MlflowClient

    from segssl.orchestrate.tracking import ensure_experiment

    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for sweep in ("first", "second"):
        store = tmp_path / sweep / "storage"
        store.mkdir(parents=True)
        uri = f"sqlite:///{store / 'mlflow.db'}"
        exp = ensure_experiment(uri, f"sweep {sweep}", "h")
        client = MlflowClient(uri)
        run = client.create_run(exp).info.run_id
        (tmp_path / "config.yaml").write_text(sweep)
        client.log_artifact(run, str(tmp_path / "config.yaml"))
        got = Path(client.get_run(run).info.artifact_uri.removeprefix("file://"))
        assert got.is_relative_to(store / "artifacts" / f"sweep_{sweep}"), got
        assert (got / "config.yaml").read_text() == sweep
    assert not (elsewhere / "mlruns").exists()
