"""build_data: streams, volumes, binary targets, reproducible sampling, G^D batches, errors."""

from __future__ import annotations

import json
from itertools import islice

import numpy as np
import pytest
import torch

from segssl.config import DataConfig
from segssl.data import DataError, build_data, cache_dir_for, partition_labels
from segssl.data.preprocess import load_manifest, open_scan


def _cfg(root, tmp_path, **kw) -> DataConfig:
    base = dict(
        dataset="acdc",
        root=str(root),
        cache=str(tmp_path / "cache"),
        preprocess={"spacing": (2.0, 2.0), "size": (48, 48)},
        split={"sizes": (4, 1, 1), "seed": 0},
        labeled_scans=2,
        batch_size=4,
        unlabeled_batch_size=6,
    )
    base.update(kw)
    return DataConfig(**base)


def _take(it, n):
    return [
        {k: (v.clone() if torch.is_tensor(v) else list(v)) for k, v in b.items()}
        for b in islice(it, n)
    ]


def test_bundle_layout(archives, tmp_path):
    b = build_data(
        _cfg(archives["acdc"], tmp_path),
        seed=0,
        labeled=True,
        unlabeled=True,
        workdir=tmp_path / "run",
    )
    try:
        assert b.class_names == ("RV", "Myo", "LV") and b.num_classes == 4
        lab = next(b.labeled)
        assert lab["image"].shape == (4, 1, 48, 48) and lab["image"].dtype == torch.float32
        assert lab["label"].shape == (4, 48, 48) and lab["label"].dtype == torch.int64
        assert lab["partition"].dtype == torch.int64 and lab["slice_index"].shape == (4,)
        assert set(lab["scan"]) <= set(b.split["labeled"])
        unl = next(b.unlabeled)
        assert "label" not in unl and unl["image"].shape == (6, 1, 48, 48)
        assert set(unl["scan"]) <= set(b.split["train"])
        assert len(b.val) == 2 and len(b.test) == 2  # one subject each, ED + ES
        v = b.val[0]
        assert v.image.dtype == np.float32 and v.label.dtype == np.int64
        assert v.image.shape == v.label.shape and v.image.shape[1:] == (48, 48)
        assert v.scan_id in b.split["val"] and v.spacing[0] >= 5.0
        saved = json.loads((tmp_path / "run" / "split.json").read_text())
        assert saved["fingerprint"] == b.split_fingerprint == b.split["fingerprint"]
        assert saved["data_fingerprint"] == b.data_fingerprint
        assert (
            b.data_fingerprint
            == load_manifest(cache_dir_for(_cfg(archives["acdc"], tmp_path)))["fingerprint"]
        )
        # a batch item equals the cached slice it names
        cache = cache_dir_for(_cfg(archives["acdc"], tmp_path))
        entry = next(s for s in load_manifest(cache)["scans"] if s["scan_id"] == lab["scan"][0])
        arr = open_scan(cache, entry)[int(lab["slice_index"][0])]
        np.testing.assert_array_equal(lab["image"][0, 0].numpy(), arr["image"].astype(np.float32))
        np.testing.assert_array_equal(lab["label"][0].numpy(), arr["label"])
        n = entry["slices"]
        part = partition_labels(n, 3)[int(lab["slice_index"][0])]
        assert int(lab["partition"][0]) == part
    finally:
        b.close()


