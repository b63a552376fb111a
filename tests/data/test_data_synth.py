"""Synthetic phantoms: layout, plausible anatomy, variability between subjects, determinism."""

from __future__ import annotations

import hashlib

import nibabel as nib
import numpy as np
import pytest

from segssl.config import PreprocessConfig
from segssl.data import DataError, get_adapter, synthesize
from segssl.data.preprocess import preprocess_volume


def _lv_areas(path) -> np.ndarray:
    lab = np.asarray(nib.load(str(path)).dataobj)
    return (lab == 3).sum(axis=(0, 1))  # slices on the stored third axis (as ACDC ships)


def test_acdc_anatomy(archives):
    root = archives["acdc"] / "training"
    ed_volumes = []
    for pdir in sorted(root.iterdir()):
        pid = pdir.name
        info = dict(line.split(": ") for line in (pdir / "Info.cfg").read_text().splitlines())
        es = int(info["ES"])
        assert info["ED"] == "1" and 1 < es <= int(info["NbFrame"])
        assert info["Group"] in {"NOR", "MINF", "DCM", "HCM", "RV"}
        ed, es_ = (_lv_areas(pdir / f"{pid}_frame{f:02d}_gt.nii.gz") for f in (1, es))
        assert es_.sum() < ed.sum()  # ES smaller than ED
        core = ed[ed > 0]  # cavity shrinks from base to apex (either stored direction)
        tol = 0.1 * core.max()  # pixel discretisation near the flat base
        assert np.all(np.diff(core) <= tol) or np.all(np.diff(core) >= -tol)
        assert core.max() > 3 * min(core[0], core[-1])
        cine = nib.load(str(pdir / f"{pid}_4d.nii.gz"))
        assert cine.shape[3] == int(info["NbFrame"])
        frame = np.asarray(nib.load(str(pdir / f"{pid}_frame01.nii.gz")).dataobj)
        np.testing.assert_array_equal(np.asarray(cine.dataobj)[..., 0], frame)
        zooms = nib.load(str(pdir / f"{pid}_frame01.nii.gz")).header.get_zooms()
        ed_volumes.append(ed.sum() * float(np.prod(zooms)))
    ed_volumes = np.asarray(ed_volumes)
    assert ed_volumes.std() / ed_volumes.mean() > 0.15  # subjects differ in size


def test_acdc_orientation_and_spacing_vary(archives):
    recs = get_adapter("acdc", archives["acdc"]).list_scans()
    affines = {tuple(np.sign(nib.load(str(r.image)).affine[:3, :3]).ravel()) for r in recs}
    assert len(affines) >= 2
    assert len({r.spacing for r in recs}) >= 3


def test_one_subject_does_not_predict_another(archives):
    """Using one patient's labels as the prediction of another gives a poor Dice."""
    ad = get_adapter("acdc", archives["acdc"])
    cfg = PreprocessConfig(spacing=(2.0, 2.0), size=(48, 48))
    mids = []
    blood = []
    for rec in ad.list_scans()[::2]:  # ED frames
        raw = ad.read(rec)
        img, lab, _ = preprocess_volume(raw.image, raw.label, raw.affine, cfg)
        mids.append(lab[len(lab) // 2])
        blood.append(float(img[lab == 3].mean()))
    dices = []
    for i in range(len(mids)):
        for j in range(len(mids)):
            if i != j:
                a, b = mids[i] > 0, mids[j] > 0
                dices.append(2 * (a & b).sum() / (a.sum() + b.sum()))
    assert np.mean(dices) < 0.75
    assert np.std(blood) > 0.02  # normalised blood-pool brightness differs between subjects


def test_deterministic(tmp_path):
    def digest(root):
        return {
            p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }

    a = digest(synthesize("mmwhs-mr", tmp_path / "a", scans=1, size=24, seed=5))
    b = digest(synthesize("mmwhs-mr", tmp_path / "b", scans=1, size=24, seed=5))
    c = digest(synthesize("mmwhs-mr", tmp_path / "c", scans=1, size=24, seed=6))
    assert a == b and a != c


def test_spleen_ct_in_hounsfield(archives):
    ad = get_adapter("msd-spleen", archives["msd-spleen"])
    raw = ad.read(ad.list_scans()[0])
    assert raw.image.min() <= -900  # air
    assert 80 < np.median(raw.image[raw.label == 1]) < 160  # enhanced spleen
    per_slice = raw.label.reshape(-1, raw.label.shape[2]).any(axis=0)
    assert 0 < per_slice.sum() < len(per_slice)  # the spleen spans only part of the volume


def test_prostate_gland_is_low_contrast(archives):
    ad = get_adapter("msd-prostate", archives["msd-prostate"])
    raw = ad.read(ad.list_scans()[0])
    gland = raw.image[raw.label > 0].mean()
    around = raw.image[(raw.label == 0) & (raw.image > np.percentile(raw.image, 30))].mean()
    spread = raw.image[raw.image > 0].std()
    assert abs(gland - around) < spread  # no trivially separable gland


def test_synth_errors(tmp_path):
    with pytest.raises(DataError, match=r"'msd' is generic; use msd-prostate or msd-spleen"):
        synthesize("msd", tmp_path, scans=1)
    with pytest.raises(DataError, match=r"--scans must be at least 1, got 0"):
        synthesize("acdc", tmp_path, scans=0)
    with pytest.raises(DataError, match=r"--size must be at least 16 pixels, got 8"):
        synthesize("acdc", tmp_path, scans=1, size=8)


def test_synth_refuses_a_non_empty_folder(tmp_path):
    """A second synth into the same folder would mix two archives (e.g. 2 new + 18 old patients)."""
    out = synthesize("acdc", tmp_path / "a", scans=2, size=16, seed=0)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(DataError, match=r"a: exists and is not empty; .*remove it or choose"):
        synthesize("acdc", out, scans=1, size=16, seed=1)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match=r"f: exists and is not a directory"):
        synthesize("acdc", tmp_path / "f", scans=1, size=16)
    (tmp_path / "empty").mkdir()
    assert (synthesize("promise12", tmp_path / "empty", scans=1, size=16) / "Case00.mhd").is_file()
