"""Synthetic PROMISE12: pelvic T2 MRI phantoms as MetaImage ``CaseNN.mhd/.raw``; the prostate
anatomy (:func:`_prostate_volume`) is shared with the MSD prostate task."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from segssl.data.synth._common import (
    _ellipse,
    _finish,
    _grid,
    _orient,
    _random_orientation,
    _smooth_field,
    oriented_affine,
)


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
