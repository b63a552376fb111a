"""Adapters on synthetic archives written in the real layouts: listing, labels, spacing."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from segssl.data import ADAPTERS, DataError, get_adapter, resolve_target
from segssl.data.adapters.acdc import read_info_cfg


def test_registry_names_and_did_you_mean(archives):
    assert set(ADAPTERS) == {
        "acdc",
        "promise12",
        "msd",
        "msd-prostate",
        "msd-spleen",
        "mmwhs-ct",
        "mmwhs-mr",
    }
    with pytest.raises(DataError, match=r"unknown dataset 'acdcc' \(did you mean 'acdc'\?\)"):
        get_adapter("acdcc", archives["acdc"])


def test_missing_root_named(tmp_path):
    with pytest.raises(DataError, match=r"nowhere: dataset root does not exist"):
        get_adapter("acdc", tmp_path / "nowhere")


def test_acdc_listing_phases_from_info_cfg(archives):
    ad = get_adapter("acdc", archives["acdc"])
    recs = ad.list_scans()
    assert len(recs) == 12  # 6 patients x (ED, ES)
    assert ad.class_names == ("RV", "Myo", "LV")
    first = [r for r in recs if r.subject == "patient001"]
    assert [r.phase for r in first] == ["ED", "ES"]
    info = read_info_cfg(archives["acdc"] / "training/patient001/Info.cfg")
    assert set(info) >= {"ED", "ES", "Group", "Height", "NbFrame", "Weight"}
    es = first[1]
    assert es.image.name == f"patient001_frame{int(info['ES']):02d}.nii.gz"
    assert es.label.name == f"patient001_frame{int(info['ES']):02d}_gt.nii.gz"
    assert first[0].image.name == "patient001_frame01.nii.gz"
    # header spacing as (through-plane, row, col)
    zooms = nib.load(str(es.image)).header.get_zooms()
    assert es.spacing == pytest.approx((zooms[2], zooms[0], zooms[1]))
    assert es.spacing[0] >= 5.0  # ACDC slice thickness 5-10 mm


def test_acdc_labels_are_real_values_and_map_to_classes(archives):
    ad = get_adapter("acdc", archives["acdc"])
    rec = ad.list_scans()[0]
    raw = np.asarray(nib.load(str(rec.label)).dataobj)
    assert set(np.unique(raw).tolist()) == {0, 1, 2, 3}
    scan = ad.read(rec)
    assert scan.image.dtype == np.float32 and scan.image.shape == raw.shape
    np.testing.assert_array_equal(scan.label, raw)  # ACDC values are already contiguous
    assert scan.spacing == pytest.approx(tuple(nib.load(str(rec.image)).header.get_zooms()))


def test_target_aliases_case_insensitive():
    names = ("RV", "Myo", "LV")
    assert resolve_target("lv", names) == 3
    assert resolve_target("RV", names) == 1
    assert resolve_target("myo", names) == 2
    assert resolve_target("all", names) is None
    with pytest.raises(DataError, match=r"data.target='lvv'.*did you mean 'lv'"):
        resolve_target("lvv", names)


def test_promise12_metaimage(archives):
    ad = get_adapter("promise12", archives["promise12"])
    recs = ad.list_scans()
    assert [r.scan_id for r in recs] == ["Case00", "Case01", "Case02"]
    assert (archives["promise12"] / "Case00.raw").is_file()
    assert recs[0].label.name == "Case00_segmentation.mhd"
    scan = ad.read(recs[0])
    assert scan.image.ndim == 3 and scan.label.shape == scan.image.shape
    assert set(np.unique(scan.label).tolist()) == {0, 1}
    # ITK's LPS world is turned into a RAS affine: spacing from the affine columns
    assert sorted(scan.spacing) == pytest.approx(sorted(recs[0].spacing))


def test_promise12_split_archive_with_test_data(archives, tmp_path):
    import shutil

    root = tmp_path / "promise"
    shutil.copytree(archives["promise12"], root / "TrainingData_Part1")
    test_dir = root / "TestData"
    test_dir.mkdir()
    for ext in ("mhd", "raw"):  # test cases reuse the names, without segmentations
        shutil.copy(root / f"TrainingData_Part1/Case00.{ext}", test_dir / f"Case00.{ext}")
    recs = get_adapter("promise12", root).list_scans()
    assert [r.scan_id for r in recs] == ["Case00", "Case01", "Case02"]
    assert all(r.image.parent.name == "TrainingData_Part1" for r in recs)
    (root / "TrainingData_Part1/Case01_segmentation.mhd").unlink()
    with pytest.raises(DataError, match=r"Case01_segmentation\.mhd: missing segmentation"):
        get_adapter("promise12", root).list_scans()


def test_msd_prostate_4d_channel_and_dataset_json(archives):
    root = archives["msd-prostate"]
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["modality"] == {"0": "T2", "1": "ADC"}
    ad = get_adapter("msd-prostate", root)
    assert ad.class_names == ("PZ", "TZ") and ad.label_values == (1, 2)
    recs = ad.list_scans()
    assert len(recs) == meta["numTraining"] == 3
    assert not any(r.image.name.startswith("._") for r in recs)  # tar junk ignored
    assert list(root.glob("imagesTr/._*"))  # ... although it is there
    img4d = nib.load(str(recs[0].image))
    assert img4d.ndim == 4 and img4d.shape[3] == 2
    t2 = get_adapter("msd-prostate", root, modality="t2").read(recs[0])
    adc = get_adapter("msd-prostate", root, modality=1).read(recs[0])
    np.testing.assert_allclose(t2.image, np.asarray(img4d.dataobj)[..., 0])
    np.testing.assert_allclose(adc.image, np.asarray(img4d.dataobj)[..., 1])
    assert set(np.unique(t2.label).tolist()) == {0, 1, 2}
    with pytest.raises(DataError, match=r"unknown modality.*did you mean 'ADC'"):
        get_adapter("msd-prostate", root, modality="ADCC")


def test_msd_generic_and_preset_name_check(archives):
    ad = get_adapter("msd", archives["msd-spleen"])
    assert ad.class_names == ("spleen",)
    scan = ad.read(ad.list_scans()[0])
    assert scan.image.min() < -500 and scan.image.max() > 100  # Hounsfield units
    with pytest.raises(DataError, match=r"name 'Spleen', expected 'Prostate'"):
        get_adapter("msd-prostate", archives["msd-spleen"])
    # one modality: its index or name is accepted, another one is an error (not ignored)
    assert get_adapter("msd-spleen", archives["msd-spleen"], modality="ct").channel is None
    with pytest.raises(DataError, match=r"data.modality='ADC': unknown modality.*\['CT'\]"):
        get_adapter("msd-spleen", archives["msd-spleen"], modality="ADC")
    with pytest.raises(DataError, match=r"data.modality=1: no such channel.*\{0: 'CT'\}"):
        get_adapter("msd", archives["msd-spleen"], modality=1)


@pytest.mark.parametrize("name,mod", [("mmwhs-ct", "ct"), ("mmwhs-mr", "mr")])
def test_mmwhs_values_mapped_to_contiguous(archives, name, mod):
    ad = get_adapter(name, archives[name])
    recs = ad.list_scans()
    assert [r.scan_id for r in recs] == [f"{mod}_train_{n}" for n in (1001, 1002, 1003)]
    assert recs[0].label.name == f"{mod}_train_1001_label.nii.gz"
    raw = np.asarray(nib.load(str(recs[0].label)).dataobj)
    assert set(np.unique(raw).tolist()) == {0, 205, 420, 500, 550, 600, 820, 850}
    scan = ad.read(recs[0])
    assert set(np.unique(scan.label).tolist()) == set(range(8))
    for index, value in enumerate(ad.label_values, start=1):
        np.testing.assert_array_equal(scan.label == index, raw == value)
    assert ad.class_names == ("Myo", "LA", "LV", "RA", "RV", "AA", "PA")
    _check_spacing(recs[0], scan)


def _check_spacing(rec, scan) -> None:
    """Record spacing is the header's (through-plane, row, col); read spacing is per stored axis."""
    zooms = nib.load(str(rec.image)).header.get_zooms()[:3]
    assert rec.spacing == pytest.approx((zooms[2], zooms[0], zooms[1]))
    assert scan.spacing == pytest.approx(zooms)


