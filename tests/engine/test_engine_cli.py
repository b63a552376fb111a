"""``segssl train`` through typer's CliRunner on a synthetic ACDC archive."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from segssl.cli import app

runner = CliRunner()


def _write(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def test_train_writes_result(tiny_yaml, tmp_path: Path) -> None:
    cfg = _write(tmp_path / "run.yaml", tiny_yaml("baseline", "finetune"))
    res = runner.invoke(
        app,
        [
            "train",
            str(cfg),
            "-o",
            "train.epochs=1",
            "-o",
            "data.target=rv",
            "--workdir",
            str(tmp_path / "w"),
        ],
    )
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "w/result.json").read_text())
    m = result["metrics"]
    assert {"test/dsc/RV", "test/hd95/RV", "test/asd/RV", "test/dsc", "best_epoch"} <= m.keys()
    assert len(result["history"]) == 1  # the override was applied
    assert (tmp_path / "w/checkpoints/best.pt").is_file()
    assert (tmp_path / "w/split.json").is_file()


def test_config_errors_exit_nonzero_with_key(
    tiny_yaml, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the default workdir (runs/...) would land in the checkout
    cfg = _write(tmp_path / "run.yaml", tiny_yaml("bim", "pretrain"))
    wd = ["--workdir", str(tmp_path / "w")]
    res = runner.invoke(app, ["train", str(cfg), "-o", "method.alpha=2", *wd])
    assert res.exit_code == 2
    assert "method.alpha" in res.output and "less than or equal to 1" in res.output
    res = runner.invoke(app, ["train", str(cfg), "-o", "method.name=bimm", *wd])
    assert res.exit_code == 2 and "did you mean 'bim'" in res.output
    res = runner.invoke(app, ["train", str(cfg), "-o", "train.epocs=3", *wd])
    assert res.exit_code == 2 and "train.epocs: unknown key" in res.output
    res = runner.invoke(app, ["train", str(cfg), "-o", "stage=finetune", *wd])
    assert res.exit_code == 2 and "expected stage 'pretrain'" in res.output
    res = runner.invoke(app, ["train", str(tmp_path / "nope.yaml"), *wd])
    assert res.exit_code == 2 and "no such file" in res.output
    assert not (tmp_path / "w").exists()  # config errors are found before the workdir is made
    # a missing data root is found by the data layer, after the workdir got its config.yaml
    none = f"data.root={tmp_path / 'none'}"
    res = runner.invoke(app, ["train", str(cfg), "-o", none, "--workdir", str(tmp_path / "d")])
    assert res.exit_code == 2 and "data.root=" in res.output and "no such directory" in res.output


def test_tracking_uri_logs_the_record(tiny_yaml, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    cfg = _write(tmp_path / "run.yaml", tiny_yaml("baseline", "finetune"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    res = runner.invoke(
        app,
        [
            "train",
            str(cfg),
            "--workdir",
            str(tmp_path / "w"),
            "--tracking-uri",
            uri,
            "--experiment",
            "t",
        ],
    )
    assert res.exit_code == 0, res.output
    client = MlflowClient(tracking_uri=uri)
    run = client.search_runs([client.get_experiment_by_name("t").experiment_id])[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["segssl.stage"] == "finetune"
    # the same key a sweep would give this config, so single runs and sweeps share one record
    from segssl.config import load_run_config
    from segssl.orchestrate.plan import trial_key

    assert run.data.tags["segssl.trial_key"] == trial_key(load_run_config(cfg), None)
    assert run.data.tags["segssl.split_fingerprint"]
    assert run.data.tags["segssl.data_fingerprint"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "result.json", "split.json"} <= artifacts
    assert run.data.params["method.name"] == "baseline"
    assert run.data.params["data.labeled_scans"] == "1"
    history = client.get_metric_history(run.info.run_id, "val/dsc")
    assert [h.step for h in history] == [1, 2]
    assert "test/dsc/LV" in run.data.metrics and "cost/wall_s" in run.data.metrics


def test_freeze_typo_fails_before_any_work(tiny_yaml, tmp_path: Path) -> None:
    cfg = _write(tmp_path / "run.yaml", tiny_yaml("bim", "pretrain"))
    work = tmp_path / "w"
    res = runner.invoke(
        app, ["train", str(cfg), "-o", "model.freeze=[Conv9]", "--workdir", str(work)]
    )
    assert res.exit_code == 2
    assert "model.freeze: 'Conv9' matches no parameter" in res.output and "Conv_1x1" in res.output
    assert not work.exists()


def test_a_train_killed_after_saving_an_epoch_logs_it_once_on_resume(
    tiny_yaml, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``last.pt`` of epoch 1 saved, the process dies before MLflow gets the epoch: the resumed
    ``segssl train`` (same workdir, same run) logs it from the checkpoint, every step once;
    ``--no-resume`` trains again into a new run."""
    from mlflow import MlflowClient

    from segssl.engine import loop

    class Died(RuntimeError):
        pass

    real_save = loop.save_checkpoint
    died_at = {"epoch": 1}

    def save(path: Path, obj: dict) -> None:
        real_save(path, obj)
        if Path(path).name == "last.pt" and obj.get("epoch") == died_at["epoch"]:
            raise Died

    cfg = _write(tmp_path / "run.yaml", tiny_yaml("baseline", "finetune"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["train", str(cfg), "--workdir", str(tmp_path / "w"), "--tracking-uri", uri]
    with monkeypatch.context() as m:
        m.setattr(loop, "save_checkpoint", save)
        assert isinstance(runner.invoke(app, args).exception, Died)
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("segssl-train").experiment_id
    (run,) = client.search_runs([exp])

    def logged(run_id: str, key: str) -> list[tuple[int, float]]:
        return sorted((h.step, h.value) for h in client.get_metric_history(run_id, key))

    history = json.loads((tmp_path / "w/result.json").read_text())["history"]
    for key in ("val/dsc", "train/loss"):
        assert logged(run.info.run_id, key) == [(h["epoch"], h[key]) for h in history], key
    # a restart dies after logging epoch 1 and saving epoch 2; a second restart is a new run
    died_at["epoch"] = 2
    with monkeypatch.context() as m:
        m.setattr(loop, "save_checkpoint", save)
        assert isinstance(runner.invoke(app, [*args, "--no-resume"]).exception, Died)
    res = runner.invoke(app, [*args, "--no-resume"])
    assert res.exit_code == 0, res.output
    runs = client.search_runs([exp], order_by=["attributes.start_time ASC"])
    assert len(runs) == 3 and [r.info.status for r in runs] == ["FINISHED", "FAILED", "FINISHED"]
    history = json.loads((tmp_path / "w/result.json").read_text())["history"]
    assert logged(runs[2].info.run_id, "train/loss") == [
        (h["epoch"], h["train/loss"]) for h in history
    ]
