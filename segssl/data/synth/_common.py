"""Helpers shared by the synthetic archives: oriented NIfTI writing, random storage
orientation, smooth fields, bias, partial volume and Rician noise, geometry, ids."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy import ndimage


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
