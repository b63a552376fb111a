"""Profiles (``--profile smoke|paper``): overrides applied, bad ones refused before any work,
smoke and paper never share an experiment or a trial key, phantoms written once."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from segssl.cli import app
from segssl.orchestrate.plan import plan_sweep
from segssl.orchestrate.profiles import ProfileError, ensure_phantoms, phantom_dir
from segssl.orchestrate.spec import SpecError, load_sweep, parse_sweep

runner = CliRunner()


def sweep() -> dict[str, Any]:
    return {
        "name": "s",
        "seeds": [0, 1],
        "base": {"data": {"root": "data/acdc"}, "train": {"epochs": 50, "iters_per_epoch": 200}},
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
        "profiles": {
            "paper": {},
            "smoke": {
                "phantoms": {"dataset": "acdc", "scans": 4, "size": 32},
                "seeds": [0],
                "base": {"train.epochs": 2, "model": {"base_width": 4}},
                "stages": {
                    "pretrain": {"config": {"method.k": 5}},
                    "finetune": {"config": {"method": {"w_dice": 1.0}}},
                },
            },
        },
    }


def _plan(spec: Any, tmp_path: Path) -> Any:
    return plan_sweep(spec, source="s.yaml", storage=tmp_path / "store", root=tmp_path)


def test_smoke_overrides_apply_and_paper_is_the_file(tmp_path: Path) -> None:
    paper = parse_sweep(sweep(), profile="paper")
    smoke = parse_sweep(sweep(), profile="smoke")
    assert parse_sweep(sweep()) == paper  # no profile: the paper's
    assert (paper.name, smoke.name) == ("s", "s-smoke")
    pp, sp = _plan(paper, tmp_path), _plan(smoke, tmp_path)
    pre = sp.trials["pretrain"][0].config
    assert pre.train.epochs == 2 and pre.train.iters_per_epoch == 200
    assert pre.model.base_width == 4 and pre.method.k == 5
    assert pre.data.root == str(tmp_path / phantom_dir(smoke.phantoms))
    assert sp.trials["finetune"][0].config.method.w_dice == 1.0
    assert pp.trials["pretrain"][0].config.train.epochs == 50
    assert len(sp.trials["finetune"]) == 4 and len(pp.trials["finetune"]) == 8
    keys = {t.key for t in pp.all_trials()}
    assert not keys & {t.key for t in sp.all_trials()}  # the two never share a trial


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (
            lambda r: r["profiles"]["smoke"]["base"].update({"train.epochz": 1}),
            r"profiles.smoke.base: overrides 'train.epochz', which the run config does not have"
            r".*did you mean 'train.epochs'",
        ),
        (
            lambda r: r["profiles"]["smoke"]["stages"]["pretrain"]["config"].update(
                {"method.kk": 1}
            ),
            r"profiles.smoke.stages.pretrain.config: overrides 'method.kk'",
        ),
        (
            lambda r: r["profiles"]["smoke"]["stages"].update({"nope": {}}),
            r"profiles.smoke.stages.nope: names no stage of the sweep \(stages: pretrain, "
            r"finetune\)",
        ),
        (
            lambda r: r["profiles"]["smoke"]["stages"]["finetune"].update(
                {"grid": {"data.target": ["lv"]}}
            ),
            r"'data.target' is no grid entry of the stage \(it has: data.labeled_scans\)",
        ),
        (
            lambda r: r["profiles"]["smoke"].update({"epochs": 1}),
            r"profiles.smoke: unknown key\(s\) \['epochs'\]",
        ),
        (lambda r: r["profiles"].update({"quick": {}}), r"profiles.quick: unknown profile"),
        (
            lambda r: r["profiles"]["paper"].update({"phantoms": {}}),
            r"the paper profile uses the real archive",
        ),
    ],
)
def test_bad_profiles_are_named(mutate: Any, match: str) -> None:
    raw = copy.deepcopy(sweep())
    mutate(raw)
    with pytest.raises(ProfileError, match=match):
        parse_sweep(raw, source="s.yaml", profile="smoke")


def test_unknown_profile_and_missing_section(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"unknown profile 'fast'; expected one of smoke, paper"):
        parse_sweep(sweep(), source="s.yaml", profile="fast")
    raw = sweep()
    del raw["profiles"]
    with pytest.raises(SpecError, match=r"--profile smoke: the sweep has no 'profiles: \{smoke"):
        parse_sweep(raw, source="s.yaml", profile="smoke")
    assert parse_sweep(raw, profile="paper").name == "s"
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(sweep()))
    for cmd in (["sweep", str(path), "--dry-run"], ["table", str(path)]):
        res = runner.invoke(app, [*cmd, "--profile", "fast"])
        assert res.exit_code == 2 and "unknown profile 'fast'" in res.output, res.output


def test_phantoms_are_written_once_in_the_real_layout(tmp_path: Path) -> None:
    spec = load_sweep(_write(tmp_path), profile="smoke")
    out = ensure_phantoms(spec.phantoms, tmp_path)
    assert out == tmp_path / "segssl-runs/phantoms/acdc-4x32-s0"
    files = sorted(p.name for p in (out / "training").iterdir())
    assert files[:2] == ["patient001", "patient002"]
    stamp = (out / ".complete").stat().st_mtime_ns
    assert ensure_phantoms(spec.phantoms, tmp_path) == out  # cached: not rewritten
    assert (out / ".complete").stat().st_mtime_ns == stamp


def _write(tmp_path: Path) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(sweep()))
    return path


def test_phantoms_of_further_datasets(tmp_path: Path) -> None:
    raw = sweep()
    raw["profiles"]["smoke"]["phantoms"]["also"] = ["mmwhs-mr"]
    spec = parse_sweep(raw, source="s.yaml", profile="smoke")
    ensure_phantoms(spec.phantoms, tmp_path)
    other = tmp_path / "segssl-runs/phantoms/mmwhs-mr-4x32-s0"
    assert (other / ".complete").is_file() and any((other / "mr_train").iterdir())
    raw["profiles"]["smoke"]["phantoms"]["also"] = "mmwhs-mr"
    with pytest.raises(ProfileError, match=r"phantoms.also: expected a list of dataset names"):
        parse_sweep(raw, source="s.yaml", profile="smoke")


def test_a_sweep_with_its_own_storage_keeps_smoke_apart(tmp_path: Path) -> None:
    """``storage:`` set in the file: the smoke run gets its own (plan.json, the driver lock and the
    trial folders of the two profiles are never one folder)."""
    spec = sweep()
    spec["storage"] = str(tmp_path / "runs" / "s")
    paper = _plan_own(parse_sweep(copy.deepcopy(spec), profile="paper"), tmp_path)
    smoke = _plan_own(parse_sweep(copy.deepcopy(spec), profile="smoke"), tmp_path)
    assert paper.storage == tmp_path / "runs" / "s"
    assert smoke.storage == tmp_path / "runs" / "s-smoke"


def _plan_own(spec: Any, tmp_path: Path) -> Any:
    return plan_sweep(spec, source="s.yaml", root=tmp_path)


@pytest.mark.parametrize("profile", ["paper", "smoke"])
def test_an_invalid_base_value_is_named_not_a_profile_key_that_exists(
    profile: str, tmp_path: Path
) -> None:
    """An invalid value in the file's own config (an HD95 variant that does not exist) made the
    profile check fall back to the keys written in the file, so it called the smoke profile's
    real override 'model.base_width' unknown and hid the actual mistake; the planner now names
    the key and the expected values."""
    raw = sweep()
    raw["base"]["metrics"] = {"hd95": "maxx"}
    with pytest.raises(SpecError, match=r"metrics.hd95: Input should be 'max' or 'pooled'"):
        _plan(parse_sweep(raw, profile=profile), tmp_path)


def test_a_variant_supplying_the_method_still_gets_its_overrides_checked() -> None:
    """A stage whose method comes from its variants resolves per variant: the profile's override
    of a key the variants' configs have is accepted, a typo is named."""
    raw = sweep()
    pre = raw["stages"]["pretrain"]
    pre["config"] = {"stage": "pretrain"}
    del pre["grid"]
    pre["variants"] = {"IIC": {"method": {"name": "iic"}}, "Ours": {"method": {"name": "bim"}}}
    raw["profiles"]["smoke"]["stages"]["pretrain"] = {"config": {"method.k": 5}}
    assert parse_sweep(copy.deepcopy(raw), profile="smoke").name == "s-smoke"
    raw["profiles"]["smoke"]["stages"]["pretrain"] = {"config": {"method.kk": 5}}
    with pytest.raises(ProfileError, match=r"overrides 'method.kk'.*did you mean 'method.k'"):
        parse_sweep(raw, profile="smoke")


@pytest.mark.parametrize("profile", ["paper", "smoke"])
@pytest.mark.parametrize(
    ("where", "edit"),
    [
        ("stages.pretrain.variants.IIC", lambda st, raw: st.update(variants={"IIC": 5})),
        ("stages.pretrain.config", lambda st, raw: st.update(config=5)),
        ("stages.pretrain", lambda st, raw: raw["stages"].update(pretrain=5)),
        ("base", lambda st, raw: raw.update(base=5)),
    ],
    ids=["variant", "config", "stage", "base"],
)
def test_a_part_that_is_no_mapping_is_named_in_a_sweep_with_profiles(
    profile: str, where: str, edit: Any
) -> None:
    """A stage, config, base or variant written as a value (``IIC: 5``) in a sweep with
    profiles is named (the profiles' override check read it and crashed: AttributeError 'int'
    object has no attribute 'items' / 'get')."""
    raw = sweep()
    edit(raw["stages"]["pretrain"], raw)
    with pytest.raises(
        SpecError, match=rf"s.yaml: {re.escape(where)}: expected a mapping, got int"
    ):
        parse_sweep(raw, profile=profile, source="s.yaml")
