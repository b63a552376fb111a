"""``segssl sweep --dry-run`` / bad input exits, and ``segssl submit`` argument handling and the
entrypoint it builds (a real remote cluster cannot be reached where this is tested)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from orch_helpers import FakeJobClient
from typer.testing import CliRunner

from segssl.cli import app
from segssl.config import ConfigError
from segssl.orchestrate.spec import SpecError, load_sweep, parse_sweep
from segssl.orchestrate.submit import (
    SubmitError,
    build_entrypoint,
    check_submit_args,
    submit_sweep,
)

runner = CliRunner()


def sweep_file(tmp_path: Path, **extra: Any) -> Path:
    raw = {
        "name": "cli",
        "seeds": [0, 1, 2],
        "resources": {"cpu": 2, "gpu": 0.25},
        "base": {"train": {"epochs": 1}},
        "stages": {
            "pretrain": {
                "config": {"stage": "pretrain", "method": {"name": "bim"}},
                "grid": {"method.alpha": [0.0, 0.5]},
            },
            "finetune": {
                "from": "pretrain",
                "config": {"stage": "finetune", "method": {"name": "finetune"}},
                "grid": {"data.labeled_scans": [1, 2, 4], "data.target": ["lv", "rv", "myo"]},
            },
        },
        **extra,
    }
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def one_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The dry run checks resources against the local machine: give it one GPU."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_dry_run_prints_the_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one_gpu(monkeypatch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    res = runner.invoke(
        app, ["sweep", str(sweep_file(tmp_path)), "--dry-run", "--skip-data-check", "--no-cost"]
    )
    assert res.exit_code == 0, res.output
    out = res.output
    assert "pretrain" in out and "finetune" in out
    lines = {ln.split("│")[1].strip(): ln for ln in out.splitlines() if ln.count("│") > 4}
    cells = [c.strip() for c in lines["pretrain"].split("│")[1:-1]]
    assert cells == ["pretrain", "-", "6", "0", "6", "2", "0.25"]
    cells = [c.strip() for c in lines["finetune"].split("│")[1:-1]]
    assert cells == ["finetune", "pretrain", "54", "0", "54", "2", "0.25"]
    assert not (tmp_path / "segssl-runs" / "cli" / "mlflow.db").exists()  # a dry run writes nothing


def test_sweep_bad_input_exits_2(tmp_path: Path) -> None:
    res = runner.invoke(app, ["sweep", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 2 and "no such sweep file" in res.output
    bad = sweep_file(tmp_path, colour="red")
    res = runner.invoke(app, ["sweep", str(bad), "--dry-run"])
    assert res.exit_code == 2 and "colour: unknown key" in res.output and str(bad) in res.output


def test_sweep_unreachable_tracking_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the sweep's storage (./segssl-runs/cli) would go here
    res = runner.invoke(
        app, ["sweep", str(sweep_file(tmp_path)), "--tracking-uri", "http://127.0.0.1:9"]
    )
    assert res.exit_code == 2 and "cannot be reached" in res.output
    assert not (tmp_path / "segssl-runs").exists()  # refused before the log file is opened


def spec() -> Any:
    return parse_sweep(
        {
            "name": "remote",
            "storage": "/shared/segssl",
            "stages": {"a": {"config": {"method": {"name": "baseline"}}}},
        }
    )


@pytest.mark.parametrize(
    ("address", "uri", "storage", "match"),
    [
        ("HEAD:8265", "http://mlflow:5000", None, "expected the Ray job server as http://HEAD"),
        ("http://head", "http://mlflow:5000", None, "expected the Ray job server"),
        ("http://head:8265", None, None, "needs --tracking-uri"),
        ("http://head:8265", "sqlite:///rel.db", None, "must be an absolute path on storage"),
        ("http://head:8265", "file:///x", None, "expected http"),
        ("http://head:8265", "http://mlflow:5000", "runs/rel", "absolute storage path"),
    ],
)
def test_submit_bad_arguments(
    address: str, uri: str | None, storage: str | None, match: str
) -> None:
    with pytest.raises(SubmitError, match=match):
        check_submit_args(spec(), address, uri, storage)


def test_submit_builds_the_entrypoint(tmp_path: Path) -> None:
    cmd = build_entrypoint("my sweep.yaml", "http://mlflow:5000", "/shared/x", extend=True)
    assert shlex.split(cmd) == [
        "segssl",
        "sweep",
        "my sweep.yaml",
        "--address",
        "auto",
        "--tracking-uri",
        "http://mlflow:5000",
        "--storage",
        "/shared/x",
        "--no-live",
        "--extend",
    ]

    src = tmp_path / "s.yaml"
    src.write_text("name: remote\n")
    client = FakeJobClient()
    job = submit_sweep(src, spec(), "http://head:8265", "http://mlflow:5000", client=client)
    assert job.job_id.startswith("segssl-remote-") and not job.attached
    kw = client.submitted[0]
    assert kw["entrypoint"].startswith("segssl sweep s.yaml --address auto")
    assert "--storage /shared/segssl" in kw["entrypoint"]
    assert client.files[job.job_id] == {"s.yaml": "name: remote\n"}
    assert kw["metadata"]["segssl.sweep"] == "remote"


def test_submit_cli_refuses_before_contacting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    res = runner.invoke(
        app, ["submit", str(sweep_file(tmp_path)), "--address", "http://127.0.0.1:9"]
    )
    assert res.exit_code == 2 and "needs --tracking-uri" in res.output


def test_submitted_job_sees_the_sweep_as_a_local_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's working dir holds the sweep and its papers file at the same relative place,
    and relative data paths resolve against the submitter's directory: on the cluster the
    shipped Table 3 sweep passes its table preflight and plans the keys a local run plans."""
    from segssl.orchestrate.plan import plan_sweep
    from segssl.orchestrate.runner import check_plan_tables

    src = Path(__file__).resolve().parents[2] / "experiments" / "sweeps" / "bim_table3_alpha.yaml"
    here = tmp_path / "project"
    here.mkdir()
    monkeypatch.chdir(here)

    client = FakeJobClient()
    spec = load_sweep(src)
    job = submit_sweep(
        src, spec, "http://head:8265", "http://mlflow:5000", "/shared/s", client=client
    )
    args = shlex.split(client.submitted[0]["entrypoint"])
    assert args[args.index("--root") + 1] == str(here)
    wd = tmp_path / "job"  # the working dir as the cluster unpacks it
    for rel, text in client.files[job.job_id].items():
        (wd / rel).parent.mkdir(parents=True, exist_ok=True)
        (wd / rel).write_text(text)
    local = plan_sweep(spec, source=str(src), storage="/shared/s", root=here)

    monkeypatch.chdir(wd)  # what the job's driver does on the head node
    remote_spec = load_sweep(args[2])
    remote = plan_sweep(remote_spec, source=args[2], storage="/shared/s", root=args[-1])
    check_plan_tables(remote)  # finds ../papers/bim.yaml beside the uploaded sweep
    assert remote.trials["pretrain"][0].config.data.root == str(here / "data" / "acdc")
    assert [t.key for t in remote.all_trials()] == [t.key for t in local.all_trials()]
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    one_gpu(monkeypatch)
    store = str(tmp_path / "store")
    res = runner.invoke(
        app,
        [
            "sweep",
            args[2],
            "--dry-run",
            "--skip-data-check",
            "--no-cost",
            "--storage",
            store,
            "--root",
            args[-1],
        ],
    )
    assert res.exit_code == 0, res.output  # the job's command line: `segssl sweep --root` exists
    assert "135" in res.output