def test_cache_dir_from_segssl_data_prepare_is_used_as_is(archives, tmp_path):
    from segssl.data import prepare

    cfg = _cfg(archives["acdc"], tmp_path, cache=str(tmp_path / "prepared"))
    prepare("acdc", archives["acdc"], tmp_path / "prepared", cfg.preprocess)
    assert cache_dir_for(cfg) == tmp_path / "prepared"
    b = build_data(cfg, seed=0, labeled=True, unlabeled=False)
    assert b.data_fingerprint == load_manifest(tmp_path / "prepared")["fingerprint"]
    assert {p.name for p in (tmp_path / "prepared").iterdir()} == {"manifest.json", "scans"}
    # a cache root: one cache per dataset and settings
    root_cfg = _cfg(archives["acdc"], tmp_path, cache=str(tmp_path / "root"))
    other = _cfg(
        archives["acdc"],
        tmp_path,
        cache=str(tmp_path / "root"),
        preprocess={"spacing": (2.0, 2.0), "size": (32, 32)},
    )
    assert cache_dir_for(root_cfg).parent == cache_dir_for(other).parent == tmp_path / "root"
    assert cache_dir_for(root_cfg) != cache_dir_for(other)
    assert cache_dir_for(root_cfg).name.startswith("acdc-")
    # two archives of one dataset under one cache root: two caches, never one rebuilt in turn
    # (a loader of the first run would otherwise open the second archive's files mid-run)
    second = _cfg(tmp_path / "another-acdc", tmp_path, cache=str(tmp_path / "root"))
    assert cache_dir_for(second).parent == tmp_path / "root"
    assert cache_dir_for(second) != cache_dir_for(root_cfg)


def test_streams_off_and_labeled_split_independent_of_run_seed(archives, tmp_path):
    cfg = _cfg(archives["acdc"], tmp_path)
    a = build_data(cfg, seed=0, labeled=False, unlabeled=True)
    b = build_data(cfg, seed=7, labeled=True, unlabeled=False)
    assert a.labeled is None and b.unlabeled is None
    assert a.split["labeled"] == b.split["labeled"]


def test_binary_target(archives, tmp_path):
    full = build_data(_cfg(archives["acdc"], tmp_path), seed=3, labeled=True, unlabeled=False)
    lv = build_data(
        _cfg(archives["acdc"], tmp_path, target="LV"), seed=3, labeled=True, unlabeled=False
    )
    assert lv.class_names == ("LV",) and lv.num_classes == 2
    for bf, bl in zip(islice(full.labeled, 3), islice(lv.labeled, 3), strict=True):
        assert bf["scan"] == bl["scan"]
        torch.testing.assert_close(bl["label"], (bf["label"] == 3).long())
    assert set(np.unique(lv.test[0].label).tolist()) <= {0, 1}
    np.testing.assert_array_equal(lv.test[0].label, (full.test[0].label == 1 + 2).astype(np.int64))
    rv = build_data(
        _cfg(archives["acdc"], tmp_path, target="rv"), seed=3, labeled=True, unlabeled=False
    )
    assert rv.class_names == ("RV",)


def test_sampling_reproducible_and_seeded(archives, tmp_path):
    cfg = _cfg(archives["acdc"], tmp_path)
    runs = [build_data(cfg, seed=s, labeled=True, unlabeled=True) for s in (11, 11, 12)]
    a, b, c = ([*_take(r.labeled, 3), *_take(r.unlabeled, 3)] for r in runs)
    for x, y in zip(a, b, strict=True):
        assert x["scan"] == y["scan"]
        torch.testing.assert_close(x["image"], y["image"])
        torch.testing.assert_close(x["slice_index"], y["slice_index"])
    assert any(
        x["scan"] != z["scan"] or not torch.equal(x["slice_index"], z["slice_index"])
        for x, z in zip(a, c, strict=True)
    )


def test_workers_give_the_same_batches(archives, tmp_path):
    b0 = build_data(_cfg(archives["acdc"], tmp_path), seed=4, labeled=True, unlabeled=False)
    b2 = build_data(
        _cfg(archives["acdc"], tmp_path, num_workers=2), seed=4, labeled=True, unlabeled=False
    )
    try:
        for x, y in zip(_take(b0.labeled, 4), _take(b2.labeled, 4), strict=True):
            assert x["scan"] == y["scan"]
            torch.testing.assert_close(x["image"], y["image"])
            torch.testing.assert_close(x["label"], y["label"])
    finally:
        b2.close()


