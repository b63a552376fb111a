"""Planner: trial counts, stable content-addressed keys, parent links, zipped axes, run names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from segssl.orchestrate.plan import plan_sweep, trial_key
from segssl.orchestrate.spec import parse_sweep


def table3_like() -> dict[str, Any]:
    return {
        "name": "t3",
        "seeds": [0, 1, 2],
        "base": {"train": {"epochs": 2}},
        "stages": {
            "pretrain": {
                "config": {"stage": "pretrain", "method": {"name": "bim"}},
                "grid": {"method.alpha": [0, 0.25, 0.5, 0.75, 1.0]},
            },
            "finetune": {
                "from": "pretrain",
                "config": {"stage": "finetune", "method": {"name": "finetune"}},
                "grid": {"data.labeled_scans": [1, 2, 4], "data.target": ["lv", "rv", "myo"]},
            },
        },
    }


def test_counts_and_parent_links(tmp_path: Path) -> None:
    plan = plan_sweep(parse_sweep(table3_like()), storage=tmp_path / "store", root=tmp_path)
    pre, ft = plan.trials["pretrain"], plan.trials["finetune"]
    assert len(pre) == 5 * 3  # alphas x seeds: each pre-training once
    assert len(ft) == 5 * 3 * 3 * 3  # x labeled counts x targets
    assert len({t.key for t in pre + ft}) == len(pre) + len(ft)
    by_key = {t.key: t for t in pre}
    for t in ft:
        parent = by_key[t.parent_key]
        assert t.seed == parent.seed  # a derived stage inherits its parent's seed
        assert t.config.train.init_from == str(
            tmp_path / "store" / "trials" / parent.key / "checkpoints" / "last.pt"
        )
        assert t.params()["pretrain.method.alpha"] == parent.config.method.alpha
    # every pre-training feeds 3 x 3 fine-tunings
    fed = [sum(1 for t in ft if t.parent_key == p.key) for p in pre]
    assert fed == [9] * 15


def test_keys_stable_and_independent_of_storage_and_order(tmp_path: Path) -> None:
    a = plan_sweep(parse_sweep(table3_like()), storage=tmp_path / "a", root=tmp_path)
    raw = table3_like()
    raw["stages"] = dict(reversed(list(raw["stages"].items())))  # other YAML order
    raw["seeds"] = [2, 1, 0]
    b = plan_sweep(parse_sweep(raw), storage=tmp_path / "b", root=tmp_path)
    assert {t.key for t in a.all_trials()} == {t.key for t in b.all_trials()}
    # the key is the hash of resolved config + parent key: recomputable from a trial
    for t in a.trials["finetune"][:5]:
        assert trial_key(t.config, t.parent_key) == t.key


def test_key_changes_with_config_seed_and_parent(tmp_path: Path) -> None:
    plan = plan_sweep(parse_sweep(table3_like()), root=tmp_path)
    ft = plan.trials["finetune"]
    same_cfg_other_parent = [
        t
        for t in ft
        if t.seed == 0 and t.config.data.labeled_scans == 1 and t.config.data.target == "lv"
    ]
    assert len(same_cfg_other_parent) == 5  # one per alpha, identical own config
    assert len({t.key for t in same_cfg_other_parent}) == 5
    raw = table3_like()
    raw["stages"]["finetune"]["config"]["optim"] = {"lr": 2e-7}
    other = plan_sweep(parse_sweep(raw), root=tmp_path)
    assert {t.key for t in other.trials["pretrain"]} == {t.key for t in plan.trials["pretrain"]}
    assert not {t.key for t in other.trials["finetune"]} & {t.key for t in ft}


def test_adding_a_seed_keeps_existing_keys(tmp_path: Path) -> None:
    raw = table3_like()
    before = {t.key for t in plan_sweep(parse_sweep(raw), root=tmp_path).all_trials()}
    raw["seeds"] = [0, 1, 2, 3]
    after = {t.key for t in plan_sweep(parse_sweep(raw), root=tmp_path).all_trials()}
    assert before < after and len(after - before) == 5 + 5 * 9


def test_zip_variants_and_stage_seeds(tmp_path: Path) -> None:
    raw = {
        "name": "z",
        "seeds": [0],
        "stages": {
            "pre": {
                "config": {"stage": "pretrain", "method": {"name": "bim"}},
                "variants": {"only-mi": {"method.w_cc": 0}, "mi+cc": {}},
                "zip": [{"method.k": [10, 40], "method.heads": [1, 3]}],
            },
            "ft": {
                "from": "pre",
                "seeds": [5, 6],
                "config": {"stage": "finetune", "method": {"name": "finetune"}},
            },
        },
    }
    plan = plan_sweep(parse_sweep(raw), root=tmp_path)
    pre = plan.trials["pre"]
    assert len(pre) == 2 * 2  # variants x zipped pairs (not 2 x 2 x 2)
    assert {(t.config.method.k, t.config.method.heads) for t in pre} == {(10, 1), (40, 3)}
    only_mi = [t for t in pre if t.variant == "only-mi"]
    assert {t.config.method.w_cc for t in only_mi} == {0}
    assert all(t.params()["variant"] == t.variant for t in pre)
    ft = plan.trials["ft"]
    assert len(ft) == 4 * 2 and {t.seed for t in ft} == {5, 6}
    assert ft[0].params()["pre.variant"] in {"only-mi", "mi+cc"}


def test_readable_run_names(tmp_path: Path) -> None:
    plan = plan_sweep(parse_sweep(table3_like()), root=tmp_path)
    pre = next(t for t in plan.trials["pretrain"] if t.config.method.alpha == 0.5 and t.seed == 2)
    assert pre.name == "bim alpha=0.5 | seed 2"
    ft = next(
        t
        for t in plan.trials["finetune"]
        if t.parent_key == pre.key
        and t.config.data.labeled_scans == 1
        and t.config.data.target == "rv"
    )
    assert ft.name == "bim alpha=0.5 > finetune | rv | 1 scan | seed 2"


def test_relative_data_root_resolved_against_root(tmp_path: Path) -> None:
    raw = table3_like()
    raw["base"]["data"] = {"root": "data/acdc"}
    plan = plan_sweep(parse_sweep(raw), root=tmp_path)
    assert plan.trials["pretrain"][0].config.data.root == str(tmp_path / "data" / "acdc")
    assert plan.storage == tmp_path / "segssl-runs" / "t3"


def test_inherit_takes_the_parents_dataset(tmp_path: Path) -> None:
    import pytest

    from segssl.orchestrate.spec import SpecError

    raw = table3_like()
    raw["stages"]["pretrain"]["grid"] = {}
    raw["stages"]["pretrain"]["zip"] = [
        {"data.dataset": ["acdc", "mmwhs-mr"], "data.root": ["d/acdc", "d/mmwhs"]}
    ]
    raw["stages"]["finetune"]["grid"] = {"data.labeled_scans": [1, 2]}
    raw["stages"]["finetune"]["inherit"] = ["data.dataset", "data.root"]
    plan = plan_sweep(parse_sweep(raw), storage=tmp_path / "s", root=tmp_path)
    parents = {t.key: t for t in plan.trials["pretrain"]}
    ft = plan.trials["finetune"]
    assert len(ft) == 2 * 3 * 2  # each parent fine-tuned on its own dataset only
    for t in ft:
        p = parents[t.parent_key]
        assert (t.config.data.dataset, t.config.data.root) == (
            p.config.data.dataset,
            p.config.data.root,
        )
        assert t.config.stage == "finetune"  # the stage's own config still applies
    assert {t.config.data.dataset for t in ft} == {"acdc", "mmwhs-mr"}
    raw["stages"]["finetune"]["inherit"] = ["data.datset"]
    with pytest.raises(SpecError, match="'data.datset' is not a key of the parent trial's config"):
        plan_sweep(parse_sweep(raw), storage=tmp_path / "s", root=tmp_path)
    raw["stages"]["pretrain"]["inherit"] = ["data.dataset"]
    with pytest.raises(SpecError, match="'inherit' takes keys from the parent trial: it needs"):
        parse_sweep(raw)


def test_run_names_of_a_dataset_zip_name_the_dataset_only(tmp_path: Path) -> None:
    """GMI's per-dataset zips (root, split, preprocess, crop, lr per dataset) made names like
    'entmin dataset=msd-spleen root=... split={...} preprocess={...} crop=64 rotation=10 ...'."""
    raw = table3_like()
    raw["stages"]["pretrain"]["grid"] = {}
    raw["stages"]["pretrain"]["zip"] = [
        {
            "data.dataset": ["acdc", "mmwhs-mr"],
            "data.root": ["d/acdc", "d/mmwhs"],
            "data.preprocess.size": [[256, 256], [240, 240]],
            "optim.lr": [1e-3, 3e-3],
        },
        {"method.k": [10, 40], "method.heads": [1, 3]},
    ]
    plan = plan_sweep(parse_sweep(raw), root=tmp_path)
    names = {t.name for t in plan.trials["pretrain"] if t.seed == 0}
    assert names == {
        "bim dataset=acdc k=10 heads=1 | seed 0",
        "bim dataset=mmwhs-mr k=10 heads=1 | seed 0",
        "bim dataset=acdc k=40 heads=3 | seed 0",
        "bim dataset=mmwhs-mr k=40 heads=3 | seed 0",
    }


def test_run_names_tell_apart_the_entries_of_a_zip(tmp_path: Path) -> None:
    """A zip naming its runs by the dataset alone (or by its scalars) still names the member
    that tells two entries apart: one dataset at two learning rates, two sizes at one crop."""
    raw = table3_like()
    raw["stages"]["pretrain"]["grid"] = {}
    raw["stages"]["pretrain"]["zip"] = [
        {
            "data.dataset": ["acdc", "acdc", "mmwhs-mr"],
            "data.root": ["d/acdc", "d/acdc", "d/mmwhs"],
            "optim.lr": [1e-3, 1e-4, 1e-3],
        }
    ]
    plan = plan_sweep(parse_sweep(raw), root=tmp_path)
    names = sorted(t.name for t in plan.trials["pretrain"] if t.seed == 0)
    assert names == [
        "bim dataset=acdc lr=0.0001 | seed 0",
        "bim dataset=acdc lr=0.001 | seed 0",
        "bim dataset=mmwhs-mr lr=0.001 | seed 0",
    ]
    raw["stages"]["pretrain"]["zip"] = [
        {"data.preprocess.size": [[64, 64], [96, 96]], "augment.crop": [32, 32]}
    ]
    plan = plan_sweep(parse_sweep(raw), root=tmp_path)
    names = sorted(t.name for t in plan.trials["pretrain"] if t.seed == 0)
    assert names == ["bim size=[64, 64] crop=32 | seed 0", "bim size=[96, 96] crop=32 | seed 0"]
    # every trial of a stage has its own name (the seed and the parent's name included)
    for trials in plan.trials.values():
        assert len({t.name for t in trials}) == len(trials)


def test_stage_waves_share_independent_stages_longest_and_parents_first(tmp_path: Path) -> None:
    from segssl.orchestrate.runner import stage_waves

    raw = {
        "name": "waves",
        "seeds": [0],
        "base": {"train": {"epochs": 2, "iters_per_epoch": 4}, "method": {"name": "baseline"}},
        "stages": {
            "short": {"config": {"stage": "finetune"}},
            "long": {"config": {"stage": "finetune", "train": {"epochs": 6}}},
            "pretrain": {"config": {"stage": "pretrain", "method": {"name": "bim"}}},
            "finetune": {
                "from": "pretrain",
                "config": {"stage": "finetune", "method": {"name": "finetune"}},
            },
            "big": {"config": {"stage": "finetune"}, "resources": {"cpu": 2}},
            "tune": {
                "search": {"space": {"optim.lr": {"loguniform": [1e-4, 1e-1]}}, "num_samples": 2}
            },
        },
    }
    plan = plan_sweep(parse_sweep(raw), storage=tmp_path / "store", root=tmp_path)
    # root stages of equal resources in one wave: the stage with children first (its children
    # wait for it), then the longest trials; other resources and a search run on their own;
    # children after their parents' wave
    assert stage_waves(plan) == [
        ["pretrain", "long", "short"],
        ["big"],
        ["tune"],
        ["finetune"],
    ]
    # the demo: bim pre-training first, then full supervision and the baseline; fine-tuning next
    from segssl.demo import demo_spec

    demo = plan_sweep(parse_sweep(demo_spec(str(tmp_path))), storage=tmp_path / "d", root=tmp_path)
    assert stage_waves(demo) == [["pretrain", "baseline", "full"], ["finetune"]]
