"""Sweep spec validation: every bad input fails before anything runs, naming file and key path."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from segssl.orchestrate.plan import plan_sweep
from segssl.orchestrate.runner import ResourceError, check_resources
from segssl.orchestrate.spec import SpecError, load_sweep, parse_sweep, spec_hash
from segssl.orchestrate.tracking import TrackingError, check_tracking, ensure_experiment


def good() -> dict[str, Any]:
    return {
        "name": "s",
        "seeds": [0, 1],
        "base": {"method": {"name": "baseline"}, "train": {"epochs": 2}},
        "stages": {
            "pretrain": {
                "config": {"stage": "pretrain", "method": {"name": "bim"}},
                "grid": {"method.alpha": [0.0, 0.5]},
            },
            "finetune": {
                "from": "pretrain",
                "config": {"stage": "finetune", "method": {"name": "finetune"}},
                "grid": {"data.labeled_scans": [1, 2]},
            },
        },
    }


def write(tmp_path: Path, raw: Any) -> Path:
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def err(tmp_path: Path, raw: Any) -> str:
    with pytest.raises(SpecError) as info:
        spec = load_sweep(write(tmp_path, raw))
        plan_sweep(spec, source=str(tmp_path / "sweep.yaml"), root=tmp_path)
    return str(info.value)


def test_good_spec_loads(tmp_path: Path) -> None:
    spec = load_sweep(write(tmp_path, good()))
    assert spec.stage_order() == ["pretrain", "finetune"]
    assert spec.stages["finetune"].from_ == "pretrain"


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda r: r.update(colour="red"), "colour: unknown key"),
        (lambda r: r["stages"]["pretrain"].update(gird={}), "stages.pretrain.gird: unknown key"),
        (lambda r: r.update(seeds="zero"), "seeds: Input should be a valid list"),
        (lambda r: r.update(max_concurrent="many"), "max_concurrent: Input should be a valid"),
        (lambda r: r.update(seeds=[]), "seeds: seeds is empty"),
        (lambda r: r.update(seeds=[1, 1]), "duplicate seeds"),
        (
            lambda r: r["stages"]["pretrain"]["grid"].update({"method.alpha": []}),
            "stages.pretrain.grid: grid axis 'method.alpha' is empty",
        ),
        (
            lambda r: r["stages"]["finetune"].update({"from": "pretrian"}),
            "stages.finetune.from: 'pretrian' names no stage",
        ),
        (lambda r: r["stages"]["pretrain"].update({"from": "finetune"}), "cycle through 'from': "),
        (lambda r: r.update(stages={}), "stages: no stages"),
        (
            lambda r: r["stages"]["pretrain"].update(zip=[{"a.b": [1, 2], "c.d": [1]}]),
            "zip group 0: lists must have equal lengths",
        ),
        (
            lambda r: r["stages"]["pretrain"].update(resources={"cpu": 0}),
            "stages.pretrain.resources.cpu: Input should be greater than 0",
        ),
        (lambda r: r.update(resources={"gpu": 1.5}), "needs whole GPUs"),
        (
            lambda r: r["stages"]["pretrain"].update(
                search={"space": {"method.alpha": {"uniform": [1, 0]}}}
            ),
            "expected low < high",
        ),
        (
            lambda r: r["stages"]["pretrain"].update(
                search={"space": {"method.alpha": {"uniform": [0, 1], "choice": [1]}}}
            ),
            "exactly one of uniform/loguniform/choice",
        ),
        (lambda r: r.update(name="bad name!"), "name: String should match pattern"),
        (
            lambda r: r["stages"]["pretrain"]["grid"].update({"seed": [1, 2]}),
            "'seed' is not an axis",
        ),
    ],
)
def test_bad_spec(tmp_path: Path, mutate: Any, expected: str) -> None:
    raw = good()
    mutate(raw)
    msg = err(tmp_path, raw)
    assert str(tmp_path / "sweep.yaml") in msg
    assert expected in msg


def test_cycle_names_the_path(tmp_path: Path) -> None:
    raw = good()
    raw["stages"]["pretrain"]["from"] = "finetune"
    msg = err(tmp_path, raw)
    assert "pretrain -> finetune -> pretrain" in msg or "finetune -> pretrain -> finetune" in msg


def test_search_stage_cannot_feed_and_cannot_mix_with_grid(tmp_path: Path) -> None:
    raw = good()
    raw["stages"]["pretrain"]["grid"] = {}
    raw["stages"]["pretrain"]["search"] = {"space": {"method.alpha": {"uniform": [0, 1]}}}
    assert "is a search stage and cannot feed another stage" in err(tmp_path, raw)
    raw["stages"]["pretrain"]["grid"] = {"method.k": [10]}
    assert "cannot also have grid/zip/variants" in err(tmp_path, raw)


def test_trial_config_error_names_stage_and_axis_values(tmp_path: Path) -> None:
    raw = good()
    raw["stages"]["pretrain"]["grid"]["method.alpha"] = [0.5, 2.0]  # alpha must be in [0, 1]
    msg = err(tmp_path, raw)
    assert "stages.pretrain trial (method.alpha=2" in msg and "seed=0" in msg
    assert "method.alpha" in msg and "less than or equal to 1" in msg


def test_unknown_config_key_in_axis(tmp_path: Path) -> None:
    raw = good()
    raw["stages"]["finetune"]["grid"] = {"data.labelled_scans": [1]}
    msg = err(tmp_path, raw)
    assert "data.labelled_scans: unknown key" in msg


def test_unknown_method_in_variant(tmp_path: Path) -> None:
    raw = good()
    raw["stages"]["pretrain"]["grid"] = {}
    raw["stages"]["pretrain"]["variants"] = {"x": {"method": {"name": "bimm"}}}
    msg = err(tmp_path, raw)
    assert "variant=x" in msg and "did you mean 'bim'" in msg


def test_not_a_mapping_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="expected a mapping at the top level"):
        load_sweep(write(tmp_path, [1, 2]))
    with pytest.raises(SpecError, match="no such file"):
        load_sweep(tmp_path / "nope.yaml")


def test_resources_no_node_can_satisfy(tmp_path: Path) -> None:
    raw = good()
    raw["stages"]["pretrain"]["resources"] = {"cpu": 1, "gpu": 0.5}
    plan = plan_sweep(parse_sweep(raw), source="s.yaml", root=tmp_path)
    nodes = [{"Alive": True, "Resources": {"CPU": 8.0}}, {"Alive": False, "Resources": {"GPU": 1}}]
    with pytest.raises(ResourceError, match=r"stages.pretrain asks for cpu=1, gpu=0.5.*CPU 8"):
        check_resources(plan, ["pretrain"], nodes)
    check_resources(plan, ["finetune"], nodes)  # finetune needs 1 CPU: fits
    nodes.append({"Alive": True, "Resources": {"CPU": 4.0, "GPU": 1.0}})
    check_resources(plan, ["pretrain"], nodes)


def test_unreachable_tracking_server_fails_fast() -> None:
    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(TrackingError, match=f"127.0.0.1:{port} cannot be reached"):
        check_tracking(f"http://127.0.0.1:{port}", timeout=2.0)
    assert time.monotonic() - t0 < 10  # no long retry loop (not a speed target)


def test_plain_file_store_refused(tmp_path: Path) -> None:
    with pytest.raises(TrackingError, match="sqlite:///"):
        check_tracking(str(tmp_path / "mlruns"))


def test_name_collision_with_a_different_spec(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    a = parse_sweep(good())
    exp = ensure_experiment(uri, "s", spec_hash(a))
    assert ensure_experiment(uri, "s", spec_hash(a)) == exp
    # adding a seed or a grid value keeps the identity: the sweep grows
    grown = good()
    grown["seeds"] = [0, 1, 2]
    grown["stages"]["pretrain"]["grid"]["method.alpha"] = [0.0, 0.5, 1.0]
    assert spec_hash(parse_sweep(grown)) == spec_hash(a)
    # a different base config is a different study
    other = good()
    other["base"]["train"]["epochs"] = 3
    b = parse_sweep(other)
    assert spec_hash(b) != spec_hash(a)
    with pytest.raises(TrackingError, match="already used .* by a different spec.*--extend"):
        ensure_experiment(uri, "s", spec_hash(b))
    assert ensure_experiment(uri, "s", spec_hash(b), extend=True) == exp


def test_tables_checked_against_the_plan_before_running(tmp_path: Path) -> None:
    from segssl.orchestrate.runner import run_sweep

    raw = good()
    raw["tables"] = [
        {
            "name": "t",
            "stage": "finetune",
            "rows": ["pretrain.method.alhpa"],
            "columns": [{"label": "LV", "by": "data.labeled_scans"}],
        }
    ]
    with pytest.raises(SpecError, match=r"sweep.yaml: tables: .*pretrain.method.alhpa"):
        run_sweep(write(tmp_path, raw), root=tmp_path, dry_run=True, check_data=False)
    assert not (tmp_path / "segssl-runs").exists()
    raw["tables"][0]["rows"] = ["pretrain.method.alpha"]
    out = run_sweep(write(tmp_path, raw), root=tmp_path, dry_run=True, check_data=False)
    assert out.stages["finetune"].planned == 2 * 2 * 2


def test_a_table_over_a_search_stage_passes_the_preflight(tmp_path: Path) -> None:
    """A search stage's trials exist only once it runs; its table (the lr chosen by validation)
    is checked against the stage's probe config, so good keys pass and bad keys are named."""
    from segssl.orchestrate.runner import check_plan_tables

    raw = {
        "name": "sel",
        "seeds": [0],
        "stages": {
            "search": {
                "config": {"stage": "finetune", "method": {"name": "baseline"}},
                "search": {"space": {"optim.lr": {"loguniform": [1e-4, 1e-2]}}, "num_samples": 4},
            },
            "grid": {  # with trials planned, a table on the search stage was refused
                "config": {"stage": "finetune", "method": {"name": "baseline"}},
                "grid": {"optim.lr": [1e-3, 1e-2]},
            },
        },
        "tables": [
            {
                "name": "t",
                "stage": "search",
                "rows": ["method.name"],
                "columns": ["data.labeled_scans"],
                "select": {"keys": ["optim.lr"], "metric": "val/dsc", "mode": "max"},
            }
        ],
    }
    src = write(tmp_path, raw)
    check_plan_tables(plan_sweep(load_sweep(src), source=str(src), root=tmp_path))
    raw["tables"][0]["select"]["keys"] = ["optim.lrr"]
    src = write(tmp_path, raw)
    with pytest.raises(SpecError, match=r"tables: .*optim.lrr"):
        check_plan_tables(plan_sweep(load_sweep(src), source=str(src), root=tmp_path))
