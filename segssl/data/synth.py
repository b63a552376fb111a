"""Synthetic phantoms written in the exact on-disk layout of each public archive.

No real scan can be downloaded where segssl is developed, so every adapter and the whole pipeline
are exercised on these phantoms. They are simple but honest anatomy in millimetre coordinates
(so spacing changes the pixels consistently), with between-subject variability of shape, size,
position and intensity, a smooth multiplicative bias field, partial-volume blur and Rician noise:

* ``acdc``: per patient a short-axis cine (``_4d``) whose ED and ES frames are also written as
  ``_frameFF`` files with ``_gt`` labels (LV blood pool, myocardial ring, RV crescent, lungs,
  liver and clutter); cavities shrink from base to apex and from ED to ES; pathology groups
  (NOR, MINF, DCM, HCM, RV) change sizes and wall thickness; ``Info.cfg`` as shipped.
* ``promise12``: pelvic T2 MRI with a low-contrast gland (PZ brighter than TZ), bladder, rectum
  and pubic bone, as MetaImage ``CaseNN.mhd/.raw``.
* ``msd-prostate``: the same anatomy as 4D T2 + ADC NIfTI with PZ/TZ labels and ``dataset.json``.
* ``msd-spleen``: portal-venous CT in Hounsfield units (air, fat, muscle, liver, spleen, kidneys,
  spine, bowel gas), ``dataset.json``.
* ``mmwhs-ct`` / ``mmwhs-mr``: a whole heart with seven structures (Myo, LA, LV, RA, RV, AA, PA)
  and the archive's raw label values.

Storage orientation varies between subjects (flipped and permuted in-plane axes, flipped slice
order, random origins); the affine always describes the stored array exactly.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage

from segssl.data.errors import DataError

__all__ = ["SYNTHESIZERS", "oriented_affine", "save_nifti", "synthesize"]


# ----------------------------------------------------------------------------- helpers
def oriented_affine(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    perm: tuple[int, int, int] = (0, 1, 2),
    flips: tuple[bool, bool, bool] = (False, False, False),
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """Affine of a canonical ``(x, y, z)`` array stored as ``transpose(perm)`` then flipped.

    Stored axis ``k`` walks canonical axis ``perm[k]``, backwards when ``flips[k]``; the world
    position of every voxel is the same as in the canonical array with ``diag(spacing)``.
    """
    affine = np.eye(4)
    affine[:3, :3] = 0.0
    affine[:3, 3] = origin
    for k in range(3):
        a = perm[k]
        sign = -1.0 if flips[k] else 1.0
        affine[a, k] = sign * spacing[a]
        if flips[k]:
            affine[a, 3] += spacing[a] * (shape[a] - 1)
    return affine


def _orient(arr: np.ndarray, perm: tuple[int, ...], flips: tuple[bool, ...]) -> np.ndarray:
    out = np.transpose(arr, (*perm, *range(3, arr.ndim)))
    for k, f in enumerate(flips):
        if f:
            out = np.flip(out, axis=k)
    return np.ascontiguousarray(out)


def save_nifti(
    path: Path,
    data: np.ndarray,
    spacing: tuple[float, float, float],
    perm: tuple[int, int, int] = (0, 1, 2),
    flips: tuple[bool, bool, bool] = (False, False, False),
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> None:
    """Write a canonical ``(x, y, z[, c])`` array as NIfTI in the given storage orientation."""
    import nibabel as nib

    affine = oriented_affine(data.shape[:3], spacing, perm, flips, origin)
    img = nib.Nifti1Image(_orient(data, perm, flips), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def _random_orientation(rng: np.random.Generator) -> tuple[tuple[int, int, int], tuple[bool, ...]]:
    """In-plane axes possibly swapped, any axis possibly flipped; slices stay on stored axis 2."""
    perm = (1, 0, 2) if rng.random() < 0.4 else (0, 1, 2)
    flips = tuple(bool(f) for f in rng.random(3) < 0.35)
    return perm, flips


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], cells: int = 4) -> np.ndarray:
    """Smooth random 3D field in [-1, 1]: a random low-frequency cosine series.

    ``cells`` is the number of cosine frequencies per axis (0..cells-1), i.e. the field's detail.
    """
    bases = []
    for n in shape:
        t = (np.arange(n, dtype=np.float32) + 0.5) / n
        k = np.arange(min(cells, n), dtype=np.float32)[:, None]
        bases.append(np.cos(np.pi * k * t))
    coef = rng.uniform(-1, 1, size=tuple(b.shape[0] for b in bases)).astype(np.float32)
    coef /= (
        1.0
        + np.add.outer(
            np.add.outer(*[np.arange(c) for c in coef.shape[:2]]), np.arange(coef.shape[2])
        )
    ) ** 1.5  # weaker high frequencies
    field = np.einsum("ijk,ix,jy,kz->xyz", coef, *bases, optimize=True)
    return field / max(float(np.abs(field).max()), 1e-6)


def _bias(rng: np.random.Generator, shape: tuple[int, ...], amplitude: float) -> np.ndarray:
    """Smooth multiplicative bias field ``1 + amplitude * field`` (a coil property: one per scan
    session, shared by all frames of a cine)."""
    return 1.0 + amplitude * _smooth_field(rng, shape)


def _finish(
    rng: np.random.Generator,
    clean: np.ndarray,
    spacing: tuple[float, float, float],
    bias: float | np.ndarray,
    noise: float,
    rician: bool = True,
) -> np.ndarray:
    """Partial-volume blur in-plane, multiplicative bias field, Gaussian or Rician noise.

    ``bias`` is an amplitude (a field is drawn) or a precomputed field from :func:`_bias`."""
    sigma_mm = 0.8
    img = ndimage.gaussian_filter(
        clean.astype(np.float32),
        sigma=(sigma_mm / spacing[0], sigma_mm / spacing[1], 0.0),
        mode="nearest",
    )
    field = _bias(rng, img.shape, bias) if np.isscalar(bias) else bias
    img = img * field
    if rician:
        n1 = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(noise)
        n2 = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(noise)
        return np.sqrt((img + n1) ** 2 + n2**2)
    return img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(noise)


def _grid(size: int, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """In-plane world coordinates (mm) centred on the image, shape (size, size) each."""
    c = ((np.arange(size) - (size - 1) / 2.0) * spacing).astype(np.float32)
    return np.meshgrid(c, c, indexing="ij")


def _ellipse(x, y, cx, cy, a, b, angle=0.0) -> np.ndarray:  # noqa: ANN001 - arrays
    ca, sa = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    dx, dy = x - np.float32(cx), y - np.float32(cy)
    u = (dx * ca + dy * sa) * np.float32(1.0 / max(a, 1e-6))
    v = (dy * ca - dx * sa) * np.float32(1.0 / max(b, 1e-6))
    return u * u + v * v <= 1.0


def _ids(rng: np.random.Generator, n: int, low: int, spread: int) -> list[int]:
    """``n`` sorted distinct ids from ``[low, low + spread * n)`` (non-contiguous, as shipped)."""
    return sorted(int(v) for v in rng.choice(np.arange(low, low + spread * n), n, replace=False))


# -------------------------------------------------------------------------------- ACDC
_ACDC_GROUPS = {  # LV radius at base (mm), wall (mm), RV scale, ejection (ES/ED radius)
    "NOR": (24.0, 9.0, 1.0, 0.68),
    "MINF": (29.0, 7.5, 1.0, 0.85),
    "DCM": (33.0, 7.0, 1.05, 0.9),
    "HCM": (19.0, 14.0, 0.9, 0.55),
    "RV": (23.0, 8.5, 1.6, 0.72),
}


def _acdc_subject(rng: np.random.Generator) -> dict[str, float | str]:
    group = str(rng.choice(list(_ACDC_GROUPS)))
    r0, wall, rv_scale, eject = _ACDC_GROUPS[group]
    return {
        "group": group,
        "r0": r0 * rng.uniform(0.85, 1.15),
        "wall": wall * rng.uniform(0.85, 1.2),
        "ecc": rng.uniform(0.8, 1.0),
        "angle": rng.uniform(0, math.pi),
        "rv_dir": rng.uniform(math.radians(140), math.radians(220)),
        "rv_a": rv_scale * rng.uniform(32, 44),
        "rv_b": rv_scale * rng.uniform(16, 24),
        "eject": min(0.95, eject * rng.uniform(0.92, 1.08)),
        "cx": rng.normal(0, 10),
        "cy": rng.normal(0, 10),
        "tilt_x": rng.normal(0, 1.2),
        "tilt_y": rng.normal(0, 1.2),
        "blood": rng.uniform(0.7, 0.95),
        "myo": rng.uniform(0.18, 0.38),
        "tissue": rng.uniform(0.3, 0.55),
        "fat": rng.uniform(0.75, 1.0),
        "lung": rng.uniform(0.02, 0.12),
        "liver": rng.uniform(0.3, 0.5),
        "bias": rng.uniform(0.1, 0.35),
        "noise": rng.uniform(0.025, 0.06),
        "scale": rng.uniform(180, 900),
    }


def _acdc_background(p: dict, size: int, sp: float, nz: int, clutter: list) -> np.ndarray:
    """Static anatomy around the heart (body wall, fat, lungs, liver, clutter), (x, y, z)."""
    x, y = _grid(size, sp)
    fov = size * sp
    out = np.zeros((size, size, nz))
    body = _ellipse(x, y, 0, 0, 0.44 * fov, 0.34 * fov, 0.1)
    base = np.where(body, p["tissue"], 0.0)
    base = np.where(body & ~_ellipse(x, y, 0, 0, 0.40 * fov, 0.30 * fov, 0.1), p["fat"], base)
    for side in (-1, 1):  # lungs
        lung = _ellipse(x, y, side * 0.22 * fov, -0.05 * fov, 0.14 * fov, 0.2 * fov, 0.3)
        base = np.where(lung & body, p["lung"], base)
    for bx, by, br, bv in clutter:
        base = np.where(_ellipse(x, y, bx * fov, by * fov, br, br) & body, bv, base)
    for z in range(nz):
        t = z / max(nz - 1, 1)
        sl = base
        if t > 0.5:  # liver appears towards the apex
            liver = _ellipse(x, y, -0.18 * fov, 0.12 * fov, 0.2 * fov * t, 0.16 * fov * t)
            sl = np.where(liver & body, p["liver"], sl)
        out[:, :, z] = sl
    return out


def _acdc_frame(
    p: dict,
    rng: np.random.Generator,
    background: np.ndarray,
    sp: float,
    phase: float,
) -> tuple[np.ndarray, np.ndarray]:
    """One cine frame (x, y, z); ``phase`` 0 = ED, 1 = ES. Slice 0 is the base."""
    size, _, nz = background.shape
    x, y = _grid(size, sp)
    img = background.copy()
    lab = np.zeros((size, size, nz), np.uint8)
    shrink = 1.0 - (1.0 - p["eject"]) * phase
    wall = p["wall"] * (1.0 + 0.35 * phase)
    for z in range(nz):
        t = z / max(nz - 1, 1)  # base -> apex
        cx, cy = p["cx"] + p["tilt_x"] * z, p["cy"] + p["tilt_y"] * z
        sl = img[:, :, z]
        r_lv = p["r0"] * shrink * max(0.0, 1.0 - 0.85 * t**2)
        a_lv, b_lv = r_lv, r_lv * p["ecc"]
        a_epi, b_epi = a_lv + wall, b_lv + wall
        if t > 0.95:  # apical cap: myocardium without cavity
            a_epi = b_epi = max(wall, 0.6 * p["r0"] * (1.0 - 0.85 * t**2) + wall * 0.5)
        epi = _ellipse(x, y, cx, cy, a_epi, b_epi, p["angle"])
        fat_rim = _ellipse(x, y, cx, cy, a_epi + 3, b_epi + 3, p["angle"]) & ~epi
        endo = _ellipse(x, y, cx, cy, a_lv, b_lv, p["angle"]) if r_lv > 1 else np.zeros_like(epi)
        rv_scale = max(0.0, 1.0 - 1.1 * t**1.6) * (1.0 - 0.45 * phase)
        rv = np.zeros_like(epi)
        if rv_scale > 0.08:
            d = a_epi + 0.3 * p["rv_b"] * rv_scale
            rx = cx + d * math.cos(p["rv_dir"])
            ry = cy + d * math.sin(p["rv_dir"])
            rv = _ellipse(x, y, rx, ry, p["rv_b"] * rv_scale + 2, p["rv_a"] * rv_scale, p["rv_dir"])
            rv &= ~_ellipse(x, y, cx, cy, a_epi + 2.5, b_epi + 2.5, p["angle"])
        sl = np.where(fat_rim & (rng.random(sl.shape) < 0.5), p["fat"], sl)
        sl = np.where(epi, p["myo"], sl)
        sl = np.where(endo | rv, p["blood"], sl)
        img[:, :, z] = sl
        lab[:, :, z] = np.where(endo, 3, np.where(epi, 2, np.where(rv, 1, 0)))
    return img, lab


def _synth_acdc(out: Path, scans: int, size: int, rng: np.random.Generator) -> None:
    """``scans`` patients (two scans each) under ``out/training``."""
    base = out / "training"
    for n in range(1, scans + 1):
        p = _acdc_subject(rng)
        pid = f"patient{n:03d}"
        folder = base / pid
        folder.mkdir(parents=True, exist_ok=True)
        sp = float(rng.uniform(170, 260) / size)
        dz = float(rng.choice([5.0, 6.5, 8.0, 10.0]))
        nz = int(rng.integers(7, 13))
        nframes = int(rng.integers(12, 21))
        es = int(round(nframes * rng.uniform(0.3, 0.45))) + 1
        clutter = [
            (
                rng.uniform(-0.3, 0.3),
                rng.uniform(-0.25, 0.25),
                rng.uniform(4, 14),
                rng.uniform(0.1, 0.9),
            )
            for _ in range(int(rng.integers(2, 6)))
        ]
        perm, flips = _random_orientation(rng)
        origin = tuple(float(v) for v in rng.normal(0, 40, 3))
        spacing = (sp, sp, dz)
        cine = np.zeros((size, size, nz, nframes), np.int16)
        field = _bias(rng, (size, size, nz), p["bias"])
        background = _acdc_background(p, size, sp, nz, clutter)
        frames: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for f in range(1, nframes + 1):
            # contraction: ED (frame 1) -> ES -> back towards ED at the end of the cycle
            phase = (f - 1) / (es - 1) if f <= es else max(0.0, 1 - (f - es) / (nframes - es + 2))
            clean, lab = _acdc_frame(p, rng, background, sp, phase)
            img = _finish(rng, clean, spacing, field, p["noise"]) * p["scale"]
            vol = np.clip(np.round(img), 0, 32767).astype(np.int16)
            cine[..., f - 1] = vol
            if f in (1, es):
                frames[f] = (vol, lab)
        save_nifti(folder / f"{pid}_4d.nii.gz", cine, spacing, perm, flips, origin)
        for f, (vol, lab) in frames.items():
            save_nifti(folder / f"{pid}_frame{f:02d}.nii.gz", vol, spacing, perm, flips, origin)
            save_nifti(folder / f"{pid}_frame{f:02d}_gt.nii.gz", lab, spacing, perm, flips, origin)
        height = rng.uniform(150, 195)
        (folder / "Info.cfg").write_text(
            f"ED: 1\nES: {es}\nGroup: {p['group']}\nHeight: {height:.1f}\n"
            f"NbFrame: {nframes}\nWeight: {rng.uniform(50, 110):.1f}\n"
        )


# ----------------------------------------------------------------------------- prostate
def _prostate_volume(
    rng: np.random.Generator, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Pelvic MRI phantom: (T2, ADC, labels 0/1 PZ/2 TZ) in canonical (x, y, z), spacing."""
    sp = float(rng.uniform(140, 200) / size)
    dz = float(rng.uniform(2.2, 4.0))
    nz = int(rng.integers(14, 25))
    x, y = _grid(size, sp)
    fov = size * sp
    gland = np.array([rng.uniform(17, 27), rng.uniform(13, 20), rng.uniform(15, 24)])  # mm
    tz_frac = rng.uniform(0.5, 0.75)  # central gland share (grows with age)
    gc = np.array([rng.normal(0, 6), rng.normal(0.05 * fov, 5)])
    zc = (nz - 1) / 2 * dz + rng.normal(0, dz)
    t2 = {
        k: rng.uniform(*v)
        for k, v in {
            "muscle": (0.3, 0.42),
            "fat": (0.75, 0.95),
            "pz": (0.45, 0.62),
            "tz": (0.33, 0.45),
            "urine": (0.85, 1.0),
            "bone": (0.05, 0.15),
            "rectum": (0.1, 0.25),
        }.items()
    }
    adc = {
        "muscle": 0.35,
        "fat": 0.1,
        "pz": rng.uniform(0.55, 0.75),
        "tz": rng.uniform(0.4, 0.55),
        "urine": 0.95,
        "bone": 0.05,
        "rectum": 0.2,
    }
    vol_t2 = np.zeros((size, size, nz))
    vol_adc = np.zeros((size, size, nz))
    lab = np.zeros((size, size, nz), np.uint8)
    for z in range(nz):
        dzc = (z * dz - zc) / gland[2]
        regions: list[tuple[np.ndarray, str]] = []
        body = _ellipse(x, y, 0, 0.03 * fov, 0.45 * fov, 0.33 * fov)
        regions.append((body, "fat"))
        for side in (-1, 1):  # obturator / levator muscles
            regions.append(
                (
                    _ellipse(
                        x, y, side * 0.16 * fov, 0.04 * fov, 0.07 * fov, 0.13 * fov, side * 0.3
                    ),
                    "muscle",
                )
            )
        regions.append((_ellipse(x, y, 0, -0.2 * fov, 0.14 * fov, 0.05 * fov), "bone"))  # pubis
        regions.append((_ellipse(x, y, gc[0], gc[1] + gland[1] + 9, 11, 9), "rectum"))
        if z * dz > zc + 0.6 * gland[2]:  # bladder above the gland
            regions.append((_ellipse(x, y, gc[0], gc[1] - 8, 30, 22), "urine"))
        scale = max(0.0, 1.0 - dzc**2)
        pz = tz = np.zeros_like(body)
        if scale > 0.05:
            ga, gb = gland[0] * math.sqrt(scale), gland[1] * math.sqrt(scale)
            prostate = _ellipse(x, y, gc[0], gc[1], ga, gb)
            tz = _ellipse(x, y, gc[0], gc[1] - 0.25 * gb, ga * tz_frac, gb * tz_frac) & prostate
            pz = prostate & ~tz
            regions += [(pz, "pz"), (tz, "tz")]
        s_t2 = np.zeros((size, size))
        s_adc = np.zeros((size, size))
        for mask, name in regions:
            s_t2 = np.where(mask, t2[name], s_t2)
            s_adc = np.where(mask, adc[name], s_adc)
        vol_t2[:, :, z] = s_t2
        vol_adc[:, :, z] = s_adc
        lab[:, :, z] = np.where(tz, 2, np.where(pz, 1, 0))
    spacing = (sp, sp, dz)
    texture = 0.08 * _smooth_field(rng, vol_t2.shape, cells=12)
    vol_t2 = _finish(
        rng, vol_t2 + texture, spacing, rng.uniform(0.15, 0.4), rng.uniform(0.03, 0.07)
    )
    vol_adc = _finish(rng, vol_adc, spacing, 0.1, rng.uniform(0.04, 0.08))
    return vol_t2 * rng.uniform(300, 1500), vol_adc * 2500, lab, spacing


