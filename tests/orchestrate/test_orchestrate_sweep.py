"""Runner through real Ray Tune and real MLflow (SQLite), with a fast stand-in for engine.train.

Idempotence (same sweep twice launches nothing; an added seed launches only the new trials),
retries from the last checkpoint, and a driver killed mid-sweep: the same command then finishes
what is missing, leaving exactly one FINISHED run per trial key and nothing RUNNING.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orch_helpers
import pytest
import yaml
from rich.console import Console

from segssl.orchestrate.plan import plan_sweep
from segssl.orchestrate.runner import run_sweep
from segssl.orchestrate.spec import parse_sweep

HERE = str(Path(__file__).resolve().parent)
QUIET = Console(stderr=True, quiet=True)


@pytest.fixture(scope="module")
def ray_local():
    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": HERE, "RAY_AUTH_MODE": "disabled"}},
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite tracking store for the module (a fresh store costs MLflow's migrations)."""
    from mlflow import MlflowClient

    u = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    MlflowClient(u).search_experiments()
    return u


def spec_raw(seeds: list[int], epochs: int = 2, name: str = "idem") -> dict[str, Any]:
    return {
        "name": name,
        "seeds": seeds,
        "max_concurrent": 2,
        "max_failures": 1,
        "base": {"train": {"epochs": epochs}, "optim": {"lr": 0.01}},
        "stages": {
            "pretrain": {"config": {"stage": "pretrain", "method": {"name": "bim"}}},
            "finetune": {
                "from": "pretrain",
                "config": {"stage": "finetune", "method": {"name": "finetune"}},
                "grid": {"data.labeled_scans": [1, 2]},
            },
        },
    }


def trial_runs(uri: str, name: str) -> list[Any]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    return client.search_runs([exp.experiment_id], "tags.`segssl.kind` = 'trial'")


def run(raw: dict[str, Any], tmp: Path, uri: str, **kw: Any) -> Any:
    kw.setdefault("console", QUIET)
    return run_sweep(
        parse_sweep(raw),
        tracking_uri=uri,
        train_fn=orch_helpers.quick_train,
        storage=tmp / "store",
        root=tmp,
        live=False,
        **kw,
    )


