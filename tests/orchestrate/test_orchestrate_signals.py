"""Ctrl-C and SIGTERM: ``segssl sweep`` stops cleanly and says so; ``segssl train`` ends its
MLflow run KILLED (issue 8). Real processes, real signals."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from segssl.orchestrate.interrupt import Interrupt, SweepInterrupted
from segssl.record import TAG_END_REASON, TAG_KIND, TAG_STAGE

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

SWEEP = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    import ray, typer
    from rich.console import Console
    import orch_helpers
    from segssl.cli import _sweep_summary
    from segssl.orchestrate.runner import run_sweep
    from segssl.orchestrate.spec import parse_sweep

    tmp, uri = Path(sys.argv[1]), sys.argv[2]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"],
                                       "SEGSSL_TEST_EPOCH_S": "1", "RAY_AUTH_MODE": "disabled"}})
    spec = parse_sweep({
        "name": "ctrlc", "seeds": [0], "max_concurrent": 1,
        "base": {"train": {"epochs": 120}},
        "stages": {
            "pretrain": {"config": {"stage": "pretrain", "method": {"name": "bim"}}},
            "finetune": {"from": "pretrain",
                         "config": {"stage": "finetune", "method": {"name": "finetune"}}},
        },
    })
    out = run_sweep(spec, tracking_uri=uri, train_fn=orch_helpers.quick_train,
                    storage=tmp / "store", root=tmp, live=False, console=Console(stderr=True))
    try:
        _sweep_summary(out)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    """
)


def _wait_for(predicate: Any, timeout: float, what: str, proc: subprocess.Popen) -> None:
    t0 = time.time()
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"process ended ({proc.returncode}) before {what}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


