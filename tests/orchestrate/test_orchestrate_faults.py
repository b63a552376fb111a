"""The sweep driver under races, stale claims, bad data, bad YAML, full disks and leaked
credentials (issue 8). None of these tests starts Ray: every refusal happens before it."""

from __future__ import annotations

import errno
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from segssl.cli import app
from segssl.config import ConfigError, load_run_config, read_yaml
from segssl.orchestrate import runner as runner_mod
from segssl.orchestrate import tracking
from segssl.orchestrate.claim import ClaimError, claim_sweep, process_start
from segssl.orchestrate.datacheck import DataCheckError
from segssl.orchestrate.spec import SpecError, load_sweep, parse_sweep
from segssl.record import TAG_END_REASON

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
QUIET = Console(stderr=True, quiet=True)
cli = CliRunner()


def base_raw(data_root: str = "data/acdc", **extra: Any) -> dict[str, Any]:
    return {
        "name": "faults",
        "seeds": [0],
        "base": {
            "train": {"epochs": 1},
            "data": {"dataset": "acdc", "root": data_root, "split": {"sizes": [4, 1, 1]}},
        },
        "stages": {
            "pretrain": {"config": {"stage": "pretrain", "method": {"name": "bim"}}},
            "finetune": {
                "from": "pretrain",
                "config": {"stage": "finetune", "method": {"name": "finetune"}},
            },
        },
        **extra,
    }


def write(tmp: Path, raw: dict[str, Any], name: str = "sweep.yaml") -> Path:
    p = tmp / name
    p.write_text(yaml.safe_dump(raw))
    return p


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fails the test if the runner starts (or joins) Ray."""
    started: list[str] = []

    def forbidden(*a: Any, **k: Any) -> bool:
        started.append("ray.init")
        raise AssertionError("Ray was started")

    monkeypatch.setattr(runner_mod, "_ray_init", forbidden)
    return started


@pytest.fixture
def acdc(acdc_root: Path) -> Path:
    """The session's small synthetic ACDC archive (tests/conftest.py)."""
    return acdc_root