def _synth_promise12(out: Path, scans: int, size: int, rng: np.random.Generator) -> None:
    """``CaseNN.mhd/.raw`` with ``CaseNN_segmentation.mhd/.raw`` (prostate = PZ + TZ)."""
    import SimpleITK as sitk

    out.mkdir(parents=True, exist_ok=True)
    for n in range(scans):
        t2, _, lab, spacing = _prostate_volume(rng, size)
        perm, flips = _random_orientation(rng)
        origin = tuple(float(v) for v in rng.normal(0, 30, 3))
        affine = oriented_affine(t2.shape, spacing, perm, flips, origin)
        for arr, name, dtype in (
            (np.clip(np.round(t2), 0, 32767), f"Case{n:02d}.mhd", np.int16),
            ((lab > 0), f"Case{n:02d}_segmentation.mhd", np.uint8),
        ):
            stored = _orient(arr.astype(dtype), perm, flips)
            img = sitk.GetImageFromArray(np.transpose(stored, (2, 1, 0)))  # sitk wants (k, j, i)
            ras = affine[:3, :3]
            lps = np.diag([-1.0, -1.0, 1.0]) @ ras
            img.SetSpacing(tuple(float(v) for v in np.linalg.norm(lps, axis=0)))
            img.SetDirection(tuple((lps / np.linalg.norm(lps, axis=0)).ravel().tolist()))
            img.SetOrigin(tuple((np.diag([-1.0, -1.0, 1.0]) @ affine[:3, 3]).tolist()))
            sitk.WriteImage(img, str(out / name))  # writes .mhd + .raw