def test_submit_refuses_a_bad_table_before_submitting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    table = {"name": "t", "stage": "finetune", "metric": "test/dsc", "rows": ["method.nope"]}
    src = sweep_file(tmp_path, tables=[table])

    client = FakeJobClient()
    with pytest.raises(ConfigError, match="method.nope"):
        submit_sweep(src, load_sweep(src), "http://h:8265", "http://m:5000", "/shared/s", client)
    assert client.submitted == []


@pytest.mark.parametrize("finished_any", [True, False])
def test_demo_with_failed_trials_exits_1_without_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, finished_any: bool
) -> None:
    """Trials that fail in the demo (all of them: no run to tabulate) are reported with exit 1
    and the table of the finished ones, not a success or a ReportError traceback."""
    import segssl.orchestrate.runner as runner_mod
    import segssl.report as report_mod
    from segssl.report import ReportError

    wd = tmp_path / "demo"
    (wd / "data" / "acdc" / "training").mkdir(parents=True)  # the synthetic data exists

    def fake_sweep(spec: Any, **kw: Any) -> Any:
        out = runner_mod.SweepOutcome("demo", "sqlite:///x.db", "1", kw["storage"])
        out.stages["pretrain"] = runner_mod.StageOutcome(planned=2, skipped=0, failed=2)
        out.stages["finetune"] = runner_mod.StageOutcome(planned=4, skipped=0, blocked=4)
        out.stages["baseline"] = runner_mod.StageOutcome(
            planned=4, skipped=0, finished=4 * finished_any, failed=4 * (not finished_any)
        )
        return out

    def fake_tables(*a: Any, **kw: Any) -> str:
        if not finished_any:
            raise ReportError("table 'demo': experiment 'demo' has no FINISHED child runs")
        return "| Baseline | 50.00 ± 1.00 (2) |\n"

    monkeypatch.setattr(runner_mod, "run_sweep", fake_sweep)
    monkeypatch.setattr(report_mod, "render_tables", fake_tables)
    res = runner.invoke(app, ["demo", "--workdir", str(wd), "--no-live"])
    assert res.exit_code == 1, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert f"{6 if finished_any else 10} demo trial(s) did not finish" in res.output
    assert "mlflow ui --backend-store-uri sqlite:///x.db" in res.output
    assert ("50.00 ± 1.00 (2)" in res.output) == finished_any


