"""The preprocessed cache: reuse, rebuild, half-written detection, locking, bad input."""

from __future__ import annotations

import gzip
import json
import multiprocessing as mp
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segssl.config import PreprocessConfig
from segssl.data import DataError, prepare
from segssl.data.adapters import BaseAdapter
from segssl.data.preprocess import load_manifest, open_scan, validate_cache

CFG = PreprocessConfig(spacing=(2.0, 2.0), size=(48, 48))


def _state(cache: Path) -> dict[str, tuple[int, int]]:
    """mtime_ns and size of every file of a cache (to prove it was not touched)."""
    return {
        str(p.relative_to(cache)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in sorted(cache.rglob("*"))
        if p.is_file()
    }


def test_cache_contents_and_memmap(acdc_copy, tmp_path):
    out = prepare("acdc", acdc_copy, tmp_path / "c", CFG)
    m = validate_cache(out)
    assert m["num_scans"] == 12 and m["dataset"] == "acdc"
    assert m["class_names"] == ["RV", "Myo", "LV"]
    entry = m["scans"][0]
    src = entry["sources"]["image"]
    assert src["path"] == "training/patient001/patient001_frame01.nii.gz"
    assert len(src["sha256"]) == 64
    arr = open_scan(out, entry)
    assert isinstance(arr, np.memmap)
    assert arr["image"].dtype == np.float16 and arr["label"].dtype == np.uint8
    assert arr.shape == (entry["slices"],) and arr["image"].shape[1:] == (48, 48)
    assert entry["spacing"][1:] == pytest.approx([2.0, 2.0], rel=0.03)
    assert m["num_slices"] == sum(s["slices"] for s in m["scans"])
    assert sum(entry["label_voxels"]) == entry["slices"] * 48 * 48


def test_reuse_leaves_cache_untouched(acdc_copy, tmp_path):
    out = prepare("acdc", acdc_copy, tmp_path / "c", CFG)
    before, fp = _state(out), load_manifest(out)["fingerprint"]
    prepare("acdc", acdc_copy, out, CFG)
    assert _state(out) == before and load_manifest(out)["fingerprint"] == fp


def test_rebuild_on_changed_settings(acdc_copy, tmp_path):
    out = prepare("acdc", acdc_copy, tmp_path / "c", CFG)
    fp = load_manifest(out)["fingerprint"]
    prepare("acdc", acdc_copy, out, CFG.model_copy(update={"size": (32, 32)}))
    m = validate_cache(out)
    assert m["fingerprint"] != fp and m["settings"]["size"] == [32, 32]
    assert open_scan(out, m["scans"][0])["image"].shape[1:] == (32, 32)


def test_rebuild_on_changed_source(acdc_copy, tmp_path):
    out = prepare("acdc", acdc_copy, tmp_path / "c", CFG)
    m0 = load_manifest(out)
    path = acdc_copy / "training/patient002/patient002_frame01.nii.gz"
    img = nib.load(str(path))
    data = np.asarray(img.dataobj).astype(np.int16) + 50
    nib.save(nib.Nifti1Image(data, img.affine, img.header), str(path))
    prepare("acdc", acdc_copy, out, CFG)
    m1 = load_manifest(out)
    assert m1["fingerprint"] != m0["fingerprint"]
    changed = [
        s["scan_id"]
        for s, t in zip(m0["scans"], m1["scans"], strict=True)
        if s["sources"]["image"]["sha256"] != t["sources"]["image"]["sha256"]
    ]
    assert changed == ["patient002_ED"]


def test_touched_but_identical_source_is_reused(acdc_copy, tmp_path):
    out = prepare("acdc", acdc_copy, tmp_path / "c", CFG)
    before = _state(out)
    path = acdc_copy / "training/patient003/patient003_frame01.nii.gz"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    prepare("acdc", acdc_copy, out, CFG)  # mtime changed -> rehash -> same sha -> reuse
    assert _state(out) == before


@pytest.mark.parametrize("damage", ["no_manifest", "missing_scan", "truncated_scan", "incomplete"])
def test_half_written_cache_is_detected_and_rebuilt(acdc_copy, tmp_path, damage):
    out = prepare("acdc", acdc_copy, tmp_path / "c", CFG)
    scan = out / load_manifest(out)["scans"][3]["file"]
    if damage == "no_manifest":
        (out / "manifest.json").unlink()
    elif damage == "missing_scan":
        scan.unlink()
    elif damage == "truncated_scan":
        scan.write_bytes(scan.read_bytes()[:100])
    else:
        m = load_manifest(out)
        m["complete"] = False
        (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match=r"(missing|truncated|incomplete)"):
        validate_cache(out)
    prepare("acdc", acdc_copy, out, CFG)
    assert validate_cache(out)["num_scans"] == 12
    assert not list(tmp_path.glob(".c.tmp-*"))


def test_stale_temp_dir_of_interrupted_build_is_never_used(acdc_copy, tmp_path):
    out = tmp_path / "c"
    prepare("acdc", acdc_copy, tmp_path / "elsewhere", CFG)
    shutil.copytree(tmp_path / "elsewhere", tmp_path / ".c.tmp-1-dead")  # a killed build
    (tmp_path / ".c.tmp-1-dead" / "manifest.json").unlink()
    with pytest.raises(DataError):
        validate_cache(out)
    prepare("acdc", acdc_copy, out, CFG)
    assert validate_cache(out)["num_scans"] == 12
    assert not (tmp_path / ".c.tmp-1-dead").exists()


def test_refuses_to_overwrite_a_foreign_directory(acdc_copy, tmp_path):
    foreign = tmp_path / "mydir"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    with pytest.raises(DataError, match=r"mydir: exists and is not a segssl cache"):
        prepare("acdc", acdc_copy, foreign, CFG)
    assert (foreign / "notes.txt").read_text() == "precious"


def _prepare_worker(args: tuple[str, str]) -> str:
    root, out = args
    prepare("acdc", root, out, CFG)
    return load_manifest(out)["fingerprint"]


def test_concurrent_preparers_are_safe(acdc_copy, tmp_path):
    out = tmp_path / "c"
    with mp.get_context("fork").Pool(3) as pool:
        fps = pool.map(_prepare_worker, [(str(acdc_copy), str(out))] * 3)
    assert len(set(fps)) == 1
    assert validate_cache(out)["fingerprint"] == fps[0]
    assert not list(tmp_path.glob(".c.tmp-*")) and not list(tmp_path.glob(".c.old-*"))


# ------------------------------------------------------------------------------ bad input
def _save_like(path: Path, data: np.ndarray, ref: Path) -> None:
    img = nib.load(str(ref))
    nib.save(nib.Nifti1Image(data, img.affine), str(path))


def _gt(root: Path, pid: str = "patient004") -> Path:
    return root / f"training/{pid}/{pid}_frame01_gt.nii.gz"


def _img(root: Path, pid: str = "patient004") -> Path:
    return root / f"training/{pid}/{pid}_frame01.nii.gz"


def _missing_label(root: Path) -> str:
    _gt(root).unlink()
    return r"patient004_frame01_gt\.nii\.gz: missing label"


def _shape_mismatch(root: Path) -> str:
    lab = np.asarray(nib.load(str(_gt(root))).dataobj)
    _save_like(_gt(root), lab[:-2], _gt(root))
    return r"patient004_frame01_gt\.nii\.gz: label shape .* does not match image shape"


def _bad_values(root: Path) -> str:
    lab = np.asarray(nib.load(str(_gt(root))).dataobj).copy()
    lab[0, 0, 0] = 7
    _save_like(_gt(root), lab, _gt(root))
    return r"patient004_frame01_gt\.nii\.gz: label values \{7\} outside the acdc label set"


def _not_3d(root: Path) -> str:
    img = np.asarray(nib.load(str(_img(root))).dataobj)
    _save_like(_img(root), img[:, :, 0], _img(root))
    return r"patient004_frame01\.nii\.gz: expected a 3D image"


def _truncated(root: Path) -> str:
    raw = _img(root).read_bytes()
    _img(root).write_bytes(raw[: len(raw) // 2])
    return r"patient004_frame01\.nii\.gz: truncated .*image.*gzip stream breaks off after \d+"


def _truncated_label(root: Path) -> str:
    raw = _gt(root).read_bytes()
    _gt(root).write_bytes(raw[: len(raw) * 9 // 10])
    return r"patient004_frame01_gt\.nii\.gz: truncated label: its header describes \d+ bytes"


def _truncated_uncompressed(root: Path) -> str:
    img = nib.load(str(_img(root)))
    plain = _img(root).with_suffix("")  # .nii
    nib.save(img, str(plain))
    _img(root).write_bytes(gzip.compress(plain.read_bytes()[:-100]))
    plain.unlink()
    return r"patient004_frame01\.nii\.gz: truncated .*it decompresses to only \d+"


def _garbage(root: Path) -> str:
    _img(root).write_bytes(gzip.compress(b"this is not a nifti file" * 20))
    return r"patient004_frame01\.nii\.gz: unreadable NIfTI header"


def _label_on_another_grid(root: Path) -> str:
    """The label re-saved flipped along x with a matching affine (world-consistent, but no
    longer voxel-aligned with its image)."""
    img = nib.load(str(_gt(root)))
    data = np.asarray(img.dataobj)[::-1].copy()
    affine = img.affine.copy()
    affine[:3, 3] += affine[:3, 0] * (data.shape[0] - 1)
    affine[:3, 0] *= -1
    nib.save(nib.Nifti1Image(data, affine), str(_gt(root)))
    return r"patient004_frame01_gt\.nii\.gz: label is not on the voxel grid of its image .*expected"


def _no_info(root: Path) -> str:
    (root / "training/patient005/Info.cfg").unlink()
    return r"patient005/Info\.cfg: missing Info\.cfg"


@pytest.mark.parametrize(
    "damage",
    [
        _missing_label,
        _shape_mismatch,
        _bad_values,
        _not_3d,
        _truncated,
        _truncated_label,
        _truncated_uncompressed,
        _garbage,
        _label_on_another_grid,
        _no_info,
    ],
)
def test_bad_input_is_named_and_cache_untouched(acdc_copy, tmp_path, damage, monkeypatch):
    out = prepare("acdc", acdc_copy, tmp_path / "c", CFG)
    before = _state(out)
    pattern = damage(acdc_copy)
    decoded = []  # scans decoded for the build: none may be, the error comes before any work
    real_read = BaseAdapter.read
    monkeypatch.setattr(
        BaseAdapter, "read", lambda self, rec: decoded.append(rec) or real_read(self, rec)
    )
    with pytest.raises(DataError, match=pattern):
        prepare("acdc", acdc_copy, out, CFG)
    assert decoded == []
    assert _state(out) == before
    assert not list(tmp_path.glob(".c.tmp-*"))


def test_truncated_metaimage_raw(archives, tmp_path):
    root = Path(shutil.copytree(archives["promise12"], tmp_path / "p"))
    raw = root / "Case01.raw"
    original = raw.read_bytes()
    raw.write_bytes(original[:1000])
    with pytest.raises(
        DataError, match=r"Case01\.raw: truncated data file of Case01\.mhd .*holds 1000"
    ):
        prepare("promise12", root, tmp_path / "c", CFG)
    raw.write_bytes(original)
    (root / "Case02_segmentation.raw").unlink()
    with pytest.raises(DataError, match=r"Case02_segmentation\.raw: missing data file"):
        prepare("promise12", root, tmp_path / "c", CFG)
    assert not (tmp_path / "c").exists()


def test_label_with_only_another_origin_is_accepted(acdc_copy, tmp_path):
    img = nib.load(str(_gt(acdc_copy)))
    affine = img.affine.copy()
    affine[:3, 3] += 0.01  # rounding in a label header
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine), str(_gt(acdc_copy)))
    assert validate_cache(prepare("acdc", acdc_copy, tmp_path / "c", CFG))["num_scans"] == 12


def test_cache_of_an_older_format_is_named_and_rebuilt(acdc_copy, tmp_path):
    out = prepare("acdc", acdc_copy, tmp_path / "c", CFG)
    m = load_manifest(out)
    m["format"] = 1
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match=r"cache format 1, expected \d+ \(made by another segssl"):
        validate_cache(out)
    prepare("acdc", acdc_copy, out, CFG)
    assert validate_cache(out)["num_scans"] == 12