@pytest.mark.parametrize("name", ["msd-spleen", "msd-prostate"])
def test_msd_spacing(archives, name):
    ad = get_adapter(name, archives[name])
    rec = ad.list_scans()[0]
    _check_spacing(rec, ad.read(rec))


@pytest.mark.parametrize(
    "meta,pattern",
    [
        ([1, 2], r"expected a JSON object .* got a list"),
        (
            {"labels": {"0": "bg", "1": "x"}, "modality": ["CT"], "training": []},
            r"'modality' must map integer strings to names .*got \['CT'\]",
        ),
        (
            {"labels": {"0": "bg", "one": "x"}, "modality": {"0": "CT"}, "training": []},
            r"'labels' must map integer strings to names .*'one'",
        ),
        (
            {"labels": {"0": "bg", "1": "x"}, "modality": {}, "training": []},
            r"'modality' is empty",
        ),
        (
            {"labels": {"0": "bg", "1": "x"}, "modality": {"0": "CT"}, "training": {"a": 1}},
            r"'training' must be a list .* got a dict",
        ),
        (
            {"labels": {"0": "bg"}, "modality": {"0": "CT"}, "training": []},
            r"'labels' must name background '0' and at least one class",
        ),
    ],
)
def test_malformed_dataset_json_is_a_named_error(tmp_path, meta, pattern):
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"dataset\.json: " + pattern):
        get_adapter("msd", tmp_path)
