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

One module per archive, mirroring ``segssl.data.adapters``; shared helpers in ``_common``.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from segssl.data.errors import DataError
from segssl.data.synth._common import oriented_affine, save_nifti
from segssl.data.synth.acdc import _synth_acdc
from segssl.data.synth.mmwhs import _synth_mmwhs
from segssl.data.synth.msd import _synth_msd_prostate, _synth_msd_spleen
from segssl.data.synth.promise12 import _synth_promise12

__all__ = ["SYNTHESIZERS", "oriented_affine", "save_nifti", "synthesize"]

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