@pytest.mark.parametrize(
    ("device", "resources", "stage_resources", "match"),
    [
        ("cuda", {"gpu": 0}, None, r"train.device='cuda' needs a GPU, but resources.gpu is 0"),
        ("cuda:0", None, {"cpu": 1}, r"stages.pretrain.resources.gpu is 0"),
        ("cuda:1", {"gpu": 1}, None, r"with resources.gpu=1 a trial sees 1 GPU\(s\)"),
        ("cpu", {"gpu": 0.25}, None, r"train.device='cpu' with resources.gpu=0.25"),
    ],
)
def test_dry_run_refuses_a_device_the_resources_cannot_give(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    device: str,
    resources: dict | None,
    stage_resources: dict | None,
    match: str,
) -> None:
    """A trial's ``train.device`` against the GPUs Ray gives it: refused at plan time (a dry
    run included, Ray never started), naming the file, both keys and what was expected."""
    one_gpu(monkeypatch)  # the machine has a GPU: only the trial's resources are at fault
    monkeypatch.chdir(tmp_path)
    raw = yaml.safe_load(sweep_file(tmp_path).read_text())
    raw["base"]["train"]["device"] = device
    if resources is not None:
        raw["resources"] = resources
    if stage_resources is not None:
        del raw["resources"]
        raw["stages"]["pretrain"]["resources"] = stage_resources
    path = tmp_path / "device.yaml"
    path.write_text(yaml.safe_dump(raw))
    for extra in (["--dry-run"], []):
        res = runner.invoke(
            app, ["sweep", str(path), *extra, "--skip-data-check", "--no-cost", "--no-live"]
        )
        assert res.exit_code == 2, res.output
        text = " ".join(res.output.split())  # rich wraps long lines
        assert str(path) in text and "stages.pretrain trial" in text, text
        assert re.search(match, text) and "expected" in text, text
    # refused before the claim, the plan file, the tracking store, the log file and Ray
    assert not (tmp_path / "segssl-runs").exists()


@pytest.mark.parametrize(
    ("device", "gpu"), [("auto", 0), ("auto", 0.5), ("cuda", 0.25), ("cuda:1", 2), ("cpu", 0)]
)
def test_devices_the_resources_can_give_are_planned(device: str, gpu: float) -> None:
    from segssl.orchestrate.plan import plan_sweep

    raw = {
        "name": "dev",
        "resources": {"gpu": gpu},
        "base": {"train": {"device": device}},
        "stages": {"a": {"config": {"method": {"name": "baseline"}}}},
    }
    plan = plan_sweep(parse_sweep(raw))
    assert [t.config.train.device for t in plan.trials["a"]] == [device]


def test_a_search_over_devices_is_checked_for_every_choice(tmp_path: Path) -> None:
    from segssl.orchestrate.plan import plan_sweep

    raw = {
        "name": "dev",
        "resources": {"gpu": 0},
        "stages": {
            "a": {
                "config": {"method": {"name": "baseline"}},
                "search": {"space": {"train.device": {"choice": ["cpu", "cuda"]}}},
            }
        },
    }
    with pytest.raises(SpecError, match=r"stages.a: train.device='cuda' needs a GPU"):
        plan_sweep(parse_sweep(raw), source="s.yaml")


@pytest.mark.parametrize("key", ["amp", "channels_last"])
@pytest.mark.parametrize("search", [None, "other", "self"])
def test_amp_or_channels_last_on_without_a_gpu_share_is_refused_at_plan_time(
    key: str, search: str | None
) -> None:
    """``train.amp: on`` (the only way to AMP since ``auto`` is fp32) and ``channels_last: on``
    need CUDA: with ``gpu: 0`` every trial would fail at its start, so planning refuses them
    (in a search stage's config or any choice of its space) naming the file, the stage, both
    keys and what was expected; a GPU share plans."""
    from segssl.orchestrate.plan import plan_sweep

    stage: dict = {"config": {"method": {"name": "baseline"}, "train": {key: "on"}}}
    if search == "other":
        stage["search"] = {"space": {"optim.lr": {"choice": [0.1, 0.01]}}}
    elif search == "self":  # the probe takes the first choice: 'on' is checked all the same
        del stage["config"]["train"]
        stage["search"] = {"space": {f"train.{key}": {"choice": ["off", "on"]}}}
    raw = {"name": "dev", "resources": {"gpu": 0}, "stages": {"a": stage}}
    want = rf"s.yaml: stages.a.*train.{key}='on' needs a CUDA device, but resources.gpu is 0"
    with pytest.raises(SpecError, match=want + r".*expected resources.gpu > 0"):
        plan_sweep(parse_sweep(raw), source="s.yaml")
    plan = plan_sweep(parse_sweep({**raw, "resources": {"gpu": 0.5}}), source="s.yaml")
    assert plan.searches if search else plan.trials["a"]
