"""``segssl submit``: job ids derived from the sweep, attach vs. new attempt, the race of two
submitters, credentials kept out of the job's command line and metadata, and the exit codes of
--status / --logs / --stop (an in-memory job server; the real one is in tests/cluster)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from orch_helpers import FakeJobClient
from typer.testing import CliRunner

from segssl.cli import app
from segssl.orchestrate import submit as sub
from segssl.orchestrate.spec import load_sweep

ADDR = "http://head:8265"
URI = "http://mlflow:5000"
SECRET = "s3cr3t-Pa55word"


def sweep_file(tmp_path: Path, seeds: list[int] | None = None, name: str = "remote") -> Path:
    raw = {
        "name": name,
        "seeds": seeds or [0, 1],
        "storage": "/shared/segssl",
        "stages": {"a": {"config": {"method": {"name": "baseline"}}}},
    }
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


@pytest.fixture(autouse=True)
def _no_env_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in (*sub.CREDENTIAL_VARS, "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)


def submit(path: Path, client: FakeJobClient, **kw: Any) -> sub.Submission:
    return sub.submit_sweep(path, load_sweep(path), ADDR, kw.pop("uri", URI), client=client, **kw)


def test_submission_id_from_name_and_spec_hash(tmp_path: Path) -> None:
    a = load_sweep(sweep_file(tmp_path))
    assert sub.submission_base(a) == sub.submission_base(load_sweep(sweep_file(tmp_path)))
    assert sub.submission_base(a).startswith("segssl-remote-")
    other = load_sweep(sweep_file(tmp_path, name="remote.two"))
    assert sub.submission_base(other).startswith("segssl-remote-two-")
    raw = yaml.safe_load(sweep_file(tmp_path).read_text())
    raw["stages"]["a"]["config"]["method"]["name"] = "mean_teacher"  # another study
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(raw))
    assert sub.submission_base(load_sweep(tmp_path / "b.yaml")) != sub.submission_base(a)


def test_running_sweep_attaches_finished_one_gets_a_new_attempt(tmp_path: Path) -> None:
    path = sweep_file(tmp_path)
    client = FakeJobClient()
    first = submit(path, client)
    assert (first.attempt, first.attached) == (1, False)
    base = first.job_id
    for status in ("PENDING", "RUNNING"):
        client.jobs[base].status = status
        again = submit(path, client)
        assert again.attached and again.job_id == base and again.status == status
    assert len(client.submitted) == 1  # no second driver
    for n, status in [(2, "SUCCEEDED"), (3, "FAILED"), (4, "STOPPED")]:
        client.jobs[sub.attempt_id(base, n - 1)].status = status
        nxt = submit(path, client)
        assert (nxt.job_id, nxt.attempt, nxt.attached) == (f"{base}-a{n}", n, False)
    assert [s["submission_id"] for s in client.submitted] == [
        base,
        f"{base}-a2",
        f"{base}-a3",
        f"{base}-a4",
    ]
    # every attempt runs the same `segssl sweep`: the driver skips FINISHED trial keys
    assert len({s["entrypoint"] for s in client.submitted}) == 1


def test_race_for_the_same_id_attaches(tmp_path: Path) -> None:
    """Two submitters that both saw no job: the job server accepts one id once; the loser
    attaches to the winner's job."""
    path = sweep_file(tmp_path)
    client = FakeJobClient()
    real_list = client.list_jobs
    winner = submit(path, client)
    client.list_jobs = lambda: []  # type: ignore[method-assign] - the loser's stale view
    loser = submit(path, client)
    client.list_jobs = real_list  # type: ignore[method-assign]
    assert loser.attached and loser.job_id == winner.job_id
    assert len(client.submitted) == 1


def test_attach_refused_when_the_running_job_has_another_version_of_the_file(
    tmp_path: Path,
) -> None:
    client = FakeJobClient()
    first = submit(sweep_file(tmp_path, seeds=[0, 1]), client)
    client.jobs[first.job_id].status = "RUNNING"
    grown = sweep_file(tmp_path, seeds=[0, 1, 2])  # same spec hash, one more seed
    assert sub.submission_base(load_sweep(grown)) == first.job_id
    with pytest.raises(sub.SubmitError, match="earlier version of the file"):
        submit(grown, client)


@pytest.mark.parametrize("via", ["env", "uri"])
def test_credentials_only_in_the_runtime_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, via: str
) -> None:
    uri = URI
    if via == "env":
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)
    else:
        uri = f"http://alice:{SECRET}@mlflow:5000"
    client = FakeJobClient()
    job = submit(sweep_file(tmp_path), client, uri=uri)
    kw = client.submitted[0]
    env = kw["runtime_env"]["env_vars"]
    assert env["MLFLOW_TRACKING_USERNAME"] == "alice"
    assert env["MLFLOW_TRACKING_PASSWORD"] == SECRET
    assert "--tracking-uri http://mlflow:5000 " in kw["entrypoint"]
    rest = {k: v for k, v in kw.items() if k != "runtime_env"}
    rest["runtime_env"] = {k: v for k, v in kw["runtime_env"].items() if k != "env_vars"}
    assert SECRET not in repr(rest) and "alice" not in repr(rest)
    assert all(SECRET not in text for text in client.files[job.job_id].values())


def test_cluster_credentials_sends_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)
    client = FakeJobClient()
    submit(sweep_file(tmp_path), client, cluster_credentials=True)
    assert SECRET not in repr(client.submitted[0])