def _write_dataset_json(out: Path, meta: dict, train_ids: list[str], test_ids: list[str]) -> None:
    meta = dict(meta)
    meta["numTraining"] = len(train_ids)
    meta["numTest"] = len(test_ids)
    meta["training"] = [
        {"image": f"./imagesTr/{i}.nii.gz", "label": f"./labelsTr/{i}.nii.gz"} for i in train_ids
    ]
    meta["test"] = [f"./imagesTs/{i}.nii.gz" for i in test_ids]
    (out / "dataset.json").write_text(json.dumps(meta, indent=4))


def _msd_dirs(out: Path) -> None:
    for d in ("imagesTr", "labelsTr", "imagesTs"):
        (out / d).mkdir(parents=True, exist_ok=True)


def _train_test(rng: np.random.Generator, ids: list[str], scans: int) -> tuple[list, list]:
    """A random ``scans`` of ``ids`` as the training list, the rest as the test list (sorted)."""
    order = rng.permutation(len(ids))
    return sorted(ids[i] for i in order[:scans]), sorted(ids[i] for i in order[scans:])


def _synth_msd_prostate(out: Path, scans: int, size: int, rng: np.random.Generator) -> None:
    """Task05_Prostate: 4D (x, y, z, [T2, ADC]) images, labels 1 PZ / 2 TZ, dataset.json."""
    _msd_dirs(out)
    n_test = max(1, scans // 4)
    ids = [f"prostate_{i:02d}" for i in _ids(rng, scans + n_test, 0, 2)]
    train, test = _train_test(rng, ids, scans)
    for sid in ids:
        t2, adc, lab, spacing = _prostate_volume(rng, size)
        perm, flips = _random_orientation(rng)
        origin = tuple(float(v) for v in rng.normal(0, 30, 3))
        img = np.stack([t2, adc], axis=-1).astype(np.float32)
        folder = "imagesTr" if sid in train else "imagesTs"
        save_nifti(out / folder / f"{sid}.nii.gz", img, spacing, perm, flips, origin)
        if sid in train:
            save_nifti(out / "labelsTr" / f"{sid}.nii.gz", lab, spacing, perm, flips, origin)
            (out / "imagesTr" / f"._{sid}.nii.gz").write_bytes(b"\x00\x05\x16\x07")  # tar junk
    meta = {
        "name": "Prostate",
        "description": "Prostate transitional zone and peripheral zone segmentation",
        "reference": "Radboud University, Nijmegen Medical Centre",
        "licence": "CC-BY-SA 4.0",
        "release": "1.0 04/05/2018",
        "tensorImageSize": "4D",
        "modality": {"0": "T2", "1": "ADC"},
        "labels": {"0": "background", "1": "PZ", "2": "TZ"},
    }
    _write_dataset_json(out, meta, train, test)


def _spleen_volume(
    rng: np.random.Generator, size: int
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Abdominal CT phantom in HU (x, y, z) with a spleen label, and its spacing."""
    sp = float(rng.uniform(300, 420) / size)
    dz = float(rng.choice([1.5, 2.5, 3.0, 5.0]))
    nz = int(max(16, round(size / 3 * rng.uniform(0.8, 1.3))))
    x, y = _grid(size, sp)
    fov = size * sp
    hu = {
        "fat": rng.uniform(-120, -80),
        "muscle": rng.uniform(35, 60),
        "liver": rng.uniform(80, 120),
        "spleen": rng.uniform(95, 135),
        "kidney": rng.uniform(140, 200),
        "bone": rng.uniform(400, 900),
        "gas": -900.0,
    }
    s_len = rng.uniform(0.35, 0.6) * nz
    s_mid = nz * rng.uniform(0.35, 0.6)
    s_a, s_b = rng.uniform(35, 60), rng.uniform(18, 30)
    s_pos = (rng.uniform(0.14, 0.24) * fov, rng.uniform(0.02, 0.14) * fov)
    s_ang = rng.uniform(-0.9, -0.2)
    vol = np.full((size, size, nz), -1000.0)
    lab = np.zeros((size, size, nz), np.uint8)
    gas = [
        (rng.uniform(-0.2, 0.1), rng.uniform(-0.2, 0.05), rng.uniform(5, 15))
        for _ in range(int(rng.integers(2, 6)))
    ]
    for z in range(nz):
        sl = np.full((size, size), -1000.0)
        body = _ellipse(x, y, 0, 0, 0.44 * fov, 0.33 * fov)
        sl[body] = hu["fat"]
        sl[_ellipse(x, y, 0, 0, 0.40 * fov, 0.29 * fov)] = hu["muscle"]
        sl[_ellipse(x, y, -0.17 * fov, -0.02 * fov, 0.2 * fov, 0.19 * fov, 0.3)] = hu["liver"]
        for side in (-1, 1):
            sl[_ellipse(x, y, side * 0.12 * fov, 0.16 * fov, 0.04 * fov, 0.06 * fov)] = hu["kidney"]
        sl[_ellipse(x, y, 0, 0.2 * fov, 0.045 * fov, 0.045 * fov)] = hu["bone"]
        for gx, gy, gr in gas:
            sl[_ellipse(x, y, gx * fov, gy * fov, gr, gr)] = hu["gas"]
        u = (z - s_mid) / (s_len / 2)
        if abs(u) < 1:
            scale = math.sqrt(1 - u**2)
            outer = _ellipse(x, y, *s_pos, s_a * scale, s_b * scale, s_ang)
            notch = _ellipse(
                x, y, s_pos[0] - 0.6 * s_b, s_pos[1], 0.5 * s_a * scale, 0.5 * s_b * scale, s_ang
            )
            spleen = outer & ~notch
            sl[spleen] = hu["spleen"]
            lab[:, :, z] = spleen
        vol[:, :, z] = sl
    vol = _finish(rng, vol + 1000.0, (sp, sp, dz), 0.0, rng.uniform(8, 20), rician=False) - 1000.0
    return vol, lab, (sp, sp, dz)


def _synth_msd_spleen(out: Path, scans: int, size: int, rng: np.random.Generator) -> None:
    """Task09_Spleen: CT in HU (int16), label 1 spleen, dataset.json."""
    _msd_dirs(out)
    n_test = max(1, scans // 4)
    ids = [f"spleen_{i}" for i in _ids(rng, scans + n_test, 1, 2)]
    train, test = _train_test(rng, ids, scans)
    for sid in ids:
        vol, lab, spacing = _spleen_volume(rng, size)
        perm, flips = _random_orientation(rng)
        origin = tuple(float(v) for v in rng.normal(0, 50, 3))
        folder = "imagesTr" if sid in train else "imagesTs"
        hu = np.clip(np.round(vol), -1024, 3071).astype(np.int16)
        save_nifti(out / folder / f"{sid}.nii.gz", hu, spacing, perm, flips, origin)
        if sid in train:
            save_nifti(out / "labelsTr" / f"{sid}.nii.gz", lab, spacing, perm, flips, origin)
    meta = {
        "name": "Spleen",
        "description": "Spleen Segmentation",
        "reference": "Memorial Sloan Kettering Cancer Center",
        "licence": "CC-BY-SA 4.0",
        "release": "1.0 06/08/2018",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "spleen"},
    }
    _write_dataset_json(out, meta, train, test)


# ------------------------------------------------------------------------------- MM-WHS
_WHS_VALUES = {"Myo": 205, "LA": 420, "LV": 500, "RA": 550, "RV": 600, "AA": 820, "PA": 850}


def _whs_volume(
    rng: np.random.Generator, size: int, modality: str
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Whole-heart phantom: image (HU for CT, arbitrary units for MR), raw labels, spacing."""
    sp = float(rng.uniform(180, 240) / size)
    nz = int(max(16, round(size / 2 * rng.uniform(0.8, 1.2))))
    dz = float(rng.uniform(150, 200) / nz)
    c = (np.arange(size) - (size - 1) / 2.0) * sp
    zc = (np.arange(nz) - (nz - 1) / 2.0) * dz
    X, Y, Z = np.meshgrid(c, c, zc, indexing="ij")
    j = lambda s=1.0: rng.normal(0, 4 * s)  # noqa: E731 - position jitter (mm)
    g = rng.uniform(0.85, 1.15)  # overall heart size

    def ellipsoid(cx, cy, cz, a, b, cc) -> np.ndarray:  # noqa: ANN001
        return ((X - cx) / a) ** 2 + ((Y - cy) / b) ** 2 + ((Z - cz) / cc) ** 2 <= 1.0

    def tube(cx, cy, r, z0, z1) -> np.ndarray:  # noqa: ANN001
        return ((X - cx) ** 2 + (Y - cy) ** 2 <= r**2) & (z0 <= Z) & (z1 >= Z)

    lv_c = (15 + j(), 10 + j(), -25 + j())
    lv_r = (g * rng.uniform(20, 28), g * rng.uniform(18, 26), g * rng.uniform(30, 40))
    wall = rng.uniform(8, 13)
    lv = ellipsoid(*lv_c, *lv_r)
    myo = ellipsoid(*lv_c, *(r + wall for r in lv_r)) & ~lv
    rv = ellipsoid(lv_c[0] - 30 + j(), lv_c[1] - 18 + j(), lv_c[2] + j(), g * 26, g * 18, g * 34)
    rv &= ~ellipsoid(*lv_c, *(r + wall + 2 for r in lv_r))
    la = ellipsoid(10 + j(), 38 + j(), 20 + j(), g * 24, g * 16, g * 18)
    ra = ellipsoid(-30 + j(), 25 + j(), 18 + j(), g * 22, g * 20, g * 22)
    aa = tube(-2 + j(0.5), 12 + j(0.5), g * rng.uniform(11, 15), -5, 85)
    pa = tube(-10 + j(0.5), -20 + j(0.5), g * rng.uniform(10, 13), 0, 60)
    pa |= tube(-10 + j(0.5), 5, g * 10, 50, 60) & (Y >= -20) & (Y <= 20)
    lab = np.zeros(X.shape, np.uint16)
    for name, mask in (
        ("PA", pa),
        ("AA", aa),
        ("RA", ra),
        ("LA", la),
        ("RV", rv),
        ("Myo", myo),
        ("LV", lv),
    ):
        lab[mask] = _WHS_VALUES[name]
    fov = size * sp
    body = ((X / (0.45 * fov)) ** 2 + ((Y - 0.02 * fov) / (0.33 * fov)) ** 2) <= 1
    lungs = (((np.abs(X) - 0.2 * fov) / (0.13 * fov)) ** 2 + (Y / (0.2 * fov)) ** 2) <= 1
    spine = (X**2 + (Y - 0.25 * fov) ** 2) <= (0.05 * fov) ** 2
    if modality == "ct":
        v = {
            "air": -1000,
            "fat": rng.uniform(-110, -70),
            "tissue": rng.uniform(30, 60),
            "lung": rng.uniform(-880, -750),
            "bone": rng.uniform(500, 900),
            "left": rng.uniform(280, 450),
            "right": rng.uniform(180, 380),
            "myo": rng.uniform(90, 140),
        }
        noise, offset = rng.uniform(12, 30), 1000.0
    else:
        v = {
            "air": 0,
            "fat": rng.uniform(0.6, 0.9),
            "tissue": rng.uniform(0.25, 0.4),
            "lung": rng.uniform(0.02, 0.08),
            "bone": rng.uniform(0.1, 0.2),
            "left": rng.uniform(0.55, 0.9),
            "right": rng.uniform(0.5, 0.85),
            "myo": rng.uniform(0.2, 0.35),
        }
        noise, offset = rng.uniform(0.02, 0.05), 0.0
    img = np.full(X.shape, float(v["air"]))
    img[body] = v["fat"]
    img[body & ~lungs] = v["tissue"]
    img[body & lungs] = v["lung"]
    img[spine] = v["bone"]
    heart = lab > 0
    img[ellipsoid(0, 10, 0, 70 * g, 60 * g, 80 * g) & body & ~heart] = v["fat"]
    for name in ("LV", "LA", "AA"):
        img[lab == _WHS_VALUES[name]] = v["left"]
    for name in ("RV", "RA", "PA"):
        img[lab == _WHS_VALUES[name]] = v["right"]
    img[lab == _WHS_VALUES["Myo"]] = v["myo"]
    bias = 0.0 if modality == "ct" else rng.uniform(0.15, 0.4)
    img = _finish(rng, img + offset, (sp, sp, dz), bias, noise, rician=modality == "mr") - offset
    if modality == "mr":
        img = img * rng.uniform(300, 1200)
    return img, lab, (sp, sp, dz)


def _synth_mmwhs(modality: str) -> Callable[[Path, int, int, np.random.Generator], None]:
    def run(out: Path, scans: int, size: int, rng: np.random.Generator) -> None:
        folder = out / f"{modality}_train"
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(1001, 1001 + scans):
            img, lab, spacing = _whs_volume(rng, size, modality)
            perm, flips = _random_orientation(rng)
            origin = tuple(float(v) for v in rng.normal(0, 50, 3))
            stem = f"{modality}_train_{n}"
            data = np.round(img).astype(np.int16)
            save_nifti(folder / f"{stem}_image.nii.gz", data, spacing, perm, flips, origin)
            save_nifti(folder / f"{stem}_label.nii.gz", lab, spacing, perm, flips, origin)

    run.__doc__ = f"MM-WHS {modality.upper()}: {modality}_train/{modality}_train_NNNN_image/label."
    return run


SYNTHESIZERS: dict[str, Callable[[Path, int, int, np.random.Generator], None]] = {
    "acdc": _synth_acdc,
    "promise12": _synth_promise12,
    "msd-prostate": _synth_msd_prostate,
    "msd-spleen": _synth_msd_spleen,
    "mmwhs-ct": _synth_mmwhs("ct"),
    "mmwhs-mr": _synth_mmwhs("mr"),
}


def synthesize(
    dataset: str, out: str | Path, scans: int = 10, size: int = 128, seed: int = 0
) -> Path:
    """Write a synthetic archive of ``dataset`` in its real on-disk layout.

    Args:
        dataset: one of :data:`SYNTHESIZERS` (``msd`` alone is generic: use a preset).
        out: directory to write (created); it must not exist or be empty, so that phantoms of
            two calls (other ``scans``, ``seed`` or dataset) never mix in one archive.
        scans: number of subjects (ACDC patients give two scans each).
        size: in-plane matrix size in pixels (the field of view is anatomical, so the spacing
            adapts: ``size`` changes resolution, not anatomy).
        seed: random seed; the same arguments give the same files.

    Returns:
        ``out`` as a Path.

    Raises:
        DataError: unknown dataset, fewer than 1 scan, size below 16 px, or ``out`` is a file
            or a non-empty directory.
    """
    from segssl.config import did_you_mean

    if dataset not in SYNTHESIZERS:
        hint = " ('msd' is generic; use msd-prostate or msd-spleen)" if dataset == "msd" else ""
        raise DataError(
            f"cannot synthesise dataset {dataset!r}{did_you_mean(dataset, SYNTHESIZERS)}{hint}; "
            f"known: {', '.join(SYNTHESIZERS)}"
        )
    if scans < 1:
        raise DataError(f"--scans must be at least 1, got {scans}")
    if size < 16:
        raise DataError(f"--size must be at least 16 pixels, got {size}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a directory (expected a new or empty folder)")
    if out.is_dir() and any(out.iterdir()):
        raise DataError(
            f"{out}: exists and is not empty; synth writes a complete archive into a new or empty "
            "folder (remove it or choose another --out) so that old and new phantoms never mix"
        )
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, zlib.crc32(dataset.encode())])  # CT != MR subjects
    SYNTHESIZERS[dataset](out, scans, size, rng)
    return out