@pytest.mark.slow
def test_ctrl_c_stops_a_two_stage_sweep_and_exits_130(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    script = tmp_path / "sweep.py"
    script.write_text(SWEEP)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "PYTHONPATH": f"{HERE}:{ROOT}", "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path), uri],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    trials = tmp_path / "store" / "trials"
    _wait_for(lambda: any(trials.glob("*/epochs_run.json")), 240, "a trial's first epoch", proc)
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 130, out
    assert "stopped by SIGINT" in out and "unfinished" in out, out
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("ctrlc").experiment_id
    runs = client.search_runs([exp])
    sweep = [r for r in runs if r.data.tags.get(TAG_KIND) == "sweep"]
    assert [r.info.status for r in sweep] == ["KILLED"]
    assert sweep[0].data.tags[TAG_END_REASON] == "sweep stopped by SIGINT"
    stages = [r.data.tags.get(TAG_STAGE) for r in runs if r.data.tags.get(TAG_KIND) == "trial"]
    assert stages == ["pretrain"]  # the second stage never started
    trial = [r for r in runs if r.data.tags.get(TAG_KIND) == "trial"][0]
    assert trial.info.status == "KILLED"
    assert trial.data.tags[TAG_END_REASON] == "sweep stopped by SIGINT"
    (wd,) = list(trials.iterdir())
    assert (wd / "checkpoints" / "last.pt").is_file()  # kept: a rerun resumes from it
    assert not (tmp_path / "store" / "driver.lock").exists()


def test_a_second_signal_exits_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    exits: list[int] = []
    released: list[bool] = []
    monkeypatch.setattr(os, "_exit", exits.append)
    it = Interrupt()
    it.on_second = lambda: released.append(True)
    it.handle(signal.SIGINT)
    assert it.event.is_set() and exits == []
    with pytest.raises(SweepInterrupted) as exc:
        it.check()
    assert exc.value.code == 130
    it.handle(signal.SIGINT)
    assert exits == [130] and released == [True]


@pytest.mark.slow
def test_train_sigterm_ends_the_mlflow_run_killed(tiny_yaml: Any, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    raw = tiny_yaml("baseline", "finetune")
    raw["train"].update(epochs=500, iters_per_epoch=2)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    wd = tmp_path / "w"
    proc = subprocess.Popen(
        [sys.executable, "-m", "segssl.cli", "train", str(cfg), "--workdir", str(wd)]
        + ["--tracking-uri", uri, "--experiment", "t"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    last = wd / "checkpoints" / "last.pt"
    _wait_for(last.is_file, 240, "last.pt", proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out
    assert "stopped by SIGTERM" in out
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert run.info.status == "KILLED"
    assert run.data.tags[TAG_END_REASON] == "stopped by SIGTERM"
    assert last.is_file() and not list(last.parent.glob("*.tmp*"))


EARLY = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from segssl.cli import app
    from segssl.orchestrate import runner

    tmp = Path(sys.argv[1])

    def slow_step(*args):  # a slow tracking store, after the claim, before Ray starts
        (tmp / "checking").touch()
        time.sleep(120)

    runner._open_tracking = slow_step
    app(["sweep", str(tmp / "sweep.yaml"), "--tracking-uri", sys.argv[2],
         "--storage", str(tmp / "store"), "--no-live"])
    """
)


def test_sigterm_before_ray_releases_the_claim_and_exits_143(
    tmp_path: Path, acdc_root: Path
) -> None:
    """A scheduler's SIGTERM while the driver still opens the tracking store (claimed, Ray not
    started): the claim is released (a rerun elsewhere is not refused for a lease) and the exit
    status says SIGTERM."""
    raw = {
        "name": "early",
        "seeds": [0],
        "base": {
            "train": {"epochs": 1},
            "data": {"dataset": "acdc", "root": str(acdc_root), "split": {"sizes": [4, 1, 1]}},
        },
        "stages": {"pretrain": {"config": {"stage": "pretrain", "method": {"name": "bim"}}}},
    }
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(raw))
    script = tmp_path / "early.py"
    script.write_text(EARLY)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path), f"sqlite:///{tmp_path / 'mlflow.db'}"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _wait_for(lambda: (tmp_path / "checking").exists(), 240, "the tracking store", proc)
    assert (tmp_path / "store" / "driver.lock").exists()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143, out
    assert "SIGTERM" in out and "Traceback" not in out, out
    assert not (tmp_path / "store" / "driver.lock").exists()


# the same driver with its spec read from a JSON file (argv[3])
WAVE = SWEEP.replace(
    "spec = parse_sweep({",
    "import json\nspec = parse_sweep(json.loads(Path(sys.argv[3]).read_text()) if sys.argv[3:] "
    "else {",
)
assert WAVE != SWEEP


@pytest.mark.slow
def test_ctrl_c_in_a_wave_of_two_stages_closes_both_stages_runs(tmp_path: Path) -> None:
    """Two root stages share one Tune run (a wave): Ctrl-C while a trial of each trains ends
    both runs KILLED with the sweep's reason, and the child stage never starts."""
    import json

    from mlflow import MlflowClient

    spec = {
        "name": "ctrlc-wave",
        "seeds": [0],
        "max_concurrent": 2,
        "base": {"train": {"epochs": 120}},
        "stages": {
            "pretrain": {"config": {"stage": "pretrain", "method": {"name": "bim"}}},
            "baseline": {"config": {"stage": "finetune", "method": {"name": "baseline"}}},
            "finetune": {
                "from": "pretrain",
                "config": {"stage": "finetune", "method": {"name": "finetune"}},
            },
        },
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    script = tmp_path / "sweep.py"
    script.write_text(WAVE)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "PYTHONPATH": f"{HERE}:{ROOT}", "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path), uri, str(tmp_path / "spec.json")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    trials = tmp_path / "store" / "trials"
    both = lambda: len(list(trials.glob("*/epochs_run.json"))) == 2  # noqa: E731
    _wait_for(both, 240, "a first epoch of both stages' trials", proc)
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 130, out
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("ctrlc-wave").experiment_id])
    trial_runs = [r for r in runs if r.data.tags.get(TAG_KIND) == "trial"]
    assert sorted(r.data.tags[TAG_STAGE] for r in trial_runs) == ["baseline", "pretrain"]
    for r in trial_runs:
        assert r.info.status == "KILLED", r.data.tags
        assert r.data.tags[TAG_END_REASON] == "sweep stopped by SIGINT"
    (sweep,) = [r for r in runs if r.data.tags.get(TAG_KIND) == "sweep"]
    assert sweep.info.status == "KILLED"
    assert sweep.data.metrics["sweep/finetune/launched"] == 0


GROUP = textwrap.dedent(
    """
    import functools, sys
    import orch_helpers
    from segssl.cli import app
    from segssl.orchestrate import runner

    runner.run_sweep = functools.partial(runner.run_sweep, train_fn=orch_helpers.quick_train)
    app(["sweep", sys.argv[1], "--tracking-uri", sys.argv[2], "--storage", sys.argv[3],
         "--num-cpus", "2", "--no-live", "--skip-data-check"])
    """
)


@pytest.mark.slow
def test_sigterm_to_the_process_group_prints_the_summary_and_exits_143(tmp_path: Path) -> None:
    """``scancel`` or ``kill -TERM -PGID``: Ray's processes get the signal with the driver. The
    driver still ends the sweep as after a single SIGTERM (records KILLED with the reason,
    claim released, the interrupted summary printed, status 143), at once instead of blocking
    in Ray until its core worker gives up on the GCS (60 s, status 1, no summary)."""
    from mlflow import MlflowClient

    raw = {  # SWEEP's spec: one pretrain trial of 120 one-second epochs, then its finetune
        "name": "group",
        "seeds": [0],
        "max_concurrent": 1,
        "base": {"train": {"epochs": 120}},
        "stages": {
            "pretrain": {"config": {"stage": "pretrain", "method": {"name": "bim"}}},
            "finetune": {
                "from": "pretrain",
                "config": {"stage": "finetune", "method": {"name": "finetune"}},
            },
        },
    }
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(raw))
    script = tmp_path / "group.py"
    script.write_text(GROUP)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": f"{HERE}:{ROOT}", "RAY_AUTH_MODE": "disabled"}
    env["SEGSSL_TEST_EPOCH_S"] = "1"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "sweep.yaml"), uri, str(store)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as under a scheduler
    )
    try:
        trials = store / "trials"
        _wait_for(lambda: any(trials.glob("*/epochs_run.json")), 240, "a first epoch", proc)
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=45)
        took = time.monotonic() - t0
    finally:
        with contextlib.suppress(ProcessLookupError):  # whatever of Ray outlived the test
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, out
    assert took < 30, (took, out)  # Ray's own give-up takes 60 s
    assert (
        "pretrain: 1 planned, 0 already finished, 0 finished now, 0 failed, 0 blocked, "
        "1 stopped" in out
    ), out
    assert "sweep stopped by SIGTERM: 2 trial(s) unfinished; rerun the same command" in out, out
    assert "MLflow UI:" in out and "Traceback" not in out, out
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("group").experiment_id])
    (sweep,) = [r for r in runs if r.data.tags.get(TAG_KIND) == "sweep"]
    assert sweep.info.status == "KILLED"
    assert sweep.data.tags[TAG_END_REASON] == "sweep stopped by SIGTERM"
    (trial,) = [r for r in runs if r.data.tags.get(TAG_KIND) == "trial"]
    assert trial.info.status == "KILLED" and trial.data.tags[TAG_STAGE] == "pretrain"
    assert trial.data.tags[TAG_END_REASON] == "sweep stopped by SIGTERM"
    (wd,) = list(trials.iterdir())
    assert (wd / "checkpoints" / "last.pt").is_file()  # a rerun resumes from it
    assert not (store / "driver.lock").exists()