def test_the_project_travels_with_the_job(tmp_path: Path) -> None:
    client = FakeJobClient()
    submit(sweep_file(tmp_path), client)
    mods = client.submitted[0]["runtime_env"]["py_modules"]
    assert [Path(m).name for m in mods] == ["segssl"] and (Path(mods[0]) / "cli.py").is_file()
    submit(sweep_file(tmp_path, name="x"), client, ship_code=False)
    assert "py_modules" not in client.submitted[1]["runtime_env"]


@pytest.fixture()
def auth_server() -> Iterator[str]:
    """An HTTP server that accepts only ``alice:SECRET`` (basic auth) on the search API."""
    import base64

    good = "Basic " + base64.b64encode(f"alice:{SECRET}".encode()).decode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            ok = self.headers.get("Authorization") == good
            self.send_response(200 if ok else 401)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_refused_credentials_fail_before_submitting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, auth_server: str
) -> None:
    client = FakeJobClient()
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
    with pytest.raises(sub.SubmitError, match=r"refused user 'alice' \(HTTP 401\)") as err:
        submit(sweep_file(tmp_path), client, uri=auth_server)
    assert "wrong" not in str(err.value)
    assert client.submitted == []
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)
    assert not submit(sweep_file(tmp_path), client, uri=auth_server).attached


@pytest.fixture()
def cli_client(monkeypatch: pytest.MonkeyPatch) -> FakeJobClient:
    import ray.job_submission

    client = FakeJobClient()
    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", lambda address: client)
    return client


@pytest.mark.parametrize(
    ("status", "code"), [("SUCCEEDED", 0), ("FAILED", 1), ("STOPPED", 3), ("RUNNING", 4)]
)
def test_status_and_logs_exit_with_the_jobs_outcome(
    tmp_path: Path, cli_client: FakeJobClient, status: str, code: int
) -> None:
    path = sweep_file(tmp_path)
    res = CliRunner().invoke(app, ["submit", str(path), "--address", ADDR, "--tracking-uri", URI])
    assert res.exit_code == 0, res.output
    job_id = cli_client.submitted[0]["submission_id"]
    cli_client.jobs[job_id].status = status
    cli_client.logs[job_id] = ["trial 1 finished\n", "sweep done\n"]
    res = CliRunner().invoke(app, ["submit", str(path), "--address", ADDR, "--status"])
    assert res.exit_code == code, res.output
    assert f"job {job_id} (attempt 1) {status}" in res.output
    res = CliRunner().invoke(app, ["submit", str(path), "--address", ADDR, "--logs", "--follow"])
    assert "trial 1 finished\nsweep done\n" in res.output
    if status != "RUNNING":  # a followed job that is still running after the stream is unusual
        assert res.exit_code == code, res.output


def test_stop_and_no_job(tmp_path: Path, cli_client: FakeJobClient) -> None:
    path = sweep_file(tmp_path)
    res = CliRunner().invoke(app, ["submit", str(path), "--address", ADDR, "--status"])
    assert res.exit_code == 2 and "no job of sweep 'remote'" in res.output
    CliRunner().invoke(app, ["submit", str(path), "--address", ADDR, "--tracking-uri", URI])
    job_id = cli_client.submitted[0]["submission_id"]
    cli_client.jobs[job_id].status = "RUNNING"
    res = CliRunner().invoke(app, ["submit", str(path), "--address", ADDR, "--stop"])
    assert res.exit_code == 0 and cli_client.stopped == [job_id], res.output
    assert "STOPPED" in res.output
    res = CliRunner().invoke(app, ["submit", str(path), "--address", ADDR, "--status", "--stop"])
    assert res.exit_code == 2 and "choose one" in res.output


@pytest.mark.parametrize("change", ["root", "storage", "tracking_uri"])
def test_attach_refused_when_the_running_job_runs_another_root_storage_or_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """Same file, same spec hash (same job id), but submitted from another directory (relative
    data paths resolve elsewhere: other trial keys), to other storage or another tracking
    server: attaching would report success while the wanted trials never run."""
    client = FakeJobClient()
    path = sweep_file(tmp_path)
    first = submit(path, client)
    client.jobs[first.job_id].status = "RUNNING"
    kw: dict[str, Any] = {}
    if change == "root":
        other = tmp_path / "elsewhere"
        other.mkdir()
        monkeypatch.chdir(other)
    elif change == "storage":
        kw["storage"] = "/other/segssl"
    else:
        kw["uri"] = "http://other-mlflow:5000"
    with pytest.raises(sub.SubmitError, match=change.replace("_", " ")):
        submit(path, client, **kw)
    assert len(client.submitted) == 1
    monkeypatch.chdir(tmp_path)
    assert submit(path, client).attached  # the same submission still attaches


@pytest.mark.parametrize(
    "uri",
    [f"postgresql://mlflow:{SECRET}@db:5432/mlflow", f"htp://alice:{SECRET}@mlflow:5000"],
)
def test_a_refused_tracking_uri_is_named_without_its_password(tmp_path: Path, uri: str) -> None:
    """A database URI passed as --tracking-uri (or a typo'd scheme) is refused; the message
    names it, but not the password in its user-info."""
    with pytest.raises(sub.SubmitError, match="expected http") as err:
        submit(sweep_file(tmp_path), FakeJobClient(), uri=uri)
    host = uri.rsplit("@", 1)[1]
    assert SECRET not in str(err.value) and host in str(err.value)
