"""Synthetic Medical Segmentation Decathlon tasks: prostate (T2 + ADC, PZ/TZ) and spleen (CT),
with ``dataset.json`` and the ``imagesTr``/``labelsTr``/``imagesTs`` layout."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from segssl.data.synth._common import (
    _ellipse,
    _finish,
    _grid,
    _ids,
    _random_orientation,
    save_nifti,
)
from segssl.data.synth.promise12 import _prostate_volume


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
