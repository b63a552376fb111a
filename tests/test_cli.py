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
    cells = [("baseline", 1), ("baseline", 2), ("finetune", 1), ("finetune", 2)]
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
    r = runner.invoke(app, ["sweep", str(sweep), "--dry-run", "--storage", str(tmp_path / "s")])
    assert r.exit_code == 2, r.output
    msg = " ".join(r.output.split())
    assert "filter names param 'method.k'" in msg, msg
    assert "did you mean 'pretrain.method.k'" in msg, msg
    assert "FINISHED" not in msg and "planned trial of stage 'finetune'" in msg, msg