def test_partition_sampler_structure(archives, tmp_path):
    cfg = _cfg(
        archives["acdc"], tmp_path, partition_sampler=True, partitions=3, unlabeled_batch_size=6
    )
    b = build_data(cfg, seed=0, labeled=False, unlabeled=True)
    slices = {s["scan_id"]: s["slices"] for s in load_manifest(cache_dir_for(cfg))["scans"]}
    seen_volumes = set()
    for batch in islice(b.unlabeled, 20):
        assert batch["partition"].tolist() == [0, 1, 2, 0, 1, 2]  # m = 2 volumes x S = 3
        scans = batch["scan"]
        assert scans[0] == scans[1] == scans[2] and scans[3] == scans[4] == scans[5]
        assert scans[0] != scans[3]  # distinct volumes within a batch
        for i, scan in enumerate(scans):
            z = int(batch["slice_index"][i])
            assert partition_labels(slices[scan], 3)[z] == i % 3
        seen_volumes.update(scans)
    assert len(seen_volumes) > 4  # drawn across the training volumes


def test_more_partitions_than_slices_names_the_volume(archives, tmp_path):
    cfg = _cfg(
        archives["acdc"], tmp_path, partition_sampler=True, partitions=100, unlabeled_batch_size=100
    )
    with pytest.raises(
        DataError, match=r"data.partitions=100: scans \['patient\d+_E[DS] \(\d+ slices\)'"
    ):
        build_data(cfg, seed=0, labeled=False, unlabeled=True)


def test_partition_sampler_batch_not_a_multiple_of_s(archives, tmp_path):
    # Chaitanya Table 5: a batch of 40 with S = 3 or 6; here 8 with S = 3: 3 volumes, the last
    # one gives 2 of its 3 partitions (a random pair)
    cfg = _cfg(
        archives["acdc"], tmp_path, partition_sampler=True, partitions=3, unlabeled_batch_size=8
    )
    b = build_data(cfg, seed=0, labeled=False, unlabeled=True)
    tails = set()
    for batch in islice(b.unlabeled, 30):
        parts = batch["partition"].tolist()
        assert len(parts) == 8 and parts[:6] == [0, 1, 2, 0, 1, 2]
        assert parts[6] < parts[7]
        assert len(set(batch["scan"][6:])) == 1 and batch["scan"][6] not in batch["scan"][:6]
        tails.add(tuple(parts[6:]))
    assert tails == {(0, 1), (0, 2), (1, 2)}


@pytest.mark.parametrize(
    "kw,pattern",
    [
        (dict(root="/nonexistent/acdc"), r"data.root='/nonexistent/acdc': no such directory"),
        (dict(dataset="acdcc"), r"unknown dataset 'acdcc' \(did you mean 'acdc'\?\)"),
        (dict(target="lvv"), r"data.target='lvv': unknown class"),
        (dict(labeled_scans=9), r"asks for 9 labeled scans but the training set has only 8"),
        (dict(split={"sizes": (5, 1, 1)}), r"needs 7 subjects but the dataset has only 6"),
        (
            dict(partition_sampler=True, unlabeled_batch_size=2),
            r"unlabeled_batch_size=2 must be at least data.partitions=3",
        ),
    ],
)
def test_bad_config_fails_before_any_work(archives, tmp_path, kw, pattern):
    root = kw.pop("root", archives["acdc"])
    cfg = _cfg(root, tmp_path, **kw)
    with pytest.raises(DataError, match=pattern):
        build_data(cfg, seed=0, labeled=True, unlabeled=True)
    assert not (tmp_path / "cache").exists()  # nothing was prepared


def test_other_datasets_end_to_end(archives, tmp_path):
    for name, target in (
        ("msd-prostate", "tz"),
        ("promise12", "all"),
        ("mmwhs-ct", "aa"),
        ("msd-spleen", "spleen"),
    ):
        cfg = _cfg(
            archives[name],
            tmp_path / name,
            dataset=name,
            target=target,
            split={"sizes": (2, 0, 1)},
            labeled_scans=1,
        )
        b = build_data(cfg, seed=0, labeled=True, unlabeled=True)
        batch = next(b.labeled)
        assert batch["image"].shape == (4, 1, 48, 48)
        assert int(batch["label"].max()) < b.num_classes
        assert len(b.test) == 1 and b.test[0].image.shape[1:] == (48, 48)


