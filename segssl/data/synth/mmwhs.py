"""Synthetic MM-WHS (CT and MR): a whole heart with seven structures and the archive's raw label
values."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from segssl.data.synth._common import _finish, _random_orientation, save_nifti

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
