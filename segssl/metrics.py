"""3D segmentation metrics per scan: Dice, HD95 and ASD in millimetres.

Predictions of the 2D slices of a scan are stacked back into a volume and compared with the
ground truth as a whole (the papers' 3D protocol). Conventions:

* **Dice** ``2 |P & G| / (|P| + |G|)`` over all voxels of the scan; an empty prediction of an
  empty structure scores 1, a non-empty prediction of an empty structure (or vice versa) 0.
* **Surfaces** are the voxels of a mask that have at least one 6-connected neighbour outside it
  (``mask & ~binary_erosion(mask)``, the volume border counts as outside).
* **Surface distances** are Euclidean distances in millimetres, from
  ``scipy.ndimage.distance_transform_edt(..., sampling=spacing)``, from every surface voxel of one
  mask to the nearest surface voxel of the other.
* **HD95** is the 95th percentile of the distances of both directions pooled (as medpy's
  ``hd95``); **ASD** is the average symmetric surface distance, the mean of both directions
  pooled, ``(sum d(P->G) + sum d(G->P)) / (|dP| + |dG|)``.
* Both empty: HD95 = ASD = 0 (perfect agreement, as Dice = 1). Exactly one empty: NaN
  (undefined); :func:`evaluate_volumes` averages over the scans where the value is defined and
  reports how many were undefined (``"<metric>_undefined/<class>"``), so a reader sees it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

__all__ = ["asd", "dice", "evaluate_volumes", "hd95", "surface_distances"]

_STRUCT_CACHE: dict[int, np.ndarray] = {}


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> None:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(
            f"pred and gt must have the same shape, got pred {pred.shape} and gt {gt.shape}"
        )
    if pred.ndim not in (2, 3):
        raise ValueError(f"expected 2D or 3D label volumes, got shape {pred.shape}")
    for name, arr in (("pred", pred), ("gt", gt)):
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
            raise ValueError(f"{name} must be an integer label volume, got dtype {arr.dtype}")


def _check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    sp = tuple(float(s) for s in spacing)
    if len(sp) != ndim or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(
            f"spacing must hold {ndim} positive finite values (one per axis), got {tuple(spacing)}"
        )
    return sp


def dice(pred: np.ndarray, gt: np.ndarray, label: int) -> float:
    """3D Dice of one label over a whole scan (empty vs empty = 1).

    Args:
        pred: integer label volume ``(D, H, W)`` (or 2D).
        gt: integer label volume of the same shape.
        label: the label value to score.

    Returns:
        Dice in [0, 1].
    """
    _check_pair(pred, gt)
    p = np.asarray(pred) == label
    g = np.asarray(gt) == label
    denom = int(p.sum()) + int(g.sum())
    if denom == 0:
        return 1.0
    return 2.0 * float(np.logical_and(p, g).sum()) / denom


def _surface(mask: np.ndarray) -> np.ndarray:
    struct = _STRUCT_CACHE.setdefault(mask.ndim, ndimage.generate_binary_structure(mask.ndim, 1))
    return mask & ~ndimage.binary_erosion(mask, structure=struct, border_value=0)


def surface_distances(
    a: np.ndarray, b: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances (mm) between two non-empty boolean masks.

    Args:
        a: boolean mask.
        b: boolean mask of the same shape.
        spacing: voxel size per axis (mm), in the axis order of the arrays.

    Returns:
        ``(d_ab, d_ba)``: for every surface voxel of ``a`` the distance to the surface of ``b``,
        and vice versa (1D float arrays).
    """
    sp = _check_spacing(spacing, a.ndim)
    both = a | b
    if not both.any() or not a.any() or not b.any():
        raise ValueError("surface_distances needs two non-empty masks")
    # crop to the bounding box of both masks plus a one-voxel margin (exact, and much faster)
    idx = np.nonzero(both)
    sl = tuple(
        slice(max(int(i.min()) - 1, 0), min(int(i.max()) + 2, n))
        for i, n in zip(idx, both.shape, strict=True)
    )
    a_c, b_c = a[sl], b[sl]  # outside the volume counts as background (border_value=0)
    sa, sb = _surface(a_c), _surface(b_c)
    dt_b = ndimage.distance_transform_edt(~sb, sampling=sp)
    dt_a = ndimage.distance_transform_edt(~sa, sampling=sp)
    return dt_b[sa], dt_a[sb]


def _pair_distances(
    pred: np.ndarray, gt: np.ndarray, label: int, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray] | float:
    """Distances, or 0.0 when both masks are empty, or NaN when exactly one is."""
    _check_pair(pred, gt)
    _check_spacing(spacing, np.asarray(pred).ndim)
    p = np.asarray(pred) == label
    g = np.asarray(gt) == label
    has_p, has_g = bool(p.any()), bool(g.any())
    if not has_p and not has_g:
        return 0.0
    if has_p != has_g:
        return float("nan")
    return surface_distances(p, g, spacing)


