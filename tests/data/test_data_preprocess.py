"""Preprocessing: normalisation, resampling, crop/pad/resize, orientation invariance."""

from __future__ import annotations

import numpy as np
import pytest

from segssl.config import PreprocessConfig
from segssl.data import DataError
from segssl.data.io import read_volume
from segssl.data.preprocess import _crop_or_pad, normalise, preprocess_volume, reorient
from segssl.data.synth import oriented_affine, save_nifti


def _phantom(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Canonical (x, y, z) test volume: structure + noise, and a label with 3 classes."""
    x, y, z = np.meshgrid(np.arange(40), np.arange(36), np.arange(9), indexing="ij")
    img = 100 + 3 * x + 2 * y + 10 * z + rng.normal(0, 5, x.shape)
    lab = np.zeros(x.shape, np.uint8)
    lab[(x - 15) ** 2 + (y - 20) ** 2 < 36] = 1
    lab[(x > 25) & (y < 10)] = 2
    lab[(z == 4) & (x < 5)] = 3
    return img.astype(np.float32), lab


def test_normalise_percentiles_map_to_0_and_1():
    img = np.arange(10001, dtype=np.float32).reshape(1, 1, -1)  # values 0..10000
    out = normalise(img, (1.0, 99.0), clip=False, name="x")
    lo, hi = np.percentile(out, [1, 99])
    assert lo == pytest.approx(0.0, abs=1e-6) and hi == pytest.approx(1.0, abs=1e-6)
    assert out.min() == pytest.approx(-100 / 9800)  # below the 1st percentile: negative
    clipped = normalise(img, (1.0, 99.0), clip=True, name="x")
    assert clipped.min() == 0.0 and clipped.max() == 1.0
    with pytest.raises(DataError, match=r"scanX: intensity percentiles .* are equal"):
        normalise(np.ones((2, 3, 3)), (1.0, 99.0), clip=True, name="scanX")


def test_window_clips_raw_intensities_and_maps_them_to_0_1():
    """A fixed CT window (Hounsfield units) replaces the scan's percentiles: the same HU value
    maps to the same intensity in every scan, whatever else the scan holds."""
    hu = np.array([-1000, -160, 40, 240, 900], np.float32).reshape(1, 1, -1)
    out = normalise(hu, (1.0, 99.0), clip=True, name="ct", window=(-160, 240))
    np.testing.assert_allclose(out.ravel(), [0.0, 0.0, 0.5, 1.0, 1.0])
    # a scan with more bone: percentiles would move soft tissue, the window does not
    bony = np.concatenate([hu, np.full((1, 1, 50), 900, np.float32)], axis=2)
    out2 = normalise(bony, (1.0, 99.0), clip=True, name="ct", window=(-160, 240))
    assert out2[0, 0, 2] == out[0, 0, 2]
    assert (
        normalise(bony, (1.0, 99.0), True, "ct")[0, 0, 2]
        != normalise(hu, (1.0, 99.0), True, "ct")[0, 0, 2]
    )
    vol = np.tile(np.linspace(-500, 500, 40, dtype=np.float32)[:, None, None], (1, 36, 9))
    img, _, _ = preprocess_volume(
        vol, None, np.eye(4), PreprocessConfig(size=(40, 36), spacing=None, window=(0, 100))
    )
    assert img.min() == 0.0 and img.max() == 1.0 and 0.0 < float(np.median(img)) < 1.0


@pytest.mark.parametrize("window", [(240, -160), (5, 5), (0, float("inf"))])
def test_window_must_be_low_high(window):
    with pytest.raises(ValueError, match="low < high"):
        PreprocessConfig(window=window)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"percentiles": (0.5, 99.5)}, "percentiles .* or window, not both"),
        ({"clip": False}, "clip: false"),
    ],
)
def test_a_window_refuses_the_settings_it_would_ignore(extra, match):
    from segssl.config import ConfigError, parse_run_config

    with pytest.raises(ValueError, match=match):
        PreprocessConfig(window=(-160, 240), **extra)
    raw = {
        "stage": "finetune",
        "method": {"name": "baseline"},
        "data": {"preprocess": {"window": [-160, 240], **extra}},
    }
    with pytest.raises(ConfigError, match=r"data\.preprocess"):
        parse_run_config(raw, source="run.yaml")


def test_window_left_out_of_keys_at_its_default():
    """Caches and trial keys made before the window existed stay valid."""
    from segssl.config import canonical_json

    assert "window" not in canonical_json(PreprocessConfig())
    assert "window" in canonical_json(PreprocessConfig(window=(-160, 240)))


def test_resampling_spacing_and_shape():
    rng = np.random.default_rng(0)
    img, lab = _phantom(rng)
    affine = oriented_affine(img.shape, (2.0, 1.5, 6.0))
    cfg = PreprocessConfig(spacing=(1.0, 1.0), size=(96, 96), fit="crop_or_pad")
    out, olab, spacing = preprocess_volume(img, lab, affine, cfg)
    assert out.shape == (9, 96, 96) and olab.shape == (9, 96, 96)
    assert spacing == pytest.approx((6.0, 1.0, 1.0))
    # 40 x 2.0 mm = 80 px, 36 x 1.5 mm = 54 px at 1 mm, zero-padded to 96 x 96 around the centre
    rows = np.flatnonzero(out.max(axis=(0, 2)) > 0)
    cols = np.flatnonzero(out.max(axis=(0, 1)) > 0)
    assert len(rows) == 80 and len(cols) == 54
    assert set(np.unique(olab).tolist()) == {0, 1, 2, 3}  # nearest keeps the label set
    # class 1 disc: radius 6 voxels along x (2 mm) -> ~24 mm wide at 1 mm/px
    width = np.flatnonzero((olab == 1).any(axis=(0, 2)))
    assert 21 <= len(width) <= 25


def test_resize_fit_changes_spacing():
    rng = np.random.default_rng(1)
    img, lab = _phantom(rng)
    affine = oriented_affine(img.shape, (2.0, 1.5, 6.0))
    cfg = PreprocessConfig(spacing=None, size=(32, 24), fit="resize")
    out, olab, spacing = preprocess_volume(img, lab, affine, cfg)
    assert out.shape == (9, 32, 24)
    assert spacing == pytest.approx((6.0, 40 * 2.0 / 32, 36 * 1.5 / 24))


def test_crop_or_pad_centres():
    arr = np.arange(1 * 6 * 6).reshape(1, 6, 6)
    out = _crop_or_pad(arr, (4, 4), (3.0, 3.0))
    np.testing.assert_array_equal(out[0], arr[0, 1:5, 1:5])
    padded = _crop_or_pad(arr, (8, 8), (3.0, 3.0))
    np.testing.assert_array_equal(padded[0, 1:7, 1:7], arr[0])
    assert padded[0, 0].sum() == 0


def test_crop_centred_on_label():
    img = np.random.default_rng(0).random((2, 40, 40)).astype(np.float32)[None][0]
    lab = np.zeros((2, 40, 40), np.uint8)
    lab[:, 30:36, 4:10] = 1
    vol = np.transpose(img, (1, 2, 0)).copy()
    lvol = np.transpose(lab, (1, 2, 0)).copy()
    affine = oriented_affine(vol.shape, (1.0, 1.0, 8.0))
    cfg = PreprocessConfig(
        spacing=None, size=(12, 12), crop_center="label", percentiles=(0, 100), clip=False
    )
    _, olab, _ = preprocess_volume(vol, lvol, affine, cfg)
    assert olab.sum() == lab.sum()  # the whole structure is inside the 12 x 12 window
    rows = np.flatnonzero(olab[0].any(axis=1))
    assert rows.min() == 3 and rows.max() == 8  # centred


@pytest.mark.parametrize(
    "perm,flips",
    [
        ((0, 1, 2), (True, False, False)),
        ((1, 0, 2), (False, True, True)),
        ((2, 0, 1), (True, False, True)),  # slice axis stored first
        ((1, 2, 0), (False, False, False)),
    ],
)
def test_flipped_or_permuted_storage_gives_same_slices(tmp_path, perm, flips):
    rng = np.random.default_rng(2)
    img, lab = _phantom(rng)
    spacing = (1.4, 1.4, 7.0)
    save_nifti(tmp_path / "canon.nii.gz", img, spacing)
    save_nifti(tmp_path / "canon_gt.nii.gz", lab, spacing)
    save_nifti(tmp_path / "other.nii.gz", img, spacing, perm, flips, origin=(5.0, -3.0, 2.0))
    save_nifti(tmp_path / "other_gt.nii.gz", lab, spacing, perm, flips, origin=(5.0, -3.0, 2.0))
    cfg = PreprocessConfig(spacing=(1.0, 1.0), size=(64, 64))
    outs = []
    for stem in ("canon", "other"):
        a, aff = read_volume(tmp_path / f"{stem}.nii.gz")
        b, _ = read_volume(tmp_path / f"{stem}_gt.nii.gz")
        if stem == "other":
            assert a.shape != img.shape or flips != (False,) * 3  # really stored differently
        outs.append(preprocess_volume(a, b, aff, cfg))
    (i1, l1, s1), (i2, l2, s2) = outs
    assert i1.shape == (9, 64, 64)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(l1, l2)
    assert s1 == pytest.approx(s2)


def test_slice_axis_auto_vs_stored():
    rng = np.random.default_rng(3)
    img, lab = _phantom(rng)
    # slices stored along the first axis (7 mm), so "stored" (third axis) is wrong here
    affine = oriented_affine(img.shape, (1.4, 1.4, 7.0), perm=(2, 0, 1))
    stored_img = np.transpose(img, (2, 0, 1))
    auto = reorient(stored_img, None, affine, PreprocessConfig())
    stored = reorient(
        stored_img, None, affine, PreprocessConfig(slice_axis="stored", reorient=False)
    )
    assert auto[0].shape == (9, 40, 36) and auto[2] == pytest.approx((7.0, 1.4, 1.4))
    # the stored third axis (36 voxels of 1.4 mm) becomes the slice axis: long-axis cuts
    assert stored[0].shape == (36, 9, 40) and stored[2] == pytest.approx((1.4, 7.0, 1.4))


def test_acdc_phantom_restored_in_another_orientation(archives, tmp_path):
    """A real-layout phantom re-saved with permuted, flipped axes gives the same slices."""
    import nibabel as nib

    from segssl.data import get_adapter

    ad = get_adapter("acdc", archives["acdc"])
    rec = ad.list_scans()[0]
    cfg = PreprocessConfig(spacing=(2.0, 2.0), size=(48, 48))
    raw = ad.read(rec)
    ref = preprocess_volume(raw.image, raw.label, raw.affine, cfg)
    # move the slice axis first and flip two axes; the affine follows, the world stays
    perm, flips = (2, 1, 0), (True, False, True)
    img = np.transpose(raw.image, perm)
    lab = np.transpose(raw.label, perm)
    affine = raw.affine[:, [*perm, 3]].copy()
    for k, f in enumerate(flips):
        if f:
            img, lab = np.flip(img, k), np.flip(lab, k)
            affine[:3, 3] += affine[:3, k] * (img.shape[k] - 1)
            affine[:3, k] *= -1
    nib.save(nib.Nifti1Image(np.ascontiguousarray(img), affine), str(tmp_path / "i.nii.gz"))
    nib.save(nib.Nifti1Image(np.ascontiguousarray(lab), affine), str(tmp_path / "l.nii.gz"))
    a, aff = read_volume(tmp_path / "i.nii.gz")
    b, _ = read_volume(tmp_path / "l.nii.gz")
    assert a.shape[0] == raw.image.shape[2]  # really stored slice-first
    out = preprocess_volume(a.astype(np.float32), b, aff, cfg)
    np.testing.assert_array_equal(out[0], ref[0])
    np.testing.assert_array_equal(out[1], ref[1])
    assert out[2] == pytest.approx(ref[2])


@pytest.mark.parametrize("perm", [(2, 0, 1), (0, 2, 1), (1, 2, 0)])
def test_near_isotropic_scans_stored_in_other_planes_give_the_same_slices(perm):
    """Spacings within 10 %: slices are axial whatever plane the scan was stored in (the stored
    third axis would cut one subject axially and another sagittally)."""
    rng = np.random.default_rng(4)
    img, lab = _phantom(rng)  # canonical (x, y, z) = (40, 36, 9)
    spacing = (1.0, 1.0, 1.05)
    cfg = PreprocessConfig(spacing=None, size=(48, 48), clip=False)
    ref = preprocess_volume(img, lab, oriented_affine(img.shape, spacing), cfg)
    stored_img = np.ascontiguousarray(np.transpose(img, perm))
    stored_lab = np.ascontiguousarray(np.transpose(lab, perm))
    out = preprocess_volume(stored_img, stored_lab, oriented_affine(img.shape, spacing, perm), cfg)
    assert ref[0].shape == out[0].shape == (9, 48, 48)  # 9 axial slices
    np.testing.assert_array_equal(out[0], ref[0])
    np.testing.assert_array_equal(out[1], ref[1])
    assert out[2] == pytest.approx((1.05, 1.0, 1.0))


@pytest.mark.parametrize("slice_axis", ["auto", "stored"])
@pytest.mark.parametrize("reorient_axes", [True, False])
def test_slice_count_from_the_header_is_what_preprocessing_makes(slice_axis, reorient_axes):
    """The sweep preflight counts slices from headers (S partitions per volume): the count must
    be the through-plane length preprocessing picks, for any stored orientation and spacing."""
    from segssl.config import PreprocessConfig
    from segssl.data.preprocess import reorient, slice_count

    cfg = PreprocessConfig(slice_axis=slice_axis, reorient=reorient_axes)
    shape = (5, 7, 9)
    perms = [(0, 1, 2), (2, 0, 1), (1, 2, 0), (0, 2, 1)]
    spacings = [(1.0, 1.0, 8.0), (8.0, 1.0, 1.0), (1.0, 6.0, 1.0), (1.0, 1.0, 1.05)]
    seen = set()
    for perm in perms:
        for sp in spacings:
            for flip in (1.0, -1.0):
                affine = np.eye(4)
                affine[:3, :3] = 0.0
                for i, j in enumerate(perm):
                    affine[j, i] = sp[i] * (flip if i == 0 else 1.0)
                made = reorient(np.zeros(shape), None, affine, cfg)[0].shape[0]
                assert slice_count(shape, affine, cfg) == made, (perm, sp, flip)
                seen.add(made)
    # "auto" slices along different stored axes here; "stored" always along the third
    assert len(seen) > 1 if slice_axis == "auto" else seen == {shape[2]}