def test_the_cluster_watch_acts_only_after_a_signal_on_a_lost_cluster() -> None:
    """``watch_cluster``: nothing before the first signal or while the cluster answers; the
    end without Ray once it stopped answering twice in a row; nothing once the driver ended."""
    import threading

    from segssl.orchestrate.interrupt import watch_cluster

    it, done = Interrupt(), threading.Event()
    up, calls = [True], []
    watch = watch_cluster(it, lambda: up[0], lambda: calls.append("end"), done, period=0.01)
    time.sleep(0.1)
    up[0] = False
    time.sleep(0.1)
    assert calls == []  # no signal yet: a lost cluster is the runner's to report
    it.handle(signal.SIGTERM)
    watch.join(2)
    assert calls == ["end"] and not watch.is_alive()

    it2, done2, probes = Interrupt(), threading.Event(), []
    it2.handle(signal.SIGTERM)
    watch = watch_cluster(it2, lambda: probes.append(1) or True, calls.append, done2, period=0.01)
    time.sleep(0.1)
    done2.set()
    watch.join(2)
    assert calls == ["end"] and len(probes) > 2 and not watch.is_alive()


def _context(address: str) -> Any:
    from types import SimpleNamespace

    return lambda: SimpleNamespace(gcs_address=address)


def test_the_watch_probes_only_a_gcs_the_driver_reaches(monkeypatch: pytest.MonkeyPatch) -> None:
    """A GCS that refuses connections from the start (a remote cluster seen through a tunnel,
    an address private to the head node) or a Ray client connection is never watched: after a
    signal the watch would take that healthy cluster for one gone and end the sweep without it
    (its trials marked KILLED while they run on, the driver exiting at once)."""
    import socket

    import ray

    from segssl.orchestrate import runner

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        up = f"127.0.0.1:{server.getsockname()[1]}"
        with socket.socket() as probe:  # a port nothing listens on
            probe.bind(("127.0.0.1", 0))
            down = f"127.0.0.1:{probe.getsockname()[1]}"
        monkeypatch.setattr(ray, "get_runtime_context", _context(up))
        assert runner._gcs_address() == up  # a local or directly reached cluster is watched
        monkeypatch.setattr(ray, "get_runtime_context", _context(down))
        assert runner._gcs_address() is None
        monkeypatch.setattr(ray, "get_runtime_context", _context(up))
        monkeypatch.setattr(ray.util.client.ray, "is_connected", lambda: True)  # ray://
        assert runner._gcs_address() is None