def test_idempotent_and_growing(ray_local: Any, tmp_path: Path, uri: str) -> None:
    raw = spec_raw([0])
    raw["stages"]["finetune"]["log_checkpoint"] = True  # log best.pt as an artifact
    out = run(raw, tmp_path, uri)
    assert (out.stages["pretrain"].launched, out.stages["finetune"].launched) == (1, 2)
    assert out.failed == 0
    runs = trial_runs(out.tracking_uri, "idem")
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)

    # the MLflow record of a fine-tuning run
    ft = next(r for r in runs if r.data.tags["segssl.stage"] == "finetune")
    pre = next(r for r in runs if r.data.tags["segssl.stage"] == "pretrain")
    tags, params, metrics = ft.data.tags, ft.data.params, ft.data.metrics
    assert tags["segssl.parent_key"] == pre.data.tags["segssl.trial_key"]
    assert tags["mlflow.parentRunId"] == out.sweep_run_id
    assert tags["segssl.sweep"] == "idem" and tags["segssl.data_fingerprint"] == "data-fp"
    assert tags["segssl.split_fingerprint"] == "split-fp" and tags["segssl.git_sha"]
    assert params["method.name"] == "finetune" and params["pretrain.method.name"] == "bim"
    assert params["train.init_from"].endswith(
        f"trials/{pre.data.tags['segssl.trial_key']}/checkpoints/last.pt"
    )
    n = int(params["data.labeled_scans"])
    assert metrics["test/dsc"] == pytest.approx(0.5 + 0.01 * n + 0.01)
    assert ft.info.run_name.startswith("bim > finetune | ") and ft.info.run_name.endswith("seed 0")
    from mlflow import MlflowClient

    client = MlflowClient(out.tracking_uri)
    history = client.get_metric_history(ft.info.run_id, "val/dsc")
    assert sorted(m.step for m in history) == [1, 2]
    arts = {a.path for a in client.list_artifacts(ft.info.run_id)}
    assert {"config.yaml", "result.json", "split.json", "checkpoints"} <= arts
    assert [a.path for a in client.list_artifacts(ft.info.run_id, "checkpoints")] == [
        "checkpoints/best.pt"
    ]
    assert "checkpoints" not in {a.path for a in client.list_artifacts(pre.info.run_id)}
    parent = client.get_run(out.sweep_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["sweep/finetune/finished"] == 2

    # same sweep again: nothing launched
    again = run(raw, tmp_path, uri)
    assert again.launched == 0 and again.sweep_run_id is None
    assert again.stages["finetune"].skipped == 2

    # one more seed: only its 1 + 2 trials run
    raw["seeds"] = [0, 1]
    grown = run(raw, tmp_path, uri)
    assert (grown.stages["pretrain"].launched, grown.stages["finetune"].launched) == (1, 2)
    runs = trial_runs(out.tracking_uri, "idem")
    keys = Counter(r.data.tags["segssl.trial_key"] for r in runs if r.info.status == "FINISHED")
    assert len(keys) == 6 and set(keys.values()) == {1}

    # the dry run sees everything finished
    dry = run(raw, tmp_path, uri, dry_run=True)
    assert all(s.skipped == s.planned for s in dry.stages.values())


def test_retry_resumes_from_last_checkpoint(ray_local: Any, tmp_path: Path, uri: str) -> None:
    raw = spec_raw([0], epochs=3, name="retry")
    raw["stages"] = {
        "only": {"config": {"method": {"name": "baseline"}, "train": {"device": "fail-once"}}}
    }
    log = io.StringIO()
    out = run(raw, tmp_path, uri, console=Console(file=log, width=200))
    assert out.failed == 0 and out.stages["only"].finished == 1
    # without a live display, one progress line per trial that ended (not per attempt)
    ended = [ln for ln in log.getvalue().splitlines() if ln.startswith("[retry/only] finished ")]
    assert len(ended) == 1 and "1/1 done, 0 failed, 0 running" in ended[0], log.getvalue()
    (r,) = trial_runs(out.tracking_uri, "retry")
    assert r.info.status == "FINISHED" and r.data.tags["segssl.attempts"] == "2"
    workdir = tmp_path / "store" / "trials" / r.data.tags["segssl.trial_key"]
    # epoch 1 ran once (first attempt), the retry continued at epoch 2 from last.pt
    assert json.loads((workdir / "epochs_run.json").read_text()) == [1, 2, 3]
    assert (workdir / "failed_once").is_file()


def test_failed_parent_blocks_children(ray_local: Any, tmp_path: Path, uri: str) -> None:
    raw = spec_raw([0], name="blocked")
    raw["max_failures"] = 0
    raw["stages"]["pretrain"]["config"]["train"] = {"device": "fail-once"}
    out = run(raw, tmp_path, uri)
    assert out.stages["pretrain"].failed == 1 and out.stages["finetune"].blocked == 2
    (r,) = trial_runs(out.tracking_uri, "blocked")
    assert r.info.status == "FAILED" and "injected failure" in r.data.tags["segssl.end_reason"]
    # rerun: the failed pre-training is retried (and now succeeds), children run
    again = run(raw, tmp_path, uri)
    assert again.failed == 0 and again.stages["finetune"].launched == 2
    runs = trial_runs(out.tracking_uri, "blocked")
    assert Counter(r.info.status for r in runs) == {"FINISHED": 3}


DRIVER = """
import os, sys
sys.path.insert(0, {here!r})
import ray, yaml
from rich.console import Console
import orch_helpers
from segssl.orchestrate.runner import run_sweep
from segssl.orchestrate.spec import parse_sweep
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
         runtime_env={{"env_vars": {{"PYTHONPATH": {here!r}, "SEGSSL_TEST_EPOCH_S": "0.7"}}}})
spec = parse_sweep(yaml.safe_load(open({spec!r})))
run_sweep(spec, train_fn=orch_helpers.quick_train, storage={store!r}, root={root!r},
          tracking_uri={uri!r}, console=Console(stderr=True, quiet=True), live=False)
"""


def test_driver_killed_mid_sweep_then_rerun(ray_local: Any, tmp_path: Path, uri: str) -> None:
    raw = spec_raw([0, 1], epochs=3, name="killed")
    spec_file = tmp_path / "sweep.yaml"
    spec_file.write_text(yaml.safe_dump(raw))
    store = tmp_path / "store"
    code = DRIVER.format(
        here=HERE, spec=str(spec_file), store=str(store), root=str(tmp_path), uri=uri
    )
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "SEGSSL_TEST_EPOCH_S": "0.7"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline:  # wait until the pre-trainings finished, children run
            if proc.poll() is not None:
                pytest.fail(f"driver exited early: {proc.stderr.read().decode()[-2000:]}")
            try:
                runs = trial_runs(uri, "killed")
            except Exception:  # noqa: BLE001 - database not created yet
                runs = []
            done = [r for r in runs if r.info.status == "FINISHED"]
            running = [r for r in runs if r.info.status == "RUNNING"]
            if len(done) >= 2 and running:
                break
            time.sleep(0.5)
        else:
            pytest.fail("the sweep did not reach 2 finished trials in time")
        os.kill(proc.pid, signal.SIGKILL)  # the driver dies; Ray fate-shares with it
        proc.wait(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of that session is left
    time.sleep(1.0)
    before = trial_runs(uri, "killed")
    assert any(r.info.status == "RUNNING" for r in before)
    finished_before = {
        r.data.tags["segssl.trial_key"] for r in before if r.info.status == "FINISHED"
    }

    out = run_sweep(
        parse_sweep(raw),
        source=str(spec_file),
        train_fn=orch_helpers.quick_train,
        storage=store,
        root=tmp_path,
        tracking_uri=uri,
        console=QUIET,
        live=False,
    )
    assert out.failed == 0 and out.stale_marked >= 2  # the sweep run and >= 1 trial run
    plan = plan_sweep(parse_sweep(raw), storage=store, root=tmp_path)
    keys = {t.key for t in plan.all_trials()}
    assert out.launched == len(keys) - len(finished_before)
    runs = trial_runs(uri, "killed")
    finished = Counter(r.data.tags["segssl.trial_key"] for r in runs if r.info.status == "FINISHED")
    assert set(finished) == keys and set(finished.values()) == {1}
    assert not [r for r in runs if r.info.status == "RUNNING"]
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("killed")
    sweeps = client.search_runs([exp.experiment_id], "tags.`segssl.kind` = 'sweep'")
    assert sorted(r.info.status for r in sweeps) == ["FINISHED", "KILLED"]
    # an interrupted trial continued from its last.pt: every epoch ran exactly once
    for key in keys:
        epochs = json.loads((store / "trials" / key / "epochs_run.json").read_text())
        assert epochs == [1, 2, 3]


def test_optuna_search_stage_seeded_and_idempotent(
    ray_local: Any, tmp_path: Path, uri: str
) -> None:
    raw = {
        "name": "search",
        "seeds": [3],
        "max_concurrent": 2,
        "base": {"train": {"epochs": 3}, "method": {"name": "baseline"}},
        "stages": {
            "tune": {
                "search": {
                    "space": {
                        "optim.lr": {"loguniform": [1e-4, 1e-1]},
                        "data.labeled_scans": {"choice": [1, 2]},
                    },
                    "num_samples": 4,
                    "seed": 7,
                    "scheduler": "asha",
                    "grace_period": 1,
                }
            }
        },
    }
    out = run(raw, tmp_path, uri)
    assert out.failed == 0
    runs = trial_runs(uri, "search")
    status = Counter(r.info.status for r in runs)
    # ASHA may stop poor samples early: their runs are KILLED, never left RUNNING
    assert len(runs) == 4 and set(status) <= {"FINISHED", "KILLED"} and status["FINISHED"] >= 1
    assert status["KILLED"] == out.stages["tune"].stopped
    lrs = sorted(float(r.data.params["optim.lr"]) for r in runs)
    assert len(set(lrs)) == 4 and all(1e-4 <= v <= 1e-1 for v in lrs)
    for r in runs:  # each sample's config reached the engine: quick_train's known Dice
        assert r.data.params["seed"] == "3"
        if r.info.status == "FINISHED":
            n, lr = int(r.data.params["data.labeled_scans"]), float(r.data.params["optim.lr"])
            expected = 0.5 + 0.01 * n + 0.003 + lr
            assert r.data.metrics["test/dsc"] == pytest.approx(expected, abs=1e-6)
        else:
            assert "early stop" in r.data.tags["segssl.end_reason"]
    # seeded TPE proposes the same samples again: FINISHED ones are not trained again
    run(raw, tmp_path, uri)
    again = trial_runs(uri, "search")
    assert len(again) == 4  # a re-proposed, earlier stopped sample reopens its own run
    assert sorted(float(r.data.params["optim.lr"]) for r in again) == lrs
    finished_before = {r.info.run_id: r.info.end_time for r in runs if r.info.status == "FINISHED"}
    for r in again:
        if r.info.run_id in finished_before:
            assert r.info.end_time == finished_before[r.info.run_id]


def test_resources_checked_against_the_cluster_before_launching(
    ray_local: Any, tmp_path: Path, uri: str
) -> None:
    from segssl.orchestrate.runner import ResourceError

    raw = spec_raw([0], name="toobig")
    raw["stages"]["finetune"]["resources"] = {"cpu": 1, "gpu": 0.5}  # the local node has no GPU
    with pytest.raises(ResourceError, match=r"stages.finetune asks for cpu=1, gpu=0.5"):
        run(raw, tmp_path, uri)
    assert trial_runs(uri, "toobig") == []  # nothing launched, not even the pre-training


def test_non_retryable_error_fails_once_with_its_reason(
    ray_local: Any, tmp_path: Path, uri: str
) -> None:
    raw = spec_raw([0], name="baddata")
    raw["max_failures"] = 2
    raw["stages"]["pretrain"]["config"]["train"] = {"device": "bad-data"}
    out = run(raw, tmp_path, uri)
    assert out.stages["pretrain"].failed == 1 and out.stages["finetune"].blocked == 2
    (r,) = trial_runs(uri, "baddata")
    assert r.info.status == "FAILED" and r.data.tags["segssl.attempts"] == "1"  # not retried
    assert r.data.tags["segssl.retryable"] == "false"
    assert "DataError: scan patient001 is unreadable" in r.data.tags["segssl.end_reason"]


def test_disk_full_fails_the_trial_with_path_and_errno(
    ray_local: Any, tmp_path: Path, uri: str
) -> None:
    raw = spec_raw([0], name="diskfull")
    raw["stages"]["pretrain"]["config"]["train"] = {"device": "disk-full"}
    out = run(raw, tmp_path, uri)
    assert out.stages["pretrain"].failed == 1 and out.stages["finetune"].blocked == 2
    (r,) = trial_runs(uri, "diskfull")
    reason = r.data.tags["segssl.end_reason"]
    assert r.info.status == "FAILED" and r.data.tags["segssl.retryable"] == "false"
    assert "last.pt: cannot write the checkpoint: [Errno 28] ENOSPC (disk full)" in reason
    (why,) = out.failures  # the console summary groups by this reason
    assert "Errno 28" in why and out.failures[why]["retryable"] is False
    ckpts = list((tmp_path / "store" / "trials").glob("*/checkpoints/*"))
    assert not [p for p in ckpts if ".tmp" in p.name]  # no temporary left behind


def test_independent_stages_share_one_tune_run_parents_first(
    ray_local: Any, tmp_path: Path, uri: str
) -> None:
    """Root stages run as one wave (one Tune run, no barrier between them), the stage with
    children first; a failure in one stage of the wave is counted for that stage alone; the
    children run after their parents' wave."""
    raw = {
        "name": "waves",
        "seeds": [0],
        "max_concurrent": 1,  # one trial at a time: the launch order is visible
        "max_failures": 0,
        "base": {"train": {"epochs": 1}, "optim": {"lr": 0.01}},
        "stages": {
            "short": {
                "config": {"stage": "finetune", "method": {"name": "baseline"}},
                "grid": {"data.labeled_scans": [1, 2]},
            },
            "broken": {
                "config": {
                    "stage": "finetune",
                    "method": {"name": "full"},
                    "train": {"device": "bad-data"},
                }
            },
            "pretrain": {"config": {"stage": "pretrain", "method": {"name": "bim"}}},
            "finetune": {
                "from": "pretrain",
                "config": {"stage": "finetune", "method": {"name": "finetune"}},
            },
        },
    }
    out = run(raw, tmp_path, uri)
    counts = {s: (o.launched, o.finished, o.failed) for s, o in out.stages.items()}
    assert counts == {
        "short": (2, 2, 0),
        "broken": (1, 0, 1),
        "pretrain": (1, 1, 0),
        "finetune": (1, 1, 0),
    }
    tune_runs = sorted(p.name.rsplit("-", 2)[0] for p in (tmp_path / "store" / "ray").iterdir())
    assert tune_runs == ["finetune", "pretrain+short+broken"]
    runs = sorted(trial_runs(out.tracking_uri, "waves"), key=lambda r: r.info.start_time)
    assert [r.data.tags["segssl.stage"] for r in runs] == [
        "pretrain",
        "short",
        "short",
        "broken",
        "finetune",
    ]
    assert [r.info.status for r in runs] == ["FINISHED"] * 3 + ["FAILED", "FINISHED"]
    # the rerun launches only the failed trial, on its own
    again = run(raw, tmp_path, uri)
    assert {s: o.launched for s, o in again.stages.items()} == {
        "short": 0,
        "broken": 1,
        "pretrain": 0,
        "finetune": 0,
    }


def test_a_wave_whose_stage_names_exceed_a_folder_name_still_runs(
    ray_local: Any, tmp_path: Path, uri: str
) -> None:
    """A wave's Tune run is a folder named by its stages: three root stages with long names
    joined by '+' made a name over 255 bytes ('File name too long'); the wave is named by its
    first stage, the count of the others and a hash instead."""
    stages = [f"{'lr' if i else 'baseline'}_{'x' * 90}_{i}" for i in range(3)]
    raw = {
        "name": "wide",
        "seeds": [0],
        "max_concurrent": 2,
        "max_failures": 0,
        "base": {"train": {"epochs": 1}, "optim": {"lr": 0.01}},
        "stages": {
            s: {"config": {"stage": "finetune", "method": {"name": "baseline"}}} for s in stages
        },
    }
    raw["stages"][stages[1]]["config"]["optim"] = {"lr": 0.02}
    raw["stages"][stages[2]]["config"]["optim"] = {"lr": 0.03}
    out = run(raw, tmp_path, uri)
    assert {s: (o.launched, o.finished, o.failed) for s, o in out.stages.items()} == {
        s: (1, 1, 0) for s in stages
    }
    (folder,) = (tmp_path / "store" / "ray").iterdir()
    assert folder.name.startswith(f"{stages[0]}+2-more-") and len(folder.name.encode()) <= 255


def test_the_exit_hook_is_for_ray_workers_only(ray_local: Any) -> None:
    """run_trial installs the quiet-exit hook (segssl.orchestrate.shutdown) in a Ray worker, the
    trial's process, and never in the driver or a test process calling it."""
    from segssl.orchestrate import trainable

    assert trainable._in_ray_worker() is False
    assert ray_local.get(ray_local.remote(trainable._in_ray_worker).remote()) is True
