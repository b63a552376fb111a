"""The command line as a newcomer meets it: help text, import cost, error messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from segssl.cli import app
from segssl.config import ConfigError, parse_run_config
from segssl.orchestrate.spec import SpecError, parse_sweep

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "experiments" / "sweeps" / "demo.yaml"
runner = CliRunner()

# runs `segssl ARGS` in a fresh interpreter, then prints which heavy packages it imported
_PROBE = """
import json, sys
from segssl.cli import app
sys.argv = ["segssl", *json.loads(sys.argv[1])]
try:
    app()
except SystemExit as exc:
    code = exc.code
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"ray", "torch", "mlflow", "sqlalchemy"})
print("\\nIMPORTED " + json.dumps({"code": code, "heavy": heavy}))
"""


def _imports(args: list[str], cwd: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "PYTHONPATH": str(REPO)},
        timeout=300,
    )
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("IMPORTED ")]
    assert line, proc.stdout + proc.stderr
    return {**json.loads(line[-1][len("IMPORTED ") :]), "out": proc.stdout, "err": proc.stderr}


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite store holding a finished demo study (one parent, two seeds per table cell)."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("demo", artifact_location=str(root / "artifacts"))
    parent = client.create_run(exp, tags={"segssl.kind": "sweep"}).info.run_id
    cells = [("baseline", 1), ("baseline", 4), ("finetune", 1), ("finetune", 4)]
    for i, (method, n) in enumerate(cells):
        for seed in (0, 1):
            rid = client.create_run(
                exp,
                tags={
                    "mlflow.parentRunId": parent,
                    "segssl.kind": "trial",
                    "segssl.trial_key": f"{i}-{seed}",
                },
            ).info.run_id
            for k, v in {"method.name": method, "data.labeled_scans": n, "seed": seed}.items():
                client.log_param(rid, k, v)
            client.log_metric(rid, "test/dsc", 0.5 + 0.1 * i + 0.01 * seed)
            client.set_terminated(rid, "FINISHED")
    client.set_terminated(parent, "FINISHED")
    return uri


def test_table_and_help_do_not_import_ray_torch_or_mlflow(demo_store, tmp_path):
    """`segssl --help` and `segssl table` on a SQLite store answer without Ray, torch or MLflow
    (each costs seconds of imports); the table still comes out."""
    helped = _imports(["--help"], tmp_path)
    assert helped["code"] == 0 and helped["heavy"] == [], helped
    table = _imports(["table", str(DEMO), "--tracking-uri", demo_store], tmp_path)
    assert table["code"] in (0, None), table["err"]
    assert "| Baseline | 50.50" in table["out"], table["out"]
    assert table["heavy"] == [], table


def test_help_names_arguments_and_hides_bool_types():
    for cmd, metavar in (("train", "CONFIG"), ("sweep", "SWEEP"), ("table", "SWEEP")):
        r = runner.invoke(app, [cmd, "--help"], env={"COLUMNS": "120"})
        assert r.exit_code == 0, r.output
        assert f"Usage: segssl {cmd} [OPTIONS] {metavar}" in r.output, r.output
        assert "{" not in r.output.split("Usage:")[1].splitlines()[0]
        assert "<bool>" not in r.output, r.output


def test_unknown_config_keys_get_a_suggestion():
    with pytest.raises(ConfigError, match=r"train\.epoch: unknown key \(did you mean 'epochs'\?\)"):
        parse_run_config({"method": {"name": "baseline"}, "train": {"epoch": 3}})
    with pytest.raises(ConfigError, match=r"method\.kk: unknown key \(did you mean 'k'\?\)"):
        parse_run_config({"method": {"name": "bim", "kk": 3}})
    with pytest.raises(SpecError, match=r"seed: unknown key \(did you mean 'seeds'\?\)"):
        parse_sweep({"name": "x", "seed": [0], "stages": {"a": {"config": {}}}})


def test_dry_run_table_filter_suggests_the_parent_stage_key(tmp_path):
    """A table filter naming a param only the parent stage sets gets the prefixed key, in the
    words of a plan (no runs exist yet), not of FINISHED runs."""
    import yaml

    raw = yaml.safe_load(DEMO.read_text())
    raw["tables"][0].update({"stage": "finetune", "filter": {"method.k": 10}})
    sweep = tmp_path / "demo_k.yaml"
    sweep.write_text(yaml.safe_dump(raw))
    r = runner.invoke(
        app, ["sweep", str(sweep), "--dry-run", "--no-cost", "--storage", str(tmp_path / "s")]
    )
    assert r.exit_code == 2, r.output
    msg = " ".join(r.output.split())
    assert "filter names param 'method.k'" in msg, msg
    assert "did you mean 'pretrain.method.k'" in msg, msg
    assert "FINISHED" not in msg and "planned trial of stage 'finetune'" in msg, msg


def test_table_finds_the_demo_store_and_prints_the_command_that_works(demo_store, tmp_path):
    """After `segssl demo`, `segssl table experiments/sweeps/demo.yaml` from the folder holding
    segssl-demo/ does not find ./segssl-runs/demo: the error names the demo's store and the exact
    command (which then works), and does not suggest rerunning the sweep."""
    import os
    import shlex
    import shutil

    from segssl.demo import table_command

    store = tmp_path / "segssl-demo" / "segssl-runs" / "demo"
    store.mkdir(parents=True)
    shutil.copy(demo_store[len("sqlite:///") :], store / "mlflow.db")
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        r = runner.invoke(app, ["table", str(DEMO)])
        assert r.exit_code == 2, r.output
        msg = " ".join(r.output.split())
        assert f"its runs are in {store / 'mlflow.db'}" in msg, msg
        assert "segssl sweep" not in msg, msg
        command = f"segssl table {DEMO} --tracking-uri sqlite:///{store / 'mlflow.db'}"
        assert command in msg, msg
        again = runner.invoke(app, shlex.split(command)[1:] + ["--no-log"])
        assert again.exit_code == 0 and "| Baseline | 50.50" in again.output, again.output
        # what `segssl demo` prints after its table
        printed = table_command(f"sqlite:///{store / 'mlflow.db'}")
        assert printed is not None and printed.startswith("segssl table ")
        shown = runner.invoke(app, shlex.split(printed)[1:] + ["--no-log"])
        assert shown.exit_code == 0 and "| Baseline | 50.50" in shown.output, shown.output
    finally:
        os.chdir(here)
    r = runner.invoke(app, ["table", str(DEMO), "--tracking-uri", f"sqlite:///{tmp_path}/x.db"])
    assert r.exit_code == 2 and "if the sweep has not run yet: segssl sweep" in r.output


def test_library_logs_go_to_a_file_in_the_storage(tmp_path, capfd):
    """Ray's and MLflow's log lines (and Python warnings) land in <storage>/logs/*.log, not on
    the console; -v keeps them on the console too."""
    import logging
    import warnings

    from segssl.orchestrate.logs import LIBRARY_LOGGERS, route_library_logs

    saved = {
        n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate)
        for n in LIBRARY_LOGGERS
    }
    try:
        # an earlier capture whose showwarning a catch_warnings block already restored (as
        # pytest does around every test): logging still thinks it is capturing
        with warnings.catch_warnings():
            logging.captureWarnings(True)
        path = route_library_logs(tmp_path / "store")
        assert path.parent == tmp_path / "store" / "logs"
        logging.getLogger("mlflow.store.db.utils").info("Creating initial MLflow database tables")
        logging.getLogger("ray").info("Started a local Ray instance.")
        warnings.warn("a library deprecation", UserWarning, stacklevel=1)
        err = capfd.readouterr().err
        assert "Creating initial" not in err and "Started a local Ray" not in err, err
        text = path.read_text()
        assert "Creating initial MLflow database tables" in text
        assert "Started a local Ray instance." in text and "a library deprecation" in text
        # Ray's task errors carry colour codes; ray.init sets its own formatter on the handler
        (handler,) = [h for h in logging.getLogger("ray").handlers if hasattr(h, "baseFilename")]
        handler.setFormatter(logging.Formatter("%(asctime)s\t%(levelname)s -- %(message)s"))
        try:
            raise RuntimeError("\x1b[36mray::ImplicitFunc.train()\x1b[39m (pid=1)")
        except RuntimeError:
            logging.getLogger("ray.tune").exception("Trial task failed for trial t1")
        text = path.read_text()
        assert "ray::ImplicitFunc.train() (pid=1)" in text and "Traceback" in text, text
        assert "\x1b" not in text, text
        # a second sweep in the same process (a notebook; the test suite) logs to its own file
        # only (the first file's handler stayed on every library logger)
        second = route_library_logs(tmp_path / "other")
        logging.getLogger("ray").info("Only in the second file.")
        assert "Only in the second file." in second.read_text()
        assert "Only in the second file." not in path.read_text()
        assert sum(hasattr(h, "baseFilename") for h in logging.getLogger("ray").handlers) == 1
    finally:
        logging.captureWarnings(False)
        for n, (handlers, propagate) in saved.items():
            logging.getLogger(n).handlers[:] = handlers
            logging.getLogger(n).propagate = propagate


def test_sweep_keeps_trial_output_off_the_console_unless_verbose(tmp_path, monkeypatch):
    import segssl.orchestrate.logs as logs_mod
    import segssl.orchestrate.runner as runner_mod

    seen: list[dict] = []

    def fake_sweep(*a, **kw):
        seen.append(kw)
        kw["on_start"]()  # every check passed: the log file is opened
        raise runner_mod.SpecError("stop here")

    monkeypatch.setattr(runner_mod, "run_sweep", fake_sweep)
    monkeypatch.setattr(logs_mod.LibraryLogs, "open", lambda self, s: s / "logs" / "x.log")
    args = ["sweep", str(DEMO), "--storage", str(tmp_path / "st"), "--skip-data-check"]
    quiet = runner.invoke(app, args)
    loud = runner.invoke(app, ["-v", *args])
    assert seen[0]["ray_init_kwargs"] == {"log_to_driver": False}, quiet.output
    assert seen[1]["ray_init_kwargs"] == {"log_to_driver": True}, loud.output
    assert f"Ray and MLflow logs: {tmp_path / 'st' / 'logs' / 'x.log'}" in quiet.output


def test_table_of_a_sweep_with_profiles_does_not_import_torch(tmp_path):
    """A sweep whose ``profiles:`` override run-config keys (BIM Table 3's smoke profile sets
    ``base.data...``) is tabled without importing the method registry (torch), Ray or MLflow:
    checking the overrides against method configs is the planner's job, not the table's."""
    from mlflow import MlflowClient

    sweep = REPO / "experiments" / "sweeps" / "bim_table3_alpha.yaml"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("bim-table3-alpha", artifact_location=str(tmp_path / "a"))
    client.set_terminated(client.create_run(exp, tags={"segssl.kind": "sweep"}).info.run_id)
    helped = _imports(["table", "--help"], tmp_path)
    assert helped["code"] == 0 and helped["heavy"] == [], helped
    table = _imports(["table", str(sweep), "--tracking-uri", uri], tmp_path)
    assert "Traceback" not in table["err"], table["err"]
    assert table["heavy"] == [], table


def test_the_methods_manifest_equals_the_registry():
    """`segssl methods` reads a plain-data manifest; it must list exactly the registry's
    methods, in its order, each with the first line of its class docstring."""
    from segssl.method_manifest import METHODS
    from segssl.methods import REGISTRY, describe

    expected = {name: describe(cls) for name, cls in REGISTRY.items()}
    lines = "".join(f"    {k!r}: {v!r},\n" for k, v in expected.items())
    assert list(METHODS.items()) == list(expected.items()), f"expected:\n{lines}"
    assert all(METHODS.values())


def test_methods_lists_names_and_descriptions_without_torch(tmp_path):
    listed = _imports(["methods"], tmp_path)
    assert listed["code"] in (0, None), listed["err"]
    assert listed["heavy"] == [], listed  # no torch, ray, mlflow or sqlalchemy
    rows = [ln.split(None, 1) for ln in listed["out"].splitlines() if ln and "IMPORTED" not in ln]
    from segssl.methods import REGISTRY, describe

    assert [r[0] for r in rows] == sorted(REGISTRY)
    assert dict(rows)["bim"] == describe(REGISTRY["bim"])


def test_table_looks_for_the_sweeps_own_storage_first(demo_store, tmp_path):
    """A sweep with its own relative `storage:` run from its project folder: `segssl table`
    from elsewhere finds that store first (beside the sweep file, not ./segssl-runs/NAME) and
    prints the command that works; `--storage` names it directly."""
    import os
    import shlex
    import shutil

    import yaml

    project = tmp_path / "project"
    raw = yaml.safe_load(DEMO.read_text())
    raw["storage"] = "results/demo-own"
    (project / "sweeps").mkdir(parents=True)
    sweep = project / "sweeps" / "demo.yaml"
    sweep.write_text(yaml.safe_dump(raw))
    own = project / "results" / "demo-own"
    own.mkdir(parents=True)
    shutil.copy(demo_store[len("sqlite:///") :], own / "mlflow.db")
    decoy = project / "segssl-runs" / "demo"  # an older run of the same name: not the first
    decoy.mkdir(parents=True)
    shutil.copy(demo_store[len("sqlite:///") :], decoy / "mlflow.db")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    here = os.getcwd()
    os.chdir(elsewhere)
    try:
        r = runner.invoke(app, ["table", str(sweep)])
        assert r.exit_code == 2, r.output
        msg = " ".join(r.output.split())
        assert f"its runs are in {own / 'mlflow.db'}" in msg, msg
        command = f"segssl table {sweep} --tracking-uri sqlite:///{own / 'mlflow.db'}"
        assert command in msg, msg
        again = runner.invoke(app, shlex.split(command)[1:] + ["--no-log"])
        assert again.exit_code == 0 and "| Baseline | 50.50" in again.output, again.output
        # --storage as given to `segssl sweep --storage`, relative to the project folder
        r = runner.invoke(app, ["table", str(sweep), "--storage", "other/place"])
        assert r.exit_code == 2 and "no MLflow database" in r.output
        (project / "other").mkdir()
        shutil.copytree(own, project / "other" / "place")
        r = runner.invoke(app, ["table", str(sweep), "--storage", "other/place"])
        msg = " ".join(r.output.split())
        assert f"its runs are in {project / 'other' / 'place' / 'mlflow.db'}" in msg, msg
        ok = runner.invoke(app, ["table", str(sweep), "--storage", str(own), "--no-log"])
        assert ok.exit_code == 0 and "| Baseline | 50.50" in ok.output, ok.output
    finally:
        os.chdir(here)