# ------------------------------------------------------------------------------ 1, 4: the claim
DRIVER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from rich.console import Console
    from segssl.orchestrate import runner
    from segssl.orchestrate.claim import ClaimError
    from segssl.orchestrate.spec import parse_sweep

    tmp, uri, go = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])

    def hold(*a, **k):  # stands for Ray: the winner keeps the claim for a while
        (tmp / f"ray-{__import__('os').getpid()}").write_text("x")
        time.sleep(3)
        raise SystemExit(0)

    runner._ray_init = hold
    stages = {"a": {"config": {"method": {"name": "baseline"}}}}
    spec = parse_sweep({"name": "race", "stages": stages})
    while time.time() < go:
        time.sleep(0.001)
    try:
        runner.run_sweep(spec, tracking_uri=uri, storage=tmp / "store", root=tmp,
                         console=Console(quiet=True), live=False, check_data=False)
    except ClaimError as exc:
        print("REFUSED", exc)
        raise SystemExit(3)
    """
)


@pytest.mark.parametrize("fresh", [True, False], ids=["fresh-store", "existing-store"])
def test_two_drivers_started_together_one_is_refused(tmp_path: Path, fresh: bool) -> None:
    uri = f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}"
    if not fresh:
        tracking._client(uri).search_experiments()
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    go = time.time() + 4.0  # both wait for the same instant: started within ~1 ms
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path), uri, str(go)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 3], outs
    winner = [p for p in procs if p.returncode == 0][0]
    refused = [o for p, o in zip(procs, outs, strict=True) if p.returncode == 3][0]
    assert f"pid {winner.pid}" in refused[0] and socket.gethostname() in refused[0]
    assert "Traceback" not in refused[1]  # no alembic race on the fresh store
    assert [f.name for f in tmp_path.glob("ray-*")] == [f"ray-{winner.pid}"]
    assert not (tmp_path / "store" / "driver.lock").exists()  # released by the winner


def _fake_claim(storage: Path, **owner: Any) -> None:
    storage.mkdir(parents=True, exist_ok=True)
    base = {"host": socket.gethostname(), "pid": os.getpid(), "token": "old"}
    base.update(started=time.time(), heartbeat=time.time(), start=process_start(os.getpid()))
    base.update(owner)
    (storage / "driver.lock").write_text(json.dumps(base))


def test_stale_claim_with_a_reused_pid_or_an_old_heartbeat_is_taken_over(tmp_path: Path) -> None:
    # a live process holds the pid, but it is not the process that made the claim
    _fake_claim(tmp_path / "a", start="boot:1")
    notes: list[str] = []
    claim_sweep(tmp_path / "a", "s", on_break=notes.append).release()
    assert "stale" in notes[0]
    _fake_claim(tmp_path / "b", host="elsewhere", heartbeat=time.time() - 3600)
    claim_sweep(tmp_path / "b", "s").release()
    # a live-looking claim (this very process) is refused, unless taken over
    _fake_claim(tmp_path / "c", host="elsewhere")
    with pytest.raises(ClaimError, match="host elsewhere.*--takeover"):
        claim_sweep(tmp_path / "c", "s")
    claim_sweep(tmp_path / "c", "s", takeover=True).release()


def test_mlflow_driver_liveness_follows_the_heartbeat_and_the_start_time(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from segssl.record import TAG_HEARTBEAT, TAG_HOST, TAG_KIND, TAG_PID, TAG_START

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = tracking.ensure_experiment(uri, "live", "h")
    client = MlflowClient(uri)

    def sweep_run(beat: float, start: str | None) -> str:
        tags = {TAG_KIND: "sweep", TAG_HOST: socket.gethostname(), TAG_PID: str(os.getpid())}
        tags[TAG_HEARTBEAT] = f"{beat:.0f}"
        if start:
            tags[TAG_START] = start
        return client.create_run(exp, tags=tags).info.run_id

    alive = sweep_run(time.time(), process_start(os.getpid()))
    old_beat = sweep_run(time.time() - 3600, process_start(os.getpid()))
    reused = sweep_run(time.time(), "boot:1")
    assert tracking.mark_stale_runs(uri, exp) == 2
    assert client.get_run(alive).info.status == "RUNNING"
    assert client.get_run(old_beat).info.status == "KILLED"
    assert client.get_run(reused).info.status == "KILLED"
    assert tracking.mark_stale_runs(uri, exp, everyone=True) == 1  # --takeover
    assert client.get_run(alive).data.tags[TAG_END_REASON] == "taken over (--takeover)"


# ------------------------------------------------------------------------ 3: data before Ray
def _truncate_one(root: Path) -> Path:
    img = sorted(root.glob("training/patient003/*frame01.nii.gz"))[0]
    img.write_bytes(img.read_bytes()[:200])
    return img


@pytest.mark.parametrize(
    "case", ["missing-root", "unknown-dataset", "truncated-file", "more-partitions-than-slices"]
)
def test_bad_data_refused_before_ray_and_by_dry_run(
    case: str, tmp_path: Path, acdc: Path, no_ray: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    root = tmp_path / "acdc"
    shutil.copytree(acdc, root)
    raw = base_raw(str(root))
    match = {
        "missing-root": "no such directory",
        "unknown-dataset": "unknown dataset 'acdcc'",
        "truncated-file": "patient003",
        # counted from the headers (no cache yet), naming the short scans
        "more-partitions-than-slices": "data.partitions=40: scans ['patient",
    }[case]
    if case == "missing-root":
        raw["base"]["data"]["root"] = str(tmp_path / "nowhere")
    elif case == "unknown-dataset":
        raw["base"]["data"]["dataset"] = "acdcc"
    elif case == "more-partitions-than-slices":
        raw["base"]["data"].update(partition_sampler=True, partitions=40, unlabeled_batch_size=40)
    else:
        _truncate_one(root)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(DataCheckError, match=re.escape(match)):
        runner_mod.run_sweep(
            parse_sweep(raw), tracking_uri=uri, storage=tmp_path / "s", console=QUIET, live=False
        )
    assert no_ray == []
    assert not Path(uri[len("sqlite:///") :]).exists()  # no experiment created either
    monkeypatch.chdir(tmp_path)
    res = cli.invoke(app, ["sweep", str(write(tmp_path, raw)), "--dry-run"])
    assert res.exit_code == 2 and match in res.output, res.output
    assert "pretrain" in res.output  # the plan was printed first


def test_good_data_passes_and_the_plan_is_written(
    tmp_path: Path, acdc: Path, no_ray: list[str]
) -> None:
    raw = base_raw(str(acdc))
    spec = parse_sweep(raw)
    out = runner_mod.run_sweep(spec, storage=tmp_path / "s", console=QUIET, dry_run=True)
    assert out.dry_run and not (tmp_path / "s" / "plan.json").exists()
    with pytest.raises(AssertionError, match="Ray was started"):
        runner_mod.run_sweep(spec, storage=tmp_path / "s", console=QUIET, live=False)
    plan = json.loads((tmp_path / "s" / "plan.json").read_text())
    assert [t["stage"] for t in plan["trials"]] == ["pretrain", "finetune"]
    child = plan["trials"][1]
    assert child["parent_key"] == plan["trials"][0]["key"]
    assert child["config"]["train"]["init_from"].endswith(
        f"{child['parent_key']}/checkpoints/last.pt"
    )


# ------------------------------------------------------------------ 5: duplicated YAML keys
def test_duplicated_yaml_keys_are_refused_everywhere(tmp_path: Path) -> None:
    top = tmp_path / "top.yaml"
    top.write_text("name: dup\nseeds: [0, 1, 2, 3]\nstages: {a: {}}\nseeds: [0, 1]\n")
    with pytest.raises(
        SpecError, match=r"top.yaml: line 4: duplicate key 'seeds' \(first at line 2"
    ):
        load_sweep(top)
    nested = tmp_path / "nested.yaml"
    nested.write_text("method:\n  name: bim\n  alpha: 0.5\n  alpha: 0.75\n")
    with pytest.raises(ConfigError, match="nested.yaml: line 4: duplicate key 'alpha'"):
        load_run_config(nested)
    ok = tmp_path / "ok.yaml"
    ok.write_text("method: {name: bim}\n")
    with pytest.raises(ConfigError, match="duplicate key 'alpha'"):
        load_run_config(ok, ["method={name: bim, alpha: 1, alpha: 2}"])
    papers = tmp_path / "papers.yaml"
    papers.write_text("tables:\n  t: {rows: {}}\n  t: {rows: {}}\n")
    from segssl.report import ReportError
    from segssl.report.papers import load_paper_file

    with pytest.raises(ReportError, match="papers.yaml: line 3: duplicate key 't'"):
        load_paper_file(papers)
    merged = tmp_path / "merge.yaml"
    merged.write_text("x: &a {k: 1}\ny:\n  <<: *a\n  k: 2\n")
    assert read_yaml(merged)["y"] == {"k": 2}  # overriding a merged key is not a duplicate


# ------------------------------------------------------------------------------ 6: disk full
def test_disk_full_while_saving_a_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from segssl.engine import checkpoint as ck

    last = tmp_path / "checkpoints" / "last.pt"
    ck.save_checkpoint(last, {"model": {"w": torch.ones(3)}})

    def full(path: Path, data: bytes) -> None:
        with open(path, "xb") as fh:
            fh.write(bytes(data)[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck, "_write_bytes", full)
    with pytest.raises(
        ck.CheckpointWriteError, match=r"last.pt: .*Errno 28.*ENOSPC.*disk full"
    ) as e:
        ck.save_checkpoint(last, {"model": {"w": torch.zeros(3)}})
    assert e.value.errno == errno.ENOSPC
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.pt"]  # no temporary left
    assert torch.equal(ck.load_checkpoint(last)["model"]["w"], torch.ones(3))  # old one intact


def test_checkpoint_temporaries_are_unique_per_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from segssl.engine import checkpoint as ck

    names: list[str] = []
    real = ck._write_bytes
    monkeypatch.setattr(ck, "_write_bytes", lambda p, d: (names.append(p.name), real(p, d)))
    for _ in range(2):
        ck.save_checkpoint(tmp_path / "last.pt", {"n": 1})
    assert len(set(names)) == 2 and all(n.startswith("last.pt.tmp-") for n in names)


# ---------------------------------------------------------------- 7: planning limit, 8: GPUs
def test_a_huge_grid_is_refused_before_expansion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = base_raw()
    raw["stages"]["pretrain"]["grid"] = {
        "optim.lr": [i / 1000 + 0.001 for i in range(100)],
        "method.alpha": [i / 100 for i in range(100)],
        "train.epochs": list(range(1, 101)),
    }
    raw["seeds"] = [0, 1, 2]
    monkeypatch.chdir(tmp_path)
    t0 = time.time()
    res = cli.invoke(app, ["sweep", str(write(tmp_path, raw)), "--dry-run"])
    assert time.time() - t0 < 10
    assert res.exit_code == 2
    assert res.output.index("6,000,000 trials") < res.output.index("max_trials=100,000")
    raw["max_trials"] = 10
    raw["seeds"] = [0]
    raw["stages"]["pretrain"]["grid"] = {"optim.lr": [0.01, 0.02, 0.03, 0.04, 0.05, 0.06]}
    with pytest.raises(SpecError, match=r"plans 12 trials \(pretrain: 6, finetune: 6\)"):
        runner_mod.run_sweep(parse_sweep(raw), console=QUIET, dry_run=True, check_data=False)


def test_dry_run_checks_resources_against_the_local_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    raw = base_raw(resources={"cpu": 1, "gpu": 4})
    monkeypatch.chdir(tmp_path)
    res = cli.invoke(app, ["sweep", str(write(tmp_path, raw)), "--dry-run", "--skip-data-check"])
    assert res.exit_code == 2
    assert "gpu=4" in res.output and "GPU 0" in res.output


# --------------------------------------------------------------------------- 9: table filters
def test_a_table_row_matching_no_planned_trial_is_refused(tmp_path: Path) -> None:
    raw = base_raw()
    raw["stages"]["finetune"]["config"]["method"] = {"name": "finetune"}
    raw["tables"] = [
        {
            "name": "t",
            "stage": "finetune",
            "rows": {"Baseline": {"method.name": "finetun"}},
            "columns": [{"label": "ACDC", "by": "data.labeled_scans"}],
        }
    ]
    with pytest.raises(SpecError, match=r"row 'Baseline'.*matches no planned trial.*finetune"):
        runner_mod.run_sweep(parse_sweep(raw), console=QUIET, dry_run=True, check_data=False)
    raw["tables"][0]["rows"] = {"Baseline": {"method.name": "finetune"}}
    raw["tables"][0]["columns"] = [{"label": "ACDC", "by": "data.labeled_scans", "values": [1, 8]}]
    with pytest.raises(SpecError, match=r"column 'ACDC / 8'.*matches no planned trial"):
        runner_mod.run_sweep(parse_sweep(raw), console=QUIET, dry_run=True, check_data=False)


# ------------------------------------------------------------------- 10: stale end reason
def test_a_resumed_run_that_finishes_has_no_stale_end_reason(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = tracking.ensure_experiment(uri, "resume", "h")
    rec = tracking.TrialRecorder(uri, exp, None, tmp_path / "wd")
    run_id = rec.start("t", {"segssl.trial_key": "k"}, {})
    rec.end("KILLED", "driver gone; marked at restart")
    again = tracking.TrialRecorder(uri, exp, None, tmp_path / "wd")
    assert again.start("t", {"segssl.trial_key": "k"}, {}) == run_id
    again.end("FINISHED")
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FINISHED" and TAG_END_REASON not in run.data.tags


def test_a_stopped_trial_s_reason_is_the_driver_s_whichever_ends_first(tmp_path) -> None:
    """Ctrl-C: the driver closing the stage and the stopped trial's own process (Tune's
    SystemExit) race to end the trial's run; the reason must be the driver's ("sweep stopped by
    SIGINT") in both orders (the two-stage Ctrl-C test saw Tune's generic early-stop reason)."""
    from mlflow import MlflowClient

    from segssl.orchestrate.trainable import _end_failed
    from segssl.record import TAG_PARENT_RUN, TAG_STAGE

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = tracking.ensure_experiment(uri, "stop", "h")
    client = MlflowClient(uri)
    sweep = client.create_run(exp).info.run_id
    tags = {TAG_PARENT_RUN: sweep, TAG_STAGE: "pre"}

    def trial(name: str) -> tuple[tracking.TrialRecorder, str]:
        rec = tracking.TrialRecorder(uri, exp, sweep, tmp_path / name)
        return rec, rec.start(name, {**tags, "segssl.trial_key": name}, {})

    first, run_a = trial("a")  # the trial's process ends first, then the driver closes
    assert _end_failed(SystemExit(), first, {}) is False
    second, run_b = trial("b")  # the driver closes first, then the trial's process ends
    tracking.close_stage_runs(uri, exp, sweep, "pre", "sweep stopped by SIGINT")
    _end_failed(SystemExit(), second, {})
    for run_id in (run_a, run_b):
        run = client.get_run(run_id)
        assert run.info.status == "KILLED"
        assert run.data.tags[TAG_END_REASON] == "sweep stopped by SIGINT"
    # without an interrupt (an ASHA early stop) the driver names Tune's stop
    third, run_c = trial("c")
    _end_failed(SystemExit(), third, {})
    tracking.close_stage_runs(uri, exp, sweep, "pre")
    assert client.get_run(run_c).data.tags[TAG_END_REASON] == "stopped by Ray Tune (early stop)"
    assert client.get_run(run_a).data.tags[TAG_END_REASON] == "sweep stopped by SIGINT"


# --------------------------------------------------------------------- 11: credentials in URIs
class _AuthHealth(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        import base64

        ok = (
            self.headers.get("Authorization") == "Basic " + base64.b64encode(b"ann:s3cret").decode()
        )
        self.send_response(200 if ok and self.path == "/health" else 401)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *a: Any) -> None:
        pass


def test_credentials_in_the_tracking_uri_are_used_and_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the sweep's log folder (./segssl-runs/faults/logs) goes here
    server = http.server.HTTPServer(("127.0.0.1", 0), _AuthHealth)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        tracking.check_tracking(f"http://ann:s3cret@127.0.0.1:{port}")  # accepted
        with pytest.raises(tracking.TrackingError) as bad:
            tracking.check_tracking(f"http://ann:wrong@127.0.0.1:{port}")
        assert "401" in str(bad.value) and "wrong" not in str(bad.value)
        assert "http://ann:***@127.0.0.1" in str(bad.value)
    finally:
        server.shutdown()
    with pytest.raises(tracking.TrackingError) as down:
        tracking.check_tracking("http://ann:s3cret@127.0.0.1:9", timeout=1)
    assert "s3cret" not in str(down.value) and "ann:***@" in str(down.value)
    res = cli.invoke(
        app,
        [
            "sweep",
            str(write(tmp_path, base_raw())),
            "--tracking-uri",
            "http://ann:s3cret@127.0.0.1:9",
        ],
    )
    assert res.exit_code == 2 and "s3cret" not in res.output and "ann:***@" in res.output
    text = io_plan("https://ann:s3cret@mlflow.example:5000")
    assert "s3cret" not in text and "ann:***@mlflow.example" in text


def test_log_records_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    old = logging.getLogRecordFactory()
    try:
        tracking.redact_logging()
        tracking.redact_logging()  # idempotent
        with caplog.at_level(logging.INFO):
            logging.getLogger("mlflow.x").info(
                "API request to %s failed", "http://ann:pw@h:5000/api"
            )
        assert "ann:***@h:5000" in caplog.text and ":pw@" not in caplog.text
    finally:
        logging.setLogRecordFactory(old)


def io_plan(uri: str) -> str:
    import io

    from segssl.orchestrate.plan import plan_sweep

    buf = io.StringIO()
    plan = plan_sweep(parse_sweep(base_raw()), storage="/tmp/x")
    runner_mod.print_plan(plan, {}, Console(file=buf, width=200), uri)
    return buf.getvalue()


# ------------------------------------------------------ 3: failures grouped by reason on console
def test_failed_trials_are_printed_grouped_by_reason(capsys: pytest.CaptureFixture) -> None:
    import typer

    from segssl.cli import _sweep_summary
    from segssl.orchestrate.runner import StageOutcome, SweepOutcome

    out = SweepOutcome("s", "http://ann:s3cret@h:5000", "1", Path("/tmp/s"))
    out.stages["a"] = StageOutcome(planned=3, skipped=0, launched=3, failed=3)
    out.failures = {
        "DataError: scan patient001 is unreadable": {"retryable": False, "runs": ["r1", "r2"]},
        "RuntimeError: CUDA error": {"retryable": True, "runs": ["r3"]},
    }
    with pytest.raises(typer.Exit) as exc:
        _sweep_summary(out)
    assert exc.value.exit_code == 1
    err = capsys.readouterr()
    text = err.out + err.err
    assert "2 trial(s) failed (not retryable): DataError: scan patient001 is unreadable" in text
    assert "r1; r2" in text and "1 trial(s) failed (retryable): RuntimeError" in text
    assert "s3cret" not in text


def test_table_reads_the_plan_and_refuses_a_row_no_trial_was_planned_for(
    tmp_path: Path, no_ray: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    raw = base_raw(storage=str(tmp_path / "s"))
    raw["tables"] = [{"name": "t", "stage": "finetune", "rows": ["method.name"]}]
    with pytest.raises(AssertionError, match="Ray was started"):
        runner_mod.run_sweep(parse_sweep(raw), console=QUIET, live=False, check_data=False)
    assert (tmp_path / "s" / "plan.json").is_file()
    raw["tables"][0]["rows"] = {"Ours": {"method.name": "finetun"}}  # edited after the sweep ran
    res = cli.invoke(app, ["table", str(write(tmp_path, raw)), "--no-log"])
    assert res.exit_code == 2, res.output
    assert "plan.json" in res.output and "matches no planned trial" in res.output


@pytest.mark.parametrize(
    ("uri", "secret", "user"),
    [
        ("http://ann:p@ss@mlflow.example:5000", "ss", "ann"),  # '@' in the password
        ("http://ann@uni.edu:s3cret@mlflow.example:5000/x", "s3cret", "ann@uni.edu"),  # e-mail
        ("postgresql+psycopg2://ann:s%40cr3t@db:5432/mlflow", "cr3t", "ann"),  # URL-encoded
    ],
)
def test_passwords_with_special_characters_are_redacted(uri: str, secret: str, user: str) -> None:
    from urllib.parse import urlsplit

    assert secret in (urlsplit(uri).password or "")  # what a client would send
    shown = tracking.redact(f"cannot reach {uri}: refused")
    assert secret not in shown and f"{user}:***@" in shown and shown.endswith(": refused")