def test_volume_spacing_is_in_array_axis_order_for_mm_metrics(archives, tmp_path):
    """Volume.spacing (dz, dy, dx) matches the (D, H, W) arrays: surface distances in mm between
    two structures are the same on the cached volume as on the stored NIfTI with its own zooms,
    whatever the stored orientation (the phantoms are stored flipped / permuted)."""
    from segssl.data import get_adapter
    from segssl.metrics import asd, hd95

    cfg = _cfg(
        archives["acdc"],
        tmp_path,
        preprocess={"spacing": None, "size": (64, 64)},  # native spacing, pad only
        split={"sizes": (4, 0, 2), "seed": 0},
    )
    b = build_data(cfg, seed=0, labeled=False, unlabeled=False)
    ad = get_adapter("acdc", archives["acdc"])
    records = {r.scan_id: r for r in ad.list_scans()}
    for v in b.test:
        raw = ad.read(records[v.scan_id])
        assert sorted(v.spacing) == pytest.approx(sorted(raw.spacing))
        assert v.spacing[0] == pytest.approx(max(raw.spacing))  # slices along the coarse axis
        lv_raw, rv_raw = (raw.label == 3).astype(np.int64), (raw.label == 1).astype(np.int64)
        lv, rv = (v.label == 3).astype(np.int64), (v.label == 1).astype(np.int64)
        assert hd95(lv, rv, 1, v.spacing) == pytest.approx(hd95(lv_raw, rv_raw, 1, raw.spacing))
        assert asd(lv, rv, 1, v.spacing) == pytest.approx(asd(lv_raw, rv_raw, 1, raw.spacing))
        # the check can fail: the reversed axis order gives other distances
        assert asd(lv, rv, 1, v.spacing[::-1]) != pytest.approx(asd(lv, rv, 1, v.spacing))


def test_prepared_cache_is_never_rebuilt_for_other_settings_or_data(archives, tmp_path):
    """A cache from `segssl data prepare` named by data.cache is not overwritten by a run with
    other settings (another run may be streaming from it)."""
    from segssl.config import PreprocessConfig
    from segssl.data import prepare

    prepared = tmp_path / "prepared"
    prepare("acdc", archives["acdc"], prepared, PreprocessConfig(spacing=(2.0, 2.0), size=(32, 32)))
    before = {p: p.stat().st_mtime_ns for p in prepared.rglob("*")}
    cfg = _cfg(archives["acdc"], tmp_path, cache=str(prepared))  # size (48, 48)
    with pytest.raises(
        DataError,
        match=r"prepared for other data: data.preprocess.size=\[48, 48\] \(cache: \[32, 32\]\)",
    ):
        build_data(cfg, seed=0, labeled=True, unlabeled=False)
    other = _cfg(
        archives["promise12"],
        tmp_path,
        dataset="promise12",
        cache=str(prepared),
        preprocess={"spacing": (2.0, 2.0), "size": (32, 32)},
        split={"sizes": (2, 0, 1)},
        labeled_scans=1,
    )
    with pytest.raises(DataError, match=r"data.dataset='promise12' \(cache: 'acdc'\)"):
        build_data(other, seed=0, labeled=True, unlabeled=False)
    assert {p: p.stat().st_mtime_ns for p in prepared.rglob("*")} == before
    same = _cfg(
        archives["acdc"],
        tmp_path,
        cache=str(prepared),
        preprocess={"spacing": (2.0, 2.0), "size": (32, 32)},
    )
    assert build_data(same, seed=0, labeled=False, unlabeled=False).test[0].image.shape[1:] == (
        32,
        32,
    )