def hd95(pred: np.ndarray, gt: np.ndarray, label: int, spacing: Sequence[float]) -> float:
    """95th-percentile Hausdorff distance (mm) of one label, both directions pooled.

    Args:
        pred: integer label volume.
        gt: integer label volume of the same shape.
        label: label value to score.
        spacing: voxel size per axis (mm), same axis order as the arrays.

    Returns:
        HD95 >= 0; 0 if both are empty; NaN if exactly one is empty.
    """
    d = _pair_distances(pred, gt, label, spacing)
    if isinstance(d, float):
        return d
    return float(np.percentile(np.concatenate(d), 95))


def asd(pred: np.ndarray, gt: np.ndarray, label: int, spacing: Sequence[float]) -> float:
    """Average symmetric surface distance (mm) of one label.

    Args:
        pred: integer label volume.
        gt: integer label volume of the same shape.
        label: label value to score.
        spacing: voxel size per axis (mm), same axis order as the arrays.

    Returns:
        ASD >= 0; 0 if both are empty; NaN if exactly one is empty.
    """
    d = _pair_distances(pred, gt, label, spacing)
    if isinstance(d, float):
        return d
    return float(np.concatenate(d).mean())


def _class_map(class_names: Mapping[int, str] | Sequence[str]) -> dict[int, str]:
    if isinstance(class_names, Mapping):
        out = {int(k): str(v) for k, v in class_names.items()}
    elif isinstance(class_names, str):
        raise ValueError(f"class_names must be a mapping or a list of names, got {class_names!r}")
    else:
        out = {i + 1: str(name) for i, name in enumerate(class_names)}
    if not out:
        raise ValueError("class_names must name at least one foreground class")
    if len(set(out.values())) != len(out):
        raise ValueError(f"class names must be unique, got {list(out.values())}")
    return out


def evaluate_volumes(
    preds: Sequence[np.ndarray],
    gts: Sequence[np.ndarray],
    spacings: Sequence[Sequence[float]],
    class_names: Mapping[int, str] | Sequence[str],
    distances: bool = True,
) -> dict[str, float]:
    """Per-class means over scans and means over classes of Dice, HD95 and ASD.

    Args:
        preds: one integer label volume per scan.
        gts: the ground-truth volumes, same order and shapes.
        spacings: one spacing (mm per axis) per scan.
        class_names: ``{label value: name}`` of the foreground classes to score, or a list of
            names for labels ``1..n`` (e.g. ``["RV", "Myo", "LV"]`` for ACDC, ``["LV"]`` for the
            binary LV task).
        distances: also compute HD95 and ASD (the costlier part; Dice only when False).

    Returns:
        ``{"dsc": mean over classes, "dsc/<name>": mean over scans, "hd95", "hd95/<name>",
        "asd", "asd/<name>", "hd95_undefined/<name>", "asd_undefined/<name>", "n_scans"}``.
        Per-class HD95/ASD average the scans where they are defined (NaN if none is); the
        ``_undefined`` entries count the scans where exactly one of prediction and ground truth
        is empty. Class means average the classes with a defined value.

    Raises:
        ValueError: if the sequences differ in length or are empty, or on bad volumes.
    """
    n = len(preds)
    if n == 0 or len(gts) != n or len(spacings) != n:
        raise ValueError(
            f"preds, gts and spacings must be non-empty and of equal length, got "
            f"{len(preds)}, {len(gts)} and {len(spacings)}"
        )
    names = _class_map(class_names)
    for i, (p, g, sp) in enumerate(zip(preds, gts, spacings, strict=True)):
        try:
            _check_pair(p, g)
            _check_spacing(sp, np.asarray(p).ndim)
        except ValueError as exc:
            raise ValueError(f"scan {i}: {exc}") from None
    out: dict[str, float] = {"n_scans": float(n)}
    metrics = ("dsc", "hd95", "asd") if distances else ("dsc",)
    per_metric: dict[str, list[float]] = {m: [] for m in metrics}
    for label, name in names.items():
        values: dict[str, list[float]] = {m: [] for m in metrics}
        for p, g, sp in zip(preds, gts, spacings, strict=True):
            values["dsc"].append(dice(p, g, label))
            if distances:
                d = _pair_distances(p, g, label, sp)
                if isinstance(d, float):
                    values["hd95"].append(d)
                    values["asd"].append(d)
                else:
                    pooled = np.concatenate(d)
                    values["hd95"].append(float(np.percentile(pooled, 95)))
                    values["asd"].append(float(pooled.mean()))
        for m in metrics:
            arr = np.asarray(values[m], dtype=float)
            defined = arr[~np.isnan(arr)]
            mean = float(defined.mean()) if defined.size else float("nan")
            out[f"{m}/{name}"] = mean
            if m != "dsc":
                out[f"{m}_undefined/{name}"] = float(arr.size - defined.size)
            per_metric[m].append(mean)
    for m in metrics:
        arr = np.asarray(per_metric[m], dtype=float)
        defined = arr[~np.isnan(arr)]
        out[m] = float(defined.mean()) if defined.size else float("nan")
    return out
