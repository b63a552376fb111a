"""``segssl sweep``: bad input is refused before anything is written (no storage folder, log
file, claim, plan file, tracking store or phantoms), while a sweep that starts logs Ray's and
MLflow's lines to ``<storage>/logs/segssl-<time>.log`` from the first one."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import segssl.orchestrate.runner as runner_mod
from segssl.cli import app

runner = CliRunner()


def write_sweep(tmp_path: Path, **over: Any) -> Path:
    """A two-stage sweep that asks for one CPU and no GPU per trial (runnable here)."""
    raw: dict[str, Any] = {
        "name": "nowrite",
        "seeds": [0],
        "resources": {"cpu": 1, "gpu": 0},
        "base": {"train": {"epochs": 1}},
        "stages": {
            "pretrain": {"config": {"stage": "pretrain", "method": {"name": "bim"}}},
            "finetune": {
                "from": "pretrain",
                "config": {"stage": "finetune", "method": {"name": "finetune"}},
            },
        },
    }
    for key, value in over.items():
        raw[key] = value
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _device_cuda(tmp_path: Path) -> Path:
    return write_sweep(tmp_path, base={"train": {"epochs": 1, "device": "cuda"}})


def _smoke_device_cuda(tmp_path: Path) -> Path:
    """A smoke profile (phantoms written on first use) whose trials ask for a GPU they lack."""
    return write_sweep(
        tmp_path,
        base={"train": {"epochs": 1, "device": "cuda"}},
        profiles={"smoke": {"phantoms": {"scans": 2, "size": 32}}},
    )


CASES = {
    "unreachable tracking server": (
        write_sweep,
        ["--tracking-uri", "http://127.0.0.1:9", "--skip-data-check"],
        "cannot be reached",
    ),
    "train.device cuda with resources.gpu 0": (_device_cuda, [], "needs a GPU"),
    "phantoms of a refused smoke sweep": (
        _smoke_device_cuda,
        ["--profile", "smoke"],
        "needs a GPU",
    ),
    "more CPUs per trial than the machine has": (
        lambda p: write_sweep(p, resources={"cpu": 4096, "gpu": 0}),
        ["--skip-data-check"],
        "no node of the Ray cluster has that much",
    ),
    "data root missing": (write_sweep, [], "data/acdc"),
    "unknown profile": (write_sweep, ["--profile", "nope"], "nope"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    make, args, message = CASES[case]
    monkeypatch.chdir(tmp_path)  # phantoms and the default storage would go here
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sweep = make(tmp_path)
    store = tmp_path / "store"
    res = runner.invoke(app, ["sweep", str(sweep), "--storage", str(store), "--no-live", *args])
    text = " ".join(res.output.split())  # rich wraps long lines
    assert res.exit_code == 2, res.output
    assert message in text, text
    assert "Ray and MLflow logs" not in text, text
    assert not store.exists(), sorted(p.name for p in store.rglob("*"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.yaml"]  # no phantoms either


def test_a_name_used_by_another_spec_is_refused_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The experiment of the same name made by another spec (a shared tracking store) is read,
    not created, before the storage is claimed."""
    from segssl.orchestrate import tracking

    monkeypatch.chdir(tmp_path)
    db = tmp_path / "tracking" / "mlflow.db"
    db.parent.mkdir()
    uri = f"sqlite:///{db}"
    tracking.ensure_experiment(uri, "nowrite", "another-spec-hash")
    store = tmp_path / "store"
    sweep = write_sweep(tmp_path)
    args = ["sweep", str(sweep), "--storage", str(store), "--tracking-uri", uri, "--no-live"]
    res = runner.invoke(app, [*args, "--skip-data-check"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "by a different spec" in text and "--extend" in text, text
    assert not store.exists(), sorted(p.name for p in store.rglob("*"))


def test_a_sweep_that_starts_logs_from_its_first_library_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line Ray or MLflow logs during the checks (held: the file does not exist yet) and the
    lines of the run itself (MLflow creating its store) are all in the sweep's log file."""
    launched: list[Path] = []
    peek = runner_mod._peek

    def logging_peek(*a: Any, **kw: Any) -> Any:
        logging.getLogger("ray").warning("a line from the checks")
        return peek(*a, **kw)

    def fake_launch(plan: Any, *a: Any, **kw: Any) -> None:  # no Ray here: the writes are done
        launched.append(plan.storage)
        logging.getLogger("ray").info("a line from the run")

    monkeypatch.setattr(runner_mod, "_peek", logging_peek)
    monkeypatch.setattr(runner_mod, "_launch", fake_launch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = tmp_path / "store"
    sweep = write_sweep(tmp_path)
    res = runner.invoke(
        app, ["sweep", str(sweep), "--storage", str(store), "--no-live", "--skip-data-check"]
    )
    assert launched == [store], res.output
    (log,) = (store / "logs").glob("segssl-*.log")
    assert "Ray and MLflow logs:" in res.output and log.name in "".join(res.output.split())
    text = log.read_text()
    assert text.index("a line from the checks") < text.index("a line from the run"), text
    assert "a line from the checks" not in res.output  # held for the file, not printed
    assert (store / "plan.json").is_file() and (store / "mlflow.db").is_file()


def test_a_job_driver_with_ray_address_is_checked_on_its_cluster_not_this_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray sets ``RAY_ADDRESS`` for a job's driver and ``ray.init()`` then joins that cluster:
    a sweep there whose trials want a GPU this machine (the head) lacks is not refused by the
    local-machine check, and Ray is joined at that address (no ``num_cpus``, which Ray refuses
    when joining a cluster)."""
    launched: list[Any] = []

    def fake_launch(plan: Any, uri: str, tr: Any, outcome: Any, claim: Any, opts: Any, k: Any):
        launched.append(opts["address"])

    monkeypatch.setattr(runner_mod, "_launch", fake_launch)
    monkeypatch.setattr(
        runner_mod,
        "local_nodes",
        lambda spec, n: [{"Alive": True, "Resources": {"CPU": 2.0, "GPU": 0.0}}],
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = tmp_path / "store"
    sweep = write_sweep(
        tmp_path,
        resources={"cpu": 1, "gpu": 1},
        base={"train": {"epochs": 1, "device": "cuda"}},
    )
    args = ["sweep", str(sweep), "--storage", str(store), "--no-live", "--skip-data-check"]
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    local = runner.invoke(app, args)
    assert local.exit_code == 2 and "GPU" in local.output and not launched, local.output
    cluster = runner.invoke(app, [*args, "--address", "10.0.0.2:6379"])  # `segssl submit`'s
    assert launched == ["10.0.0.2:6379"], cluster.output
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    res = runner.invoke(app, args)
    assert launched == ["10.0.0.2:6379", "10.0.0.1:6379"], res.output


def test_a_second_driver_is_refused_before_its_data_check_and_any_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep a live driver runs right now: a second driver is told so at once, before it
    checks the data (minutes on a large dataset) or opens a log file in the storage."""
    from segssl.orchestrate.claim import claim_sweep

    checked: list[Any] = []
    monkeypatch.setattr(runner_mod, "_preflight_data", lambda *a: checked.append(a))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = tmp_path / "store"
    first = claim_sweep(store, "nowrite")  # the first driver (this process: alive)
    try:
        res = runner.invoke(app, ["sweep", str(write_sweep(tmp_path)), "--storage", str(store)])
    finally:
        first.release()
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "by another driver" in text, text
    assert checked == [] and "Ray and MLflow logs" not in text, text
    assert sorted(p.name for p in store.iterdir()) == [], sorted(store.iterdir())


def test_a_record_emitted_while_the_log_file_opens_is_not_lost(tmp_path: Path) -> None:
    """A thread that took the holding handler just before ``open`` swapped it for the file's
    (Ray's and MLflow's threads log at any time): its record still reaches the file, in order."""
    from segssl.orchestrate.logs import LIBRARY_LOGGERS, hold_library_logs

    saved = {
        n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate)
        for n in LIBRARY_LOGGERS
    }
    try:
        logs = hold_library_logs()
        held = logs._held  # what the late thread holds
        logging.getLogger("ray").warning("held line")
        path = logs.open(tmp_path)
        held.handle(logging.LogRecord("ray", logging.WARNING, __file__, 1, "late line", None, None))
        logging.getLogger("ray").warning("file line")
        text = path.read_text()
        assert text.index("held line") < text.index("late line") < text.index("file line"), text
    finally:
        logging.captureWarnings(False)
        for n, (handlers, propagate) in saved.items():
            logging.getLogger(n).handlers[:] = handlers
            logging.getLogger(n).propagate = propagate
