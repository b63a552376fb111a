"""Synthetic ACDC: a short-axis cine per patient with ED/ES frames, ``_gt`` labels and
``Info.cfg``."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from segssl.data.synth._common import (
    _bias,
    _ellipse,
    _finish,
    _grid,
    _random_orientation,
    save_nifti,
)

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