def test_the_end_without_ray_names_why_trials_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep ended without Ray (its cluster went down with the signal) counts the wave's
    runs and hands the summary the reasons of the trials that failed before, as the graceful
    stop does (they were missing: '1 failed' with no reason); a FINISHED trial stays
    FINISHED, a RUNNING one is KILLED with the signal's reason."""
    import threading
    from types import SimpleNamespace

    from mlflow import MlflowClient
    from rich.console import Console

    from segssl.orchestrate import runner, tracking
    from segssl.record import TAG_KEY, TAG_PARENT_RUN

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = tracking.ensure_experiment(uri, "abandon", "h")
    client = MlflowClient(uri)
    sweep = client.create_run(exp).info.run_id
    runs = {}
    for key, status in (("a", "FINISHED"), ("b", "FAILED"), ("c", "RUNNING")):
        tags = {TAG_PARENT_RUN: sweep, TAG_STAGE: "pre", TAG_KEY: key}
        if status == "FAILED":
            tags[TAG_END_REASON] = "CUDA out of memory"
        runs[key] = client.create_run(exp, tags=tags, run_name=f"pre-{key}").info.run_id
        if status != "RUNNING":
            client.set_terminated(runs[key], status)
    outcome = runner.SweepOutcome("s", uri, exp, tmp_path, sweep_run_id=sweep)
    outcome.stages["pre"] = runner.StageOutcome(planned=3, skipped=0, launched=3)
    run = SimpleNamespace(
        outcome=outcome,
        progress=contextlib.nullcontext(),
        ctx=SimpleNamespace(sweep_run_id=sweep),
        wave={"pre": ["a", "b", "c"]},
    )
    it = Interrupt()
    it.handle(signal.SIGTERM)
    seen: list[Any] = []

    def summary(out: Any) -> int:
        seen.append(dict(out.failures))
        return 143

    class Exited(Exception):
        pass

    def _exit(code: int) -> None:
        raise Exited(code)

    monkeypatch.setattr(runner.os, "_exit", _exit)
    keeper = SimpleNamespace(also=None, stop=lambda: None)
    claim = SimpleNamespace(release=lambda: None)
    opts = {"console": Console(file=open(os.devnull, "w")), "on_abandon": summary}  # noqa: SIM115
    tr = SimpleNamespace(exp_id=exp)
    with pytest.raises(Exited, match="143"):
        runner._end_without_ray(run, tr, uri, it, threading.Lock(), claim, keeper, opts)  # type: ignore[arg-type]
    so = outcome.stages["pre"]
    assert (so.finished, so.failed, so.stopped) == (1, 1, 1)
    assert seen == [{"CUDA out of memory": {"retryable": True, "runs": ["pre-b"]}}]
    assert client.get_run(runs["a"]).info.status == "FINISHED"
    killed = client.get_run(runs["c"])
    assert killed.info.status == "KILLED"
    assert killed.data.tags[TAG_END_REASON] == "sweep stopped by SIGTERM"
    assert client.get_run(sweep).info.status == "KILLED"
